//! Engine snapshots: the whole state as bytes, and back.
//!
//! A snapshot holds everything the engine knows except what comes from
//! the config (thresholds, address lists, the hash secret), so a restart
//! with a changed config applies the new settings to the restored graph.
//! The format is postcard with a leading version number. A snapshot of the
//! previous version is migrated (a deployment upgrades without losing its
//! graph); any other is refused rather than misread.

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
        let mut e = match found {
            VERSION => postcard::from_bytes::<(u32, Engine)>(bytes)?.1,
            2 => postcard::from_bytes::<(u32, v2::EngineV2)>(bytes)?
                .1
                .migrate(),
            _ => return Err(SnapshotError::Version { found }),
        };
        let fresh = Engine::new(config, classifier);
        e.p = fresh.p;
        e.classifier = fresh.classifier;
        e.hasher = fresh.hasher;
        Ok(e)
    }
}

/// Format 2, before device facts travelled with sightings and before
/// accounts remembered the day they were last seen on a bucket.
mod v2 {
    use super::super::bucket::{Regular, v2::TableV2};
    use super::super::colocation::Colocation;
    use super::super::intern::Slots;
    use super::super::state::{Account, Device};
    use super::super::{Engine, EngineStats, Source, reorder};
    use crate::addr::Bucket;
    use crate::time::Millis;
    use rustc_hash::FxHashMap;
    use serde::Deserialize;
    use smallvec::SmallVec;
    use thin_vec::ThinVec;

    /// An account without `seen_day`.
    #[derive(Deserialize)]
    pub struct AccountV2 {
        devices: super::super::state::IdList,
        evidence_devices: ThinVec<u32>,
        opted_out: bool,
    }

    /// The engine's stored fields in format 2, in order.
    #[derive(Deserialize)]
    pub struct EngineV2 {
        devices: Slots<Device>,
        accounts: Slots<AccountV2>,
        buckets: TableV2,
        active_buckets: Vec<u32>,
        profiles: FxHashMap<Bucket, SmallVec<[(u32, i32); 2]>>,
        buffer: reorder::Reorder,
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

    impl EngineV2 {
        /// Format 3 from format 2. What format 2 did not keep is taken
        /// from the state as it is now: a device of an open day's
        /// aggregate is a bot there if it is one now, a regular is
        /// unexplained if it holds no sign-in link and is no bot now, and
        /// every account counts as seen on the current day (so none is
        /// freed before windows that may name it have passed).
        pub fn migrate(self) -> Engine {
            let day = self.current_day;
            let devices = self.devices;
            let is_bot = |d: u32| devices.get(d).is_some_and(|x| x.is_bot(day));
            let is_linked = |d: u32| devices.get(d).is_some_and(|x| !x.logins.is_empty());
            let buckets = super::super::bucket::v2::migrate(self.buckets, is_bot, is_linked);
            let regulars = self
                .profiles
                .into_iter()
                .map(|(b, list)| {
                    let list = list
                        .into_iter()
                        .map(|(d, last)| {
                            let unexplained = devices
                                .get(d)
                                .is_some_and(|x| x.logins.is_empty() && !x.is_bot(day));
                            Regular::new(d, last, unexplained)
                        })
                        .collect();
                    (b, list)
                })
                .collect();
            let accounts = self.accounts.map_values(|a| Account {
                devices: a.devices,
                evidence_devices: a.evidence_devices,
                opted_out: a.opted_out,
                seen_day: day,
            });
            let mut e = Engine::new(&crate::config::Config::default(), Default::default());
            e.devices = devices;
            e.accounts = accounts;
            e.coloc = Colocation::from_parts(buckets, self.active_buckets, regulars);
            e.buffer = self.buffer;
            e.seq = self.seq;
            e.sources = self.sources;
            e.watermark = self.watermark;
            e.current_day = self.current_day;
            e.markers = self.markers;
            e.max_marker_ts = self.max_marker_ts;
            e.provisional = self.provisional;
            e.stats = self.stats;
            e.login_links = self.login_links;
            e.inferred_links = self.inferred_links;
            e
        }
    }
}
