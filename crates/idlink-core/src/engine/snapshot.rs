//! Engine snapshots: the whole state as bytes, and back.
//!
//! A snapshot holds everything the engine knows except what comes from
//! the config (thresholds, address lists, the hash secret), so a restart
//! with a changed config applies the new settings to the restored graph.
//! The format is postcard with a leading version number; a snapshot of
//! another version is refused rather than misread.

use crate::addr::AddressClassifier;
use crate::config::Config;
use crate::engine::Engine;
use thiserror::Error;

/// Bumped whenever the state layout changes.
const VERSION: u32 = 3;

/// A snapshot that cannot be restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// Written by another version of the state layout.
    #[error("snapshot version {found} is not the supported version {VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// Truncated or corrupt bytes.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

impl Engine {
    /// Serializes the engine's state (after finishing pending privacy
    /// purges, so no snapshot holds what a request removed).
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.purge_pending();
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(&(VERSION, &*self)).unwrap_or_default()
    }

    /// Rebuilds an engine from a snapshot and the current config.
    pub fn restore(
        config: &Config,
        classifier: AddressClassifier,
        bytes: &[u8],
    ) -> Result<Engine, SnapshotError> {
        let found = postcard::take_from_bytes::<u32>(bytes)?.0;
        if found != VERSION {
            return Err(SnapshotError::Version { found });
        }
        let (_, mut e): (u32, Engine) = postcard::from_bytes(bytes)?;
        let fresh = Engine::new(config, classifier);
        e.p = fresh.p;
        e.classifier = fresh.classifier;
        e.hasher = fresh.hasher;
        Ok(e)
    }
}
