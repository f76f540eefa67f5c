//! Engine snapshots: the whole state as bytes, and back.
//!
//! A snapshot holds everything the engine knows except what comes from
//! the config (thresholds, address lists, the hash secret), so a restart
//! with a changed config applies the new settings to the restored graph.
//! The format is postcard with a leading version number. A snapshot of
//! the two versions before is migrated (a deployment upgrades without
//! losing its graph), and so is one of format 3; any other is refused
//! rather than misread.

use crate::addr::AddressClassifier;
use crate::config::Config;
use crate::engine::Engine;
use crate::format::{OldFormat, PLATFORM, SOURCE_STATE};
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Bumped whenever the state layout changes, with what each version
/// this build still reads lacks. Format 6 added the watermark sources'
/// resumption holds and kind; format 5 the phone platform to buffered
/// events, bucket-days and evidence ([`crate::format`]).
const VERSIONS: &[(u32, u8)] = &[(6, 0), (5, SOURCE_STATE), (4, SOURCE_STATE | PLATFORM)];

/// A snapshot that cannot be restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// Written by another version of the state layout.
    #[error(
        "snapshot version {found} is not the supported version {supported} or one this build migrates"
    )]
    Version {
        /// The version found.
        found: u32,
        /// The version written today.
        supported: u32,
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
        postcard::to_stdvec(&(VERSIONS[0].0, &*self)).unwrap_or_default()
    }

    /// Rebuilds an engine from a snapshot and the current config.
    pub fn restore(
        config: &Config,
        classifier: AddressClassifier,
        bytes: &[u8],
    ) -> Result<Engine, SnapshotError> {
        let found = postcard::take_from_bytes::<u32>(bytes)?.0;
        let mut e = if found == 3 {
            let _old = OldFormat::lacking(SOURCE_STATE | PLATFORM);
            postcard::from_bytes::<(u32, v3::EngineV3)>(bytes)?
                .1
                .migrate()
        } else {
            read_versioned::<Engine>(bytes, VERSIONS)?
        };
        e.adopt(config, classifier);
        Ok(e)
    }

    /// Takes what a snapshot leaves out from the current config.
    pub(crate) fn adopt(&mut self, config: &Config, classifier: AddressClassifier) {
        let fresh = Engine::new(config, classifier);
        self.p = fresh.p;
        self.classifier = fresh.classifier;
        self.hasher = fresh.hasher;
    }
}

/// Reads `(version, T)` written in one of `versions` (the current first,
/// each with the additions it lacks), the fields added since at their
/// defaults.
pub(crate) fn read_versioned<T: DeserializeOwned>(
    bytes: &[u8],
    versions: &[(u32, u8)],
) -> Result<T, SnapshotError> {
    let found = postcard::take_from_bytes::<u32>(bytes)?.0;
    let Some(&(_, missing)) = versions.iter().find(|(v, _)| *v == found) else {
        return Err(SnapshotError::Version {
            found,
            supported: versions.first().map_or(0, |v| v.0),
        });
    };
    let _old = OldFormat::lacking(missing);
    Ok(postcard::from_bytes::<(u32, T)>(bytes)?.1)
}

/// Format 3, before devices remembered the days they were active (for an
/// inferred link's coverage) and kept their bot mark beside the day's
/// event count.
mod v3 {
    use super::super::colocation::Colocation;
    use super::super::intern::Slots;
    use super::super::sources::Source;
    use super::super::state::{ACTIVE_DAYS, Account, Device, Evidence, InferredLink, LoginLink};
    use super::super::{Engine, EngineStats, reorder};
    use crate::time::Millis;
    use rustc_hash::FxHashMap;
    use serde::Deserialize;
    use smallvec::SmallVec;
    use thin_vec::ThinVec;

    /// An inferred link with 32-bit share and confidence and no coverage.
    #[derive(Deserialize)]
    struct InferredLinkV3 {
        account: u32,
        score: u32,
        share: u32,
        confidence: u32,
        days: u16,
        buckets: u16,
        decided_day: i32,
        first_seen: Millis,
        last_seen: Millis,
    }

