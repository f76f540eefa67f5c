//! Bounded line reading: a line longer than the limit is cut (and marked)
//! instead of being buffered whole, so no input can exhaust memory.

use std::io::{self, BufRead};

/// Reads `\n`-terminated lines of at most `max` bytes.
pub struct BoundedLines<R> {
    /// The input.
    inner: R,
    /// Longest line kept whole.
    max: usize,
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
        BoundedLines { inner, max }
    }

    /// Reads the next line into `buf`; `None` at end of input.
    pub fn next_line<'b>(&mut self, buf: &'b mut Vec<u8>) -> io::Result<Option<Line<'b>>> {
        buf.clear();
        let mut truncated = false;
        let mut any = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
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
        if buf.len() > self.max {
            truncated = true;
        }
        if buf.last() == Some(&b'\r') && !truncated {
            buf.pop();
        }
        Ok(Some(Line {
            bytes: buf,
            truncated,
        }))
    }
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
}
