//! Engine snapshots: the whole state as bytes, and back.
//!
//! A snapshot holds everything the engine knows except what comes from
//! the config (thresholds, address lists, the hash secret), so a restart
//! with a changed config applies the new settings to the restored graph.
//! The format is postcard with a leading version number; a snapshot of
//! another version is refused rather than misread.

use super::bucket::BucketState;
use super::intern::Slots;
use super::state::{Account, Device};
use super::{EngineStats, Pending, Source};
use crate::addr::{AddressClassifier, Bucket};
use crate::config::Config;
use crate::engine::Engine;
use crate::time::Millis;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use thiserror::Error;

/// Bumped whenever the state layout changes.
const VERSION: u32 = 1;

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

/// Borrowed view of the state, for writing.
#[derive(Serialize)]
struct StateRef<'a> {
    version: u32,
    devices: &'a Slots<Device>,
    accounts: &'a Slots<Account>,
    buckets: &'a FxHashMap<Bucket, BucketState>,
    active_buckets: &'a [Bucket],
    profiles: &'a FxHashMap<Bucket, Vec<(u32, i32)>>,
    buffer: &'a BinaryHeap<Reverse<Pending>>,
    seq: u64,
    sources: &'a [Source],
    watermark: Millis,
    current_day: i32,
    markers: &'a FxHashMap<u128, Millis>,
    max_marker_ts: Millis,
    provisional: &'a [(u32, u32, i32, u64)],
    stats: &'a EngineStats,
    login_links: u64,
    inferred_links: u64,
}

/// Owned state, for reading; fields in the same order as [`StateRef`].
#[derive(Deserialize)]
struct State {
    version: u32,
    devices: Slots<Device>,
    accounts: Slots<Account>,
    buckets: FxHashMap<Bucket, BucketState>,
    active_buckets: Vec<Bucket>,
    profiles: FxHashMap<Bucket, Vec<(u32, i32)>>,
    buffer: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    sources: Vec<Source>,
    watermark: Millis,
    current_day: i32,
    markers: FxHashMap<u128, Millis>,
    max_marker_ts: Millis,
    provisional: Vec<(u32, u32, i32, u64)>,
    stats: EngineStats,
    login_links: u64,
    inferred_links: u64,
}

impl Engine {
    /// Serializes the engine's state (after finishing pending privacy
    /// purges, so no snapshot holds what a request removed).
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.purge_pending();
        let state = StateRef {
            version: VERSION,
            devices: &self.devices,
            accounts: &self.accounts,
            buckets: &self.buckets,
            active_buckets: &self.active_buckets,
            profiles: &self.profiles,
            buffer: &self.buffer,
            seq: self.seq,
            sources: &self.sources,
            watermark: self.watermark,
            current_day: self.current_day,
            markers: &self.markers,
            max_marker_ts: self.max_marker_ts,
            provisional: &self.provisional,
            stats: &self.stats,
            login_links: self.login_links,
            inferred_links: self.inferred_links,
        };
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(&state).unwrap_or_default()
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
        let s: State = postcard::from_bytes(bytes)?;
        let mut e = Engine::new(config, classifier);
        e.devices = s.devices;
        e.accounts = s.accounts;
        e.buckets = s.buckets;
        e.active_buckets = s.active_buckets;
        e.profiles = s.profiles;
        e.buffer = s.buffer;
        e.seq = s.seq;
        e.sources = s.sources;
        e.watermark = s.watermark;
        e.current_day = s.current_day;
        e.markers = s.markers;
        e.max_marker_ts = s.max_marker_ts;
        e.provisional = s.provisional;
        e.stats = s.stats;
        e.login_links = s.login_links;
        e.inferred_links = s.inferred_links;
        let _ = s.version;
        Ok(e)
    }
}