    /// A device with an absolute bot mark and no active days.
    #[derive(Deserialize)]
    pub struct DeviceV3 {
        logins: SmallVec<[LoginLink; 1]>,
        inferred: Option<Box<InferredLinkV3>>,
        evidence: ThinVec<Evidence>,
        bot_day: i32,
        day_events: u32,
        day_buckets: u64,
        day_hours: u32,
        bot_until: i32,
    }

    impl DeviceV3 {
        /// Today's device. Format 3 kept no record of its active days, so
        /// it counts as active on every remembered day from `since` (the
        /// earliest day of any device's evidence) through its latest day.
        /// Once a deployment has run longer than the evidence horizon,
        /// `since` lies before every day coverage looks at, and the guess
        /// can only lower coverage: an upgrade may hold an inferred link
        /// back until the device's own record fills in, never make one.
        fn migrate(self, since: i32) -> Device {
            let mut dev = Device {
                logins: self.logins,
                inferred: self.inferred.map(|i| {
                    Box::new(InferredLink {
                        account: i.account,
                        score: i.score,
                        share: i.share.min(u32::from(u16::MAX)) as u16,
                        confidence: i.confidence.min(u32::from(u16::MAX)) as u16,
                        days: i.days,
                        buckets: i.buckets,
                        close_days: i.days,
                        active_days: i.days,
                        decided_day: i.decided_day,
                        first_seen: i.first_seen,
                        last_seen: i.last_seen,
                    })
                }),
                evidence: self.evidence,
                bot_day: self.bot_day,
                day_events: self.day_events.min(u32::from(u16::MAX)) as u16,
                bot_days: 0,
                day_buckets: self.day_buckets,
                day_hours: self.day_hours,
                active_days: 0,
            };
            if self.bot_until >= self.bot_day {
                dev.mark_bot(self.bot_until);
            }
            let remembered = dev.bot_day.saturating_sub(ACTIVE_DAYS - 1);
            for day in since.max(remembered)..=dev.bot_day {
                dev.mark_active(day);
            }
            dev
        }
    }

    /// The engine's stored fields in format 3, in order.
    #[derive(Deserialize)]
    pub struct EngineV3 {
        devices: Slots<DeviceV3>,
        accounts: Slots<Account>,
        coloc: Colocation,
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

    impl EngineV3 {
        /// Format 4 from format 3: only the devices changed.
        pub fn migrate(self) -> Engine {
            let mut e = Engine::new(&crate::config::Config::default(), Default::default());
            let since = self
                .devices
                .live()
                .filter_map(|d| self.devices.get(d))
                .flat_map(|d| d.evidence.iter().map(|e| e.day))
                .min()
                .unwrap_or(self.current_day);
            e.devices = self.devices.map_values(|d| d.migrate(since));
            e.accounts = self.accounts;
            e.coloc = self.coloc;
            e.buffer = self.buffer;
            e.seq = self.seq;
            e.sources = self.sources.into();
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

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_migrated_device_is_active_on_every_day_since_the_earliest_evidence() {
            let old = DeviceV3 {
                day_events: 70_000,
                ..old_device()
            };
            let dev = old.migrate(20);
            // Days 20..=40: coverage can only be understated.
            assert_eq!(dev.active_days_to(40, 32), 21);
            assert_eq!(dev.active_days_to(40, 10), 10);
            assert_eq!((dev.bot_until(), dev.day_events), (45, u16::MAX));
            let never = DeviceV3 {
                bot_until: i32::MIN,
                ..old_device()
            };
            assert!(!never.migrate(0).is_bot(40));
        }

        /// A format-3 device last seen on day 40, a bot through day 45.
        fn old_device() -> DeviceV3 {
            DeviceV3 {
                logins: SmallVec::new(),
                inferred: None,
                evidence: ThinVec::new(),
                bot_day: 40,
                day_events: 1,
                day_buckets: 0,
                day_hours: 0,
                bot_until: 45,
            }
        }
    }
}
