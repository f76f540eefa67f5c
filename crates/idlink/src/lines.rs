//! Bounded line reading: a line longer than the limit is cut (and marked)
//! instead of being buffered whole, so no input can exhaust memory.

use std::io::{self, BufRead};

/// Reads `\n`-terminated lines of at most `max` bytes.
pub struct BoundedLines<R> {
    /// The input.
    inner: R,
    /// Longest line kept whole.
    max: usize,
    /// Bytes of the reader's buffer lent out as the last line, consumed at
    /// the next call: a line that lies whole in the buffer is not copied.
    lent: usize,
}

/// One line: its bytes (without the newline), and whether it was cut.
pub struct Line<'a> {
    /// Up to `max` bytes of the line.
    pub bytes: &'a [u8],
    /// The line was longer than `max` and was cut.
    pub truncated: bool,
}

impl<R: BufRead> BoundedLines<R> {
    /// Wraps a reader.
    pub fn new(inner: R, max: usize) -> Self {
        BoundedLines {
            inner,
            max,
            lent: 0,
        }
    }

    /// The next line, from the reader's buffer if it lies whole there, or
    /// else gathered in `buf`; `None` at end of input.
    pub fn next_line<'b>(&'b mut self, buf: &'b mut Vec<u8>) -> io::Result<Option<Line<'b>>> {
        self.inner.consume(std::mem::take(&mut self.lent));
        let whole = memchr(fill(&mut self.inner)?).filter(|&end| end <= self.max + 1);
        if let Some(end) = whole {
            self.lent = end + 1;
            // Borrowed again (the buffer is filled, so this reads nothing):
            // returning the first borrow on one path only is beyond
            // today's borrow checker.
            let line = &self.inner.fill_buf()?[..end];
            return Ok(Some(finish(line, end > self.max)));
        }
        self.gather(buf)
    }

    /// Reads the next line into `buf`, across buffer refills, keeping at
    /// most `max + 1` bytes of it.
    fn gather<'b>(&mut self, buf: &'b mut Vec<u8>) -> io::Result<Option<Line<'b>>> {
        buf.clear();
        let mut truncated = false;
        let mut any = false;
        loop {
            let chunk = fill(&mut self.inner)?;
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (part, done) = match memchr(chunk) {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            let room = (self.max + 1).saturating_sub(buf.len());
            if part.len() > room {
                buf.extend_from_slice(&part[..room]);
                truncated = true;
            } else {
                buf.extend_from_slice(part);
            }
            let used = done.unwrap_or(chunk.len());
            self.inner.consume(used);
            if done.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        truncated |= buf.len() > self.max;
        Ok(Some(finish(buf, truncated)))
    }
}

/// The reader's buffered bytes, refilled if empty; retries interrupts.
fn fill<R: BufRead>(inner: &mut R) -> io::Result<&[u8]> {
    loop {
        match inner.fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => break,
        }
    }
    // Lent by a second call, which only hands out the filled buffer:
    // returning the first borrow from inside the loop is beyond today's
    // borrow checker.
    inner.fill_buf()
}

/// A line without its `\r` (unless cut, when the `\r` is not its end).
fn finish(bytes: &[u8], truncated: bool) -> Line<'_> {
    let bytes = match bytes.split_last() {
        Some((b'\r', rest)) if !truncated => rest,
        _ => bytes,
    };
    Line { bytes, truncated }
}

fn memchr(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_lines_and_keeps_going() {
        let data = b"short\nlooooooong\r\nlast";
        let mut r = BoundedLines::new(&data[..], 5);
        let mut buf = Vec::new();
        let l = r.next_line(&mut buf).unwrap().unwrap();
        assert_eq!((l.bytes, l.truncated), (&b"short"[..], false));
        let l = r.next_line(&mut buf).unwrap().unwrap();
        assert!(l.truncated);
        assert_eq!(l.bytes.len(), 6);
        let l = r.next_line(&mut buf).unwrap().unwrap();
        assert_eq!((l.bytes, l.truncated), (&b"last"[..], false));
        assert!(r.next_line(&mut buf).unwrap().is_none());
    }

    proptest::proptest! {
        /// Whatever the buffer size, the lines are the input's lines, each
        /// cut after `max + 1` bytes and marked if longer than `max`.
        #[test]
        fn lines_do_not_depend_on_the_buffer(
            data in proptest::collection::vec(proptest::sample::select(b"ab\r\n".to_vec()), 0..200),
            capacity in 1usize..40,
            max in 0usize..12,
        ) {
            let mut expected: Vec<(Vec<u8>, bool)> = Vec::new();
            let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            if pieces.last().is_some_and(|p| p.is_empty()) {
                pieces.pop();
            }
            for p in pieces {
                expected.push(if p.len() > max {
                    (p[..=max].to_vec(), true)
                } else {
                    (p.strip_suffix(b"\r").unwrap_or(p).to_vec(), false)
                });
            }
            let mut r = BoundedLines::new(io::BufReader::with_capacity(capacity, &data[..]), max);
            let mut buf = Vec::new();
            let mut got = Vec::new();
            while let Some(l) = r.next_line(&mut buf).unwrap() {
                got.push((l.bytes.to_vec(), l.truncated));
            }
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
