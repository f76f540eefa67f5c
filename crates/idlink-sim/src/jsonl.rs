//! Line-by-line reading of JSON-lines files with file/line error context.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::SimError;

/// Calls `f(line_number, line)` for every non-blank line of `path`
/// (1-based line numbers). An `Err(reason)` from `f` becomes a
/// [`SimError::Parse`] pointing at that line.
pub(crate) fn for_each_line(
    path: &Path,
    mut f: impl FnMut(u64, &str) -> Result<(), String>,
) -> Result<(), SimError> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        n += 1;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        f(n, text).map_err(|reason| SimError::Parse {
            file: path.to_path_buf(),
            line: n,
            reason,
        })?;
    }
}
