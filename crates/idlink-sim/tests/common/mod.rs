//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// A scratch directory removed on drop; unique per test and process so
/// tests can run in parallel.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates `$TMPDIR/idlink-sim-<name>-<pid>`, emptied first.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("idlink-sim-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// Path of a file inside the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Writes a file inside the directory and returns its path.
    #[allow(dead_code)]
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let p = self.path(file);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }

    /// The directory itself.
    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
