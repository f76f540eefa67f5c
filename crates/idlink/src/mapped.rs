//! A regular input file read through a memory map.
//!
//! Why: `read` copies every byte from the page cache into a buffer, and
//! for a file of millions of events that copy (and the cache lines it
//! evicts) was some 5 % of a replay. Mapped, the lines are read where the
//! page cache holds them. Pages behind the reader are dropped from the
//! mapping as it moves on, so resident memory stays that of a read
//! buffer, not of the file.
//!
//! The caveat every mapping reader has: the file must not shrink while it
//! is read. A truncated mapping faults (`SIGBUS`) where `read` would see
//! a short file, so `idlink replay --no-mmap` reads with `read` instead,
//! for inputs that something else may truncate.

use memmap2::{Mmap, UncheckedAdvice};
use std::fs::File;
use std::io::{self, BufRead, Read};

/// Bytes read between two drops of the pages behind the reader.
const DROP_EVERY: usize = 8 << 20;

/// Page granularity of a drop.
const PAGE: usize = 4096;

/// A mapped file as a `BufRead` whose buffer is the rest of the file.
pub struct Mapped {
    /// The whole file, mapped read-only.
    map: Mmap,
    /// Bytes consumed so far.
    pos: usize,
    /// Bytes before this offset are dropped from the mapping already.
    dropped: usize,
}

impl Mapped {
    /// Maps `file` if it is a non-empty regular file; `None` means read
    /// it instead.
    pub fn open(file: &File) -> Option<Mapped> {
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() == 0 {
            return None;
        }
        // SAFETY: the mapping is read-only and private; the one way it can
        // go wrong is the file shrinking while mapped, the caveat in the
        // module documentation (`--no-mmap` avoids it).
        let map = unsafe { Mmap::map(file) }.ok()?;
        // Only advice: a kernel that ignores it reads the same bytes.
        let _ = map.advise(memmap2::Advice::Sequential);
        Some(Mapped {
            map,
            pos: 0,
            dropped: 0,
        })
    }
}

impl Read for Mapped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_buf()?.read(buf)?;
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Mapped {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.map.get(self.pos..).unwrap_or_default())
    }

    fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.map.len());
        let behind = self.pos / PAGE * PAGE;
        if behind - self.dropped >= DROP_EVERY {
            // SAFETY: no borrow of the mapping outlives the `fill_buf`
            // that lent it (this takes `&mut self`), and the pages
            // dropped lie wholly before `pos`, which never moves back.
            // Dropping pages of a private read-only file mapping only
            // unmaps them; touched again, they would read the file anew.
            // Only advice: if it fails the pages stay resident.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    self.dropped,
                    behind - self.dropped,
                )
            };
            self.dropped = behind;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_every_byte_across_drops() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * DROP_EVERY + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        f.write_all(&data).unwrap();
        let mut m = Mapped::open(&f).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 70_001];
        loop {
            let n = m.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == data);
        assert!(
            m.dropped >= 2 * DROP_EVERY,
            "pages behind the reader are dropped"
        );
    }

    #[test]
    fn an_empty_file_is_read_not_mapped() {
        assert!(Mapped::open(&tempfile::tempfile().unwrap()).is_none());
    }
}
