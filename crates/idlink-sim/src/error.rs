//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while simulating, evaluating or running the
/// baseline. Callers (the `idlink` binary) only need to print it.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Reading or writing a file failed (missing directory, full disk, ...).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Serialising an output document failed; kept separate from [`SimError::Parse`]
    /// because it points at a bug in this crate rather than at bad input.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// An input file (truth, links or events) has a malformed line. The
    /// location lets a person open the file at the right place.
    #[error("{}:{line}: {reason}", file.display())]
    Parse {
        /// The file that could not be parsed.
        file: PathBuf,
        /// 1-based line number (0 when the whole document is one JSON value
        /// and serde could not tell the line).
        line: u64,
        /// What was wrong with the line.
        reason: String,
    },
    /// The scenario parameters cannot produce a meaningful simulation
    /// (for example zero people or zero days).
    #[error("invalid scenario: {0}")]
    InvalidScenario(String),
}
