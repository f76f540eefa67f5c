//! The event-time linking engine.
//!
//! Events enter through [`Engine::ingest`]. Device events move the
//! watermark (the minimum over sources of the greatest `ts` seen, minus the
//! allowed lateness); events wait in a reorder buffer until the watermark
//! passes them and are then applied in `(ts, kind priority)` order, so any
//! disorder within the lateness bound gives the same result. Activity that
//! arrives behind the watermark is late: it refreshes sign-in links but
//! adds no co-location evidence. Privacy requests never count as late:
//! they are applied by their `ts` whenever they arrive.
//!
//! Co-location is collected per address bucket and UTC day and becomes
//! evidence when the day is complete; devices are then re-decided from
//! their evidence set ([`score`]).

mod bucket;
mod cap;
mod colocation;
mod early;
pub mod intern;
mod privacy;
mod render;
mod reorder;
pub mod score;
mod slot_index;
mod snapshot;
mod sources;
pub mod staged;
pub mod state;
#[cfg(test)]
mod tests;

use crate::addr::{AddressClass, AddressClassifier, Bucket};
use crate::config::Config;
use crate::event::Event;
use crate::keyed::KeyedHasher;
use crate::time::{DAY_MS, MINUTE_MS, Millis};
use intern::{NONE, Prefetch, Slots};
use rustc_hash::{FxHashMap, FxHashSet};
use state::{ACTIVE_DAYS, Account, Device, InferredLink, LoginLink, WEIGHT_ONE};
use std::hash::BuildHasher;

pub use privacy::{PrivacyAck, Removed};
pub use snapshot::SnapshotError;

/// What happened to an ingested event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// Waiting in the reorder buffer for the watermark.
    Buffered,
    /// Activity behind the watermark: sign-in links refreshed, no evidence.
    Late,
    /// A privacy request behind the watermark, applied at once.
    PrivacyApplied,
    /// Dropped: an erase marker covers the id at this `ts`.
    Erased,
}

/// Counters and gauges of the engine, for summaries and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    /// Device events applied in event-time order.
    pub applied_events: u64,
    /// Device events that arrived behind the watermark.
    pub late_events: u64,
    /// Events dropped because an erase marker covers them.
    pub erased_events: u64,
    /// Privacy requests applied (in order or late).
    pub privacy_requests: u64,
    /// Privacy requests that arrived behind the watermark.
    pub late_privacy_requests: u64,
    /// Sightings on non-public addresses (no evidence).
    pub non_public_sightings: u64,
    /// Sightings on carrier-grade NAT (no evidence).
    pub carrier_nat_sightings: u64,
    /// Sightings on configured excluded ranges (no evidence).
    pub excluded_sightings: u64,
    /// Bucket-days voided as crowded.
    pub crowded_bucket_days: u64,
    /// Bucket-days that produced evidence.
    pub evidence_bucket_days: u64,
    /// Times a device was marked a bot.
    pub bots_marked: u64,
    /// Sign-in links created.
    pub login_links_created: u64,
    /// Sign-in links removed (expiry, caps, erasure).
    pub login_links_removed: u64,
    /// Inferred links created.
    pub inferred_links_created: u64,
    /// Inferred links removed.
    pub inferred_links_removed: u64,
}

impl EngineStats {
    /// Adds `o`'s counts (the engines of several partitions).
    pub fn add(&mut self, o: &EngineStats) {
        self.applied_events += o.applied_events;
        self.late_events += o.late_events;
        self.erased_events += o.erased_events;
        self.privacy_requests += o.privacy_requests;
        self.late_privacy_requests += o.late_privacy_requests;
        self.non_public_sightings += o.non_public_sightings;
        self.carrier_nat_sightings += o.carrier_nat_sightings;
        self.excluded_sightings += o.excluded_sightings;
        self.crowded_bucket_days += o.crowded_bucket_days;
        self.evidence_bucket_days += o.evidence_bucket_days;
        self.bots_marked += o.bots_marked;
        self.login_links_created += o.login_links_created;
        self.login_links_removed += o.login_links_removed;
        self.inferred_links_created += o.inferred_links_created;
        self.inferred_links_removed += o.inferred_links_removed;
    }
}

/// Ids whose published view changed since the last [`Engine::take_changes`].
#[derive(Debug, Default)]
struct ChangeLog {
    /// Live device slots whose links changed.
    devices: FxHashSet<u32>,
    /// Live account slots whose devices changed.
    accounts: FxHashSet<u32>,
    /// Ids of freed device slots (tombstones first).
    removed_devices: Vec<Box<str>>,
    /// Ids of freed account slots.
    removed_accounts: Vec<Box<str>>,
}

/// Output changes: `(key, Some(line))` to publish, `(key, None)` for a
/// tombstone. Tombstones of removed ids come before updates, so an id
/// removed and re-created in one batch ends with its value.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Changed `device-links` records, keyed by device id.
    pub devices: Vec<(String, Option<String>)>,
    /// Changed `account-devices` records, keyed by account id.
    pub accounts: Vec<(String, Option<String>)>,
}

/// Settings derived once from the config, in the units the hot path uses.
#[derive(Clone, Debug, Default)]
struct Params {
    lateness_ms: i64,
    window_ms: i64,
    gap_scale_ms: f64,
    ambiguity_exponent: f64,
    horizon_days: i64,
    min_days: u16,
    min_score: f64,
    min_mean_weight: f64,
    min_share: f64,
    infer_for_signed_in: bool,
    refuse_platform_clash: bool,
    login_ttl_days: i64,
    max_accounts_per_device: usize,
    max_devices_per_account: usize,
    max_bucket_devices: usize,
    max_bucket_accounts: usize,
    bot_events: u32,
    bot_buckets: u32,
    bot_hours: u32,
    bot_mark_days: i32,
    close_gap_s: u16,
    min_coverage: f64,
    marker_ttl_days: i64,
    max_support: usize,
}

impl Params {
    fn new(c: &Config) -> Self {
        Params {
            lateness_ms: c.time.allowed_lateness_minutes * MINUTE_MS,
            window_ms: c.linking.window_minutes * MINUTE_MS,
            gap_scale_ms: c.linking.gap_scale_minutes * MINUTE_MS as f64,
            ambiguity_exponent: c.linking.ambiguity_exponent,
            horizon_days: c.linking.evidence_horizon_days,
            min_days: c.linking.min_days.min(u32::from(u16::MAX)) as u16,
            min_score: c.linking.min_score,
            min_mean_weight: c.linking.min_mean_weight,
            min_share: c.linking.min_share,
            close_gap_s: (c.linking.close_gap_minutes * 60.0).clamp(0.0, f64::from(u16::MAX))
                as u16,
            min_coverage: c.linking.min_coverage,
            infer_for_signed_in: c.linking.infer_for_signed_in_devices,
            refuse_platform_clash: c.linking.refuse_platform_clash,
            login_ttl_days: c.linking.login_link_ttl_days,
            max_accounts_per_device: c.linking.max_accounts_per_device,
            max_devices_per_account: c.linking.max_devices_per_account,
            max_bucket_devices: c.addresses.max_devices_per_bucket_day as usize,
            max_bucket_accounts: c.addresses.max_accounts_per_bucket_day as usize,
            bot_events: c.bots.max_events_per_day,
            bot_buckets: c.bots.max_buckets_per_day,
            bot_hours: c.bots.max_active_hours_per_day,
            bot_mark_days: c.bots.mark_days.clamp(1, 100_000) as i32,
            marker_ttl_days: c.privacy.erase_marker_ttl_days,
            max_support: c.linking.max_support,
        }
    }
}

/// The linking engine: all state of the device graph for the events it
/// was given.
/// The snapshot format is this struct's serde form (see `snapshot.rs`):
/// everything but the fields marked `skip`, which come from the config
/// and are set again on restore.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    /// Derived settings.
    #[serde(skip)]
    p: Params,
    /// Decides which addresses may count and their bucket.
    #[serde(skip)]
    classifier: AddressClassifier,
    /// Keyed hashes for bucket tags, acks and erase markers.
    #[serde(skip)]
    hasher: KeyedHasher,
    /// Device state by slot.
    devices: Slots<Device>,
    /// Account state by slot.
    accounts: Slots<Account>,
    /// Address buckets: windows, day aggregates, regulars.
    coloc: colocation::Colocation,
    /// Events waiting for the watermark, smallest key first.
    buffer: reorder::Reorder,
    /// Arrival counter: the last tie-break of the buffer order.
    seq: u64,
    /// Sources feeding the watermark.
    sources: sources::Sources,
    /// Current watermark; never moves backwards.
    watermark: Millis,
    /// UTC day of the latest released event.
    current_day: i32,
    /// Erase markers: keyed fingerprint of the id → request `ts`.
    markers: FxHashMap<u128, Millis>,
    /// Greatest `ts` among markers: newer events skip the marker lookup.
    max_marker_ts: Millis,
    /// Evidence keys (device, account, day, bucket) written by the last
    /// provisional close, retracted before the day is counted again.
    provisional: Vec<(u32, u32, i32, u64)>,
    /// Privacy work batched for one pass over the buckets.
    #[serde(skip)]
    pending: privacy::PendingPurge,
    /// Output changes, when the caller publishes incrementally.
    #[serde(skip)]
    changes: Option<ChangeLog>,
    /// Sign-ins still in the reorder buffer, merged into the published
    /// view at once (only while publishing incrementally); rebuilt from
    /// the buffer, never stored.
    #[serde(skip)]
    early: early::Early,
    /// Privacy requests applied since the last `take_privacy_acks`.
    #[serde(skip)]
    acks: Vec<PrivacyAck>,
    /// Accounts whose published view may hide devices (over their cap at
    /// the last rendering): when one changes, all its devices are
    /// published again even if it has dropped below the cap since, or a
    /// device it hid would stay withdrawn. Rebuilt from the state when
    /// change tracking starts, never stored.
    #[serde(skip)]
    capped: FxHashSet<u32>,
    /// Set when this engine is a partition of the device stage, whose
    /// bucket side and account cap are other stages' (`staged`).
    #[serde(skip)]
    stage: Option<Box<staged::DeviceSide>>,
    /// Counters.
    stats: EngineStats,
    /// Live sign-in links.
    login_links: u64,
    /// Live inferred links.
    inferred_links: u64,
}

/// Evidence arriving at devices from closed (or provisionally counted)
/// bucket-days. It borrows only the fields it writes, so the bucket side
/// can hand offers over one bucket-day at a time while it walks its own
/// state.
struct Intake<'a> {
    /// Where evidence is kept.
    devices: &'a mut Slots<Device>,
    /// Opted-out accounts get none; the others learn which devices hold
    /// evidence for them.
    accounts: &'a mut Slots<Account>,
    /// Provisional evidence written, for the real close to take back.
    written: &'a mut Vec<(u32, u32, i32, u64)>,
    /// Counts bucket-days that produced evidence.
    stats: &'a mut EngineStats,
    /// Whether this is a provisional count of the open day.
    provisional: bool,
    /// The change log: a device whose inferred link the evidence supports
    /// is published again, since its supporting sightings may change
    /// while the link does not.
    changes: &'a mut Option<ChangeLog>,
}

impl Intake<'_> {
    /// Keeps what one bucket-day offers: each piece of evidence, unless
    /// its device is a bot that day (it may have been flagged after its
    /// sightings on the bucket) or its account opted out.
    fn keep(&mut self, offers: colocation::Offers) {
        let mut produced = false;
        for (d, e) in offers {
            if self.accounts.get(e.account).is_none_or(|a| a.opted_out) {
                continue;
            }
            let Some(dev) = self.devices.get_mut(d) else {
                continue;
            };
            if dev.is_bot(e.day) {
                continue;
            }
            if let Some(c) = self.changes.as_mut()
                && dev
                    .inferred
                    .as_ref()
                    .is_some_and(|i| i.account == e.account)
            {
                c.devices.insert(d);
            }
            match dev.evidence.binary_search_by(|x| {
                (x.account, x.day, x.bucket).cmp(&(e.account, e.day, e.bucket))
            }) {
                Ok(i) => dev.evidence[i] = e,
                Err(i) => dev.evidence.insert(i, e),
            }
            if let Some(acc) = self.accounts.get_mut(e.account) {
                state::add_value(&mut acc.evidence_devices, d);
            }
            if self.provisional {
                self.written.push((d, e.account, e.day, e.bucket));
            }
            produced = true;
        }
        if produced && !self.provisional {
            self.stats.evidence_bucket_days += 1;
        }
    }
}

impl Engine {
    /// An engine for a validated config, a classifier built from its
    /// address settings, and the hasher for its secret.
    pub fn new(config: &Config, classifier: AddressClassifier) -> Self {
        Engine {
            p: Params::new(config),
            classifier,
            hasher: KeyedHasher::new(config.privacy.hash_secret.as_bytes()),
            devices: Slots::default(),
            accounts: Slots::default(),
            coloc: colocation::Colocation::default(),
            buffer: reorder::Reorder::default(),
            seq: 0,
            sources: sources::Sources::default(),
            watermark: Millis::MIN,
            current_day: i32::MIN,
            markers: FxHashMap::default(),
            max_marker_ts: Millis::MIN,
            provisional: Vec::new(),
            pending: privacy::PendingPurge::default(),
            changes: None,
            early: early::Early::default(),
            acks: Vec::new(),
            capped: FxHashSet::default(),
            stage: None,
            stats: EngineStats::default(),
            login_links: 0,
            inferred_links: 0,
        }
    }

    /// Turns on change tracking for incremental publishing.
    pub fn track_changes(&mut self) {
        if self.changes.is_none() {
            self.changes = Some(ChangeLog::default());
            self.capped = self.accounts.live().filter(|&a| self.over_cap(a)).collect();
            // A restored buffer's sign-ins are published at once too.
            self.rebuild_early();
        }
    }

    /// The keyed hasher, for callers that publish hashed ids.
    pub fn hasher(&self) -> &KeyedHasher {
        &self.hasher
    }

    /// The current watermark.
    pub fn watermark(&self) -> Millis {
        self.watermark
    }

    /// Counters so far.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Devices held in state.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Accounts held in state.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Live links by type: (sign-in, inferred).
    pub fn link_counts(&self) -> (u64, u64) {
        (self.login_links, self.inferred_links)
    }

    /// Events waiting in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Registers a source of device events (a partition); the watermark
    /// waits for every registered source.
    pub fn add_source(&mut self, id: u32) {
        self.sources.add(id);
    }

    /// Unregisters a source (a revoked partition).
    pub fn remove_source(&mut self, id: u32) {
        self.sources.remove(id);
        self.advance();
    }

    /// Takes one event from `source`. Every source (a file, a partition
    /// of either input topic) feeds the watermark, so a request on a slow
    /// privacy partition is not overtaken by fast device partitions.
    pub fn ingest(&mut self, source: u32, event: Event) -> Ingested {
        self.sources
            .saw_event(source, event.ts, event.kind.is_privacy());
        if event.ts < self.watermark {
            if event.kind.is_privacy() {
                self.stats.late_privacy_requests += 1;
                self.forward_privacy(&event, true);
                self.apply_privacy(event);
                return Ingested::PrivacyApplied;
            }
            self.stats.late_events += 1;
            if self.is_erased(&event) {
                self.stats.erased_events += 1;
                return Ingested::Erased;
            }
            self.apply_sighting(&event, None, false);
            return Ingested::Late;
        }
        self.register_early(&event);
        self.push(event);
        self.advance();
        Ingested::Buffered
    }

    /// Sources marked idle (caught up with their input and quiet).
    pub fn idle_sources(&self) -> usize {
        self.sources.idle()
    }

    /// Marks a source idle (caught up with its partition and quiet) or
    /// active. An idle source does not hold the watermark back, as in
    /// Flink. Marking an idle source idle again confirms it: after a
    /// resumption elsewhere it is held until confirmed twice (see
    /// [`sources`]). Making a source active this way is no resumption
    /// (partitions newly assigned).
    pub fn set_idle(&mut self, source: u32, idle: bool) {
        if idle {
            self.sources.caught_up(source, Millis::MIN);
        } else {
            self.sources.activate(source);
        }
        self.advance();
    }

    /// Everything available has been read: releases every buffered event
    /// and makes the open day's evidence count provisionally, so the
    /// published graph reflects all input. Events older than the newest
    /// one seen are late afterwards; one of the same millisecond is not
    /// (the watermark rests on it). When the day later closes for real,
    /// its provisional evidence is replaced, never added twice.
    ///
    /// Such an event of the same millisecond is applied after the ones
    /// this flush released, even when it sorts before them (a sign-in
    /// after an activity of that millisecond). What the bucket side
    /// decides from a day does not depend on that order: crowding and
    /// regulars are decided from the whole day when it closes. Known
    /// limitation: what a released sighting carried about its device
    /// can. A device's sign-in on one address, arriving after a flush
    /// released its unsigned sighting of the same millisecond on another,
    /// leaves that sighting without the sign-in link it would have
    /// carried, and a privacy request of that millisecond finds the
    /// released sightings already counted (an erased device then counts
    /// anonymously where one clean run would not have seen it at all).
    /// Both need one device's events, or a request and an event, in the
    /// same millisecond on either side of a flush.
    pub fn flush(&mut self) {
        self.purge_pending();
        let max = self.sources.max();
        if self.staged_flush(max.unwrap_or(Millis::MIN)) {
            return;
        }
        let Some(max) = max else {
            return;
        };
        if max == Millis::MIN {
            return;
        }
        if max >= self.watermark {
            self.release(max.saturating_add(1));
            self.watermark = max;
        }
        if self.current_day != i32::MIN {
            let day = self.current_day;
            self.close_provisionally(day);
        }
    }

    /// Moves the watermark to at least `to` (an idle source, or the end of
    /// input with `Millis::MAX`) and releases what it passes.
    pub fn advance_to(&mut self, to: Millis) {
        if to > self.watermark {
            self.release(to);
        }
    }

    /// End of input: releases everything, closes the last day and
    /// decides every device.
    pub fn finish(&mut self) {
        if self.staged_finish() {
            return;
        }
        if self.watermark < Millis::MAX {
            self.release(Millis::MAX);
        }
        if self.current_day != i32::MIN {
            let day = self.current_day;
            self.close_day(day, Millis::MAX);
        }
    }

    fn push(&mut self, event: Event) {
        self.seq += 1;
        let class = event.ip.map(|ip| self.classifier.classify(ip));
        self.buffer.push(reorder::Pending {
            seq: self.seq,
            event,
            class,
        });
    }

    fn advance(&mut self) {
        let Some(min) = self.sources.low() else {
            return;
        };
        if min == Millis::MIN {
            return;
        }
        let wm = min.saturating_sub(self.p.lateness_ms);
        if wm > self.watermark {
            self.release(wm);
        }
    }

    fn release(&mut self, wm: Millis) {
        self.watermark = wm;
        while let Some(key) = self.buffer.peek_key().filter(|k| k.0 < wm) {
            let day = key.0.day() as i32;
            if self.stop_before(day, key.0, wm) {
                return;
            }
            let Some(p) = self.buffer.pop() else {
                break;
            };
            self.prefetch_ahead();
            let (ev, class) = (p.event, p.class);
            if day > self.current_day {
                if self.current_day != i32::MIN {
                    let closing = self.current_day;
                    self.close_day(closing, ev.ts);
                }
                self.current_day = day;
            }
            let early = self.release_early(&ev);
            if ev.kind.is_privacy() {
                self.forward_privacy(&ev, false);
                self.apply_privacy(ev);
            } else if self.is_erased(&ev) {
                self.stats.erased_events += 1;
                if let Some((d, a)) = early {
                    // Published early, dropped now: publish again.
                    self.mark_device(d);
                    self.mark_account(a);
                }
            } else {
                self.apply_sighting(&ev, class, true);
            }
        }
        self.released(wm);
    }

    /// Starts the cache misses of the events a few places behind the one
    /// being applied, one link of each lookup chain per stage, so that at
    /// a million devices the misses of several events overlap instead of
    /// each event waiting for its own in turn. Only hints: nothing
    /// changes, and a wrong guess costs a wasted load.
    fn prefetch_ahead(&self) {
        /// How far ahead each stage looks; a stage reads what the one
        /// before it started loading a few events earlier. `None`: the
        /// ids' own text, which the first lookup stage hashes (an id too
        /// long to sit inline in the event has been on the heap, and out
        /// of the cache, since it was decoded).
        const STAGES: [(usize, Option<Prefetch>); 4] = [
            (15, None),
            (11, Some(Prefetch::Index)),
            (7, Some(Prefetch::Slot)),
            (3, Some(Prefetch::Text)),
        ];
        for (n, stage) in STAGES {
            let Some(reorder::Pending {
                event: ev, class, ..
            }) = self.buffer.ahead(n)
            else {
                continue;
            };
            if ev.kind.is_privacy() {
                continue;
            }
            let device = ev.device.as_ref();
            let account = ev.account.as_ref();
            let Some(stage) = stage else {
                let ids = [device.map(|x| &x.0), account.map(|x| &x.0)];
                for id in ids.into_iter().flatten() {
                    if let Some(b) = id.heap_text().and_then(<[u8]>::first) {
                        slot_index::prefetch(b);
                    }
                }
                continue;
            };
            if let Some(d) = device {
                self.devices.prefetch(d, stage);
            }
            if let Some(a) = account {
                self.accounts.prefetch(a, stage);
            }
            if stage != Prefetch::Text
                && let AddressClass::Usable(b) = self.class_of(ev, *class)
            {
                self.coloc.prefetch(b, stage == Prefetch::Index);
            }
        }
    }

    /// The class of an event's address: `known` if it was found when the
    /// event was buffered, found now otherwise.
    fn class_of(&self, ev: &Event, known: Option<AddressClass>) -> AddressClass {
        match (known, ev.ip) {
            (Some(class), _) => class,
            (None, Some(ip)) => self.classifier.classify(ip),
            (None, None) => AddressClass::NonPublic,
        }
    }

    /// Applies a device event. `in_order` events also feed bot counters
    /// and co-location; late ones only refresh sign-in links. `class`:
    /// the address's class if already known.
    fn apply_sighting(&mut self, ev: &Event, class: Option<AddressClass>, in_order: bool) {
        let Some(device_id) = ev.device.as_ref() else {
            return;
        };
        let account_id = ev.account.as_ref();
        let mut found = (
            self.devices.find(device_id),
            account_id.and_then(|x| self.accounts.find(x)),
        );
        if !self.pending.is_empty()
            && (found.0.is_some_and(|d| self.pending.has_device(d))
                || found.1.is_some_and(|a| self.pending.has_erased_account(a)))
        {
            // An event about an id whose erasure is still being purged
            // must not land in the slot about to be freed. (An opted-out
            // account keeps its slot and pairs with nothing meanwhile.)
            self.purge_pending();
            found = (
                self.devices.find(device_id),
                account_id.and_then(|x| self.accounts.find(x)),
            );
        }
        let d = match found.0 {
            Some(d) => d,
            None => self.devices.intern(device_id, Device::new).0,
        };
        let a = match (found.1, account_id) {
            (Some(a), _) => a,
            (None, Some(acc)) => self.accounts.intern(acc, Account::default).0,
            (None, None) => NONE,
        };
        if a != NONE {
            self.touch_login(d, a, ev.ts);
        }
        if !in_order {
            return;
        }
        self.stats.applied_events += 1;
        let bucket = match self.class_of(ev, class) {
            AddressClass::Usable(b) => Some(b),
            AddressClass::NonPublic => {
                self.stats.non_public_sightings += 1;
                None
            }
            AddressClass::CarrierNat => {
                self.stats.carrier_nat_sightings += 1;
                None
            }
            AddressClass::Excluded => {
                self.stats.excluded_sightings += 1;
                None
            }
        };
        self.count_for_bots(d, ev.ts, bucket);
        if let Some(b) = bucket {
            self.colocate(b, d, a, ev);
        }
    }

    fn count_for_bots(&mut self, d: u32, ts: Millis, bucket: Option<Bucket>) {
        let day = ts.day() as i32;
        let p = &self.p;
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        if dev.bot_day < day {
            dev.start_day(day);
        }
        dev.mark_active(day);
        dev.day_hours |= 1u32 << (ts.0.rem_euclid(DAY_MS) / (60 * MINUTE_MS));
        dev.day_events = dev.day_events.saturating_add(1);
        if let Some(b) = bucket {
            let h = rustc_hash::FxBuildHasher.hash_one(b);
            dev.day_buckets |= 1u64 << (h >> 58);
        }
        let was_bot = dev.is_bot(day);
        if u32::from(dev.day_events) > p.bot_events
            || dev.day_buckets.count_ones() > p.bot_buckets
            || dev.day_hours.count_ones() > p.bot_hours
        {
            dev.mark_bot(day.saturating_add(p.bot_mark_days));
            if !was_bot {
                self.stats.bots_marked += 1;
            }
        }
    }

    fn colocate(&mut self, b: Bucket, d: u32, a: u32, ev: &Event) {
        let (ts, priority) = (ev.ts, ev.kind.priority());
        let day = ts.day() as i32;
        // What is known about the device travels with the sighting: the
        // bucket side decides from it alone.
        let (bot, signed_in) = self
            .devices
            .get(d)
            .map_or((false, false), |x| (x.is_bot(day), !x.logins.is_empty()));
        if a != NONE
            && let Some(acc) = self.accounts.get_mut(a)
        {
            // The bucket refers to the account's slot from here on.
            acc.seen_day = acc.seen_day.max(day);
        }
        let seen = colocation::Seen {
            device: d,
            account: a,
            ts,
            bot,
            signed_in,
            platform: ev.platform,
        };
        if self.send_sighting(b, &seen, priority) {
            return;
        }
        let (accounts, pending) = (&self.accounts, &self.pending);
        self.coloc.see(
            b,
            seen,
            &self.p,
            |acc| accounts.get(acc).is_some_and(|x| !x.opted_out),
            |dev| !pending.is_empty() && pending.has_device(dev),
        );
    }

    /// Creates or refreshes the sign-in link `d`–`a`.
    fn touch_login(&mut self, d: u32, a: u32, ts: Millis) {
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        let created = match dev.logins.binary_search_by_key(&a, |l| l.account) {
            Ok(i) => {
                let l = &mut dev.logins[i];
                l.first_seen = l.first_seen.min(ts);
                l.last_seen = l.last_seen.max(ts);
                l.events = l.events.saturating_add(1);
                false
            }
            Err(i) => {
                dev.logins.insert(
                    i,
                    LoginLink {
                        account: a,
                        first_seen: ts,
                        last_seen: ts,
                        events: 1,
                    },
                );
                true
            }
        };
        let had_inferred = dev.inferred.is_some();
        self.mark_device(d);
        self.mark_account(a);
        if created {
            self.login_links += 1;
            self.stats.login_links_created += 1;
            if let Some(acc) = self.accounts.get_mut(a) {
                state::add_value(&mut acc.devices, d);
            }
            self.enforce_device_cap(d);
            if had_inferred && !self.p.infer_for_signed_in {
                self.set_inferred(d, None);
            }
        }
    }

    /// Keeps at most `max_accounts_per_device` sign-in links on `d`,
    /// dropping the least recently used.
    fn enforce_device_cap(&mut self, d: u32) {
        loop {
            let Some(dev) = self.devices.get(d) else {
                return;
            };
            if dev.logins.len() <= self.p.max_accounts_per_device {
                return;
            }
            let accounts = &self.accounts;
            let Some(victim) = dev
                .logins
                .iter()
                .min_by(|x, y| {
                    x.last_seen
                        .cmp(&y.last_seen)
                        .then_with(|| accounts.id(x.account).cmp(&accounts.id(y.account)))
                })
                .map(|l| l.account)
            else {
                return;
            };
            self.remove_login(d, victim);
        }
    }

    fn remove_login(&mut self, d: u32, a: u32) {
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        let before = dev.logins.len();
        dev.logins.retain(|l| l.account != a);
        if dev.logins.len() == before {
            return;
        }
        let keep_on_account = dev.inferred.as_ref().is_some_and(|i| i.account == a);
        self.login_links -= 1;
        self.stats.login_links_removed += 1;
        if !keep_on_account && let Some(acc) = self.accounts.get_mut(a) {
            state::remove_value(&mut acc.devices, d);
        }
        self.mark_device(d);
        self.mark_account(a);
    }

    /// Replaces the inferred link of `d`.
    fn set_inferred(&mut self, d: u32, new: Option<InferredLink>) {
        let Some(dev) = self.devices.get_mut(d) else {
            return;
        };
        let old = dev.inferred.take();
        let old_account = old.as_ref().map(|o| o.account);
        let new_account = new.as_ref().map(|n| n.account);
        let unchanged = match (&old, &new) {
            (None, None) => true,
            (Some(o), Some(n)) => **o == *n,
            _ => false,
        };
        dev.inferred = new.map(Box::new);
        let has_login_to_old = old_account.is_some_and(|a| dev.login(a).is_some());
        if unchanged {
            return;
        }
        self.mark_device(d);
        if old_account != new_account {
            if let Some(a) = old_account {
                self.inferred_links -= 1;
                self.stats.inferred_links_removed += 1;
                if !has_login_to_old && let Some(acc) = self.accounts.get_mut(a) {
                    state::remove_value(&mut acc.devices, d);
                }
                self.mark_account(a);
            }
            if let Some(a) = new_account {
                self.inferred_links += 1;
                self.stats.inferred_links_created += 1;
                if let Some(acc) = self.accounts.get_mut(a) {
                    state::add_value(&mut acc.devices, d);
                }
                self.mark_account(a);
            }
        } else if let Some(a) = new_account {
            self.mark_account(a);
        }
    }

    /// Frees a device slot; a pending change to it becomes a tombstone.
    fn free_device(&mut self, d: u32) {
        if let Some((id, _)) = self.devices.remove(d)
            && let Some(c) = self.changes.as_mut()
            && c.devices.remove(&d)
        {
            c.removed_devices.push(id);
        }
    }

    /// Frees an account slot; a pending change to it becomes a tombstone.
    fn free_account(&mut self, a: u32) {
        if let Some((id, _)) = self.accounts.remove(a)
            && let Some(c) = self.changes.as_mut()
            && c.accounts.remove(&a)
        {
            c.removed_accounts.push(id);
        }
    }

    fn mark_device(&mut self, d: u32) {
        if let Some(c) = self.changes.as_mut() {
            c.devices.insert(d);
        }
    }

    fn mark_account(&mut self, a: u32) {
        if let Some(c) = self.changes.as_mut() {
            c.accounts.insert(a);
        }
    }

    /// Closes `day`: every open bucket-day becomes evidence, then every
    /// device with evidence or an inferred link is decided again, and
    /// state past its horizon is dropped. `now` is the first event of the
    /// next day (or the end), for pruning bucket windows.
    fn close_day(&mut self, day: i32, now: Millis) {
        self.purge_pending();
        self.retract_provisional();
        self.count_bucket_days(day, Some(now.0.saturating_sub(self.p.window_ms)));
        self.sweep(day);
    }

    /// Counts the open `day` as if it closed now, remembering what it
    /// wrote so the real close can replace it.
    fn close_provisionally(&mut self, day: i32) {
        // As a real close does: the open day counts without what privacy
        // requests have removed (a device stage's bucket stage has already
        // removed it).
        self.purge_pending();
        self.retract_provisional();
        self.count_bucket_days(day, None);
        self.sweep(day);
    }

    /// Turns bucket-days into evidence on devices, one bucket-day at a
    /// time: every open one, closing it and pruning windows to sightings
    /// from `close_from` (ms) on; or, with `None`, the open `day`'s
    /// provisionally, leaving the bucket state as it is.
    fn count_bucket_days(&mut self, day: i32, close_from: Option<i64>) {
        let staged = self.staged_offers(close_from.is_none());
        let mut intake = Intake {
            devices: &mut self.devices,
            accounts: &mut self.accounts,
            written: &mut self.provisional,
            stats: &mut self.stats,
            provisional: close_from.is_none(),
            changes: &mut self.changes,
        };
        if let Some(mut offers) = staged {
            // The bucket stage counted crowded days; here each bucket-day's
            // offers are kept together, as the local close hands them over.
            offers.sort_unstable_by_key(|(_, e)| (e.day, e.bucket));
            for group in offers.chunk_by(|x, y| (x.1.day, x.1.bucket) == (y.1.day, y.1.bucket)) {
                intake.keep(group.to_vec());
            }
            return;
        }
        let take = |offers| intake.keep(offers);
        let crowded = match close_from {
            Some(from) => self.coloc.close(from, &self.p, &self.hasher, take),
            None => {
                self.coloc.offers_so_far(day, &self.p, &self.hasher, take);
                0
            }
        };
        self.stats.crowded_bucket_days += crowded;
    }

    /// Removes evidence written by the last provisional close.
    pub(super) fn retract_provisional(&mut self) {
        for (d, a, day, bucket) in std::mem::take(&mut self.provisional) {
            let Some(dev) = self.devices.get_mut(d) else {
                continue;
            };
            dev.evidence
                .retain(|e| (e.account, e.day, e.bucket) != (a, day, bucket));
            if dev.inferred.as_ref().is_some_and(|i| i.account == a)
                && let Some(c) = self.changes.as_mut()
            {
                c.devices.insert(d);
            }
            if !dev.evidence.iter().any(|e| e.account == a)
                && let Some(acc) = self.accounts.get_mut(a)
            {
                state::remove_value(&mut acc.evidence_devices, d);
            }
        }
    }

    /// Daily maintenance at the close of `day`: expire evidence, sign-in
    /// links and erase markers; re-decide devices; evict idle state.
    fn sweep(&mut self, day: i32) {
        let horizon = self.p.horizon_days;
        let ttl = self.p.login_ttl_days;
        self.coloc.expire(day, horizon);
        let slots: Vec<u32> = self.devices.live().collect();
        for d in slots {
            let Some(dev) = self.devices.get_mut(d) else {
                continue;
            };
            // Evidence past the horizon.
            let before = dev.evidence.len();
            if before > 0 {
                let mut gone: Vec<u32> = Vec::new();
                dev.evidence.retain(|e| {
                    let keep = i64::from(day) - i64::from(e.day) < horizon;
                    if !keep && e.account != NONE {
                        gone.push(e.account);
                    }
                    keep
                });
                gone.dedup();
                for a in gone {
                    let still = self
                        .devices
                        .get(d)
                        .is_some_and(|x| x.evidence.iter().any(|e| e.account == a));
                    if !still && let Some(acc) = self.accounts.get_mut(a) {
                        state::remove_value(&mut acc.evidence_devices, d);
                    }
                }
            }
            // Sign-in links past their lifetime.
            let expired: Vec<u32> = self.devices.get(d).map_or_else(Vec::new, |x| {
                x.logins
                    .iter()
                    .filter(|l| i64::from(day) - l.last_seen.day() >= ttl)
                    .map(|l| l.account)
                    .collect()
            });
            for a in expired {
                self.remove_login(d, a);
            }
            let Some(dev) = self.devices.get(d) else {
                continue;
            };
            if !dev.evidence.is_empty() || dev.inferred.is_some() {
                self.decide(d, day);
            }
            let Some(dev) = self.devices.get(d) else {
                continue;
            };
            if dev.is_empty()
                && i64::from(day) - i64::from(dev.bot_day) >= horizon
                && !dev.is_bot(day)
                && !self.early.holds_device(d)
            {
                self.free_device(d);
            }
        }
        let accounts: Vec<u32> = self.accounts.live().collect();
        for a in accounts {
            if self
                .accounts
                .get(a)
                .is_some_and(|x| x.is_empty() && x.seen_day < day)
                && !self.early.holds_account(a)
            {
                self.free_account(a);
            }
        }
        let marker_ttl = self.p.marker_ttl_days;
        self.markers
            .retain(|_, ts| i64::from(day) - ts.day() < marker_ttl);
    }

    /// Decides the inferred link of `d` on `day` from its evidence.
    fn decide(&mut self, d: u32, day: i32) {
        let want = self.wanted_link(d, day);
        self.set_inferred(d, want);
    }

    fn wanted_link(&self, d: u32, day: i32) -> Option<InferredLink> {
        let dev = self.devices.get(d)?;
        if dev.is_bot(day) || (!dev.logins.is_empty() && !self.p.infer_for_signed_in) {
            return None;
        }
        let window = self.p.horizon_days.min(i64::from(ACTIVE_DAYS)) as i32;
        let close = score::CloseUse {
            gap_s: self.p.close_gap_s,
            window_days: window,
        };
        let cands = score::candidates(&dev.evidence, day, self.p.horizon_days, close);
        let total: f64 = cands.iter().map(|c| c.score).sum();
        let best = cands
            .iter()
            .filter(|c| c.account != NONE && dev.login(c.account).is_none())
            .filter(|c| !(c.clash && self.p.refuse_platform_clash))
            .filter(|c| self.accounts.get(c.account).is_some_and(|a| !a.opted_out))
            .max_by(|x, y| {
                x.score.total_cmp(&y.score).then_with(|| {
                    self.accounts
                        .id(y.account)
                        .cmp(&self.accounts.id(x.account))
                })
            })?;
        let share = if total > 0.0 { best.score / total } else { 0.0 };
        // The decay-weighted mean weight of a day of evidence.
        let mean = best.score / best.decayed_days.max(f64::MIN_POSITIVE);
        let active = dev.active_days_to(day, window).max(1);
        let coverage = f64::from(best.close_days) / f64::from(active);
        if best.score < self.p.min_score
            || best.days < self.p.min_days
            || share < self.p.min_share
            || mean < self.p.min_mean_weight
            || coverage < self.p.min_coverage
        {
            return None;
        }
        let fixed = |x: f64| (score::round4(x) * f64::from(WEIGHT_ONE)).round() as u32;
        // Shares and confidences are at most one, so they fit in 16 bits.
        let fixed16 = |x: f64| fixed(x).min(u32::from(u16::MAX)) as u16;
        Some(InferredLink {
            account: best.account,
            score: fixed(best.score),
            share: fixed16(share),
            confidence: fixed16(score::confidence(best.score, share)),
            days: best.days,
            buckets: best.buckets,
            close_days: best.close_days,
            active_days: active.min(u32::from(u16::MAX)) as u16,
            decided_day: day,
            first_seen: best.first_seen,
            last_seen: best.last_seen,
        })
    }

    fn is_erased(&self, ev: &Event) -> bool {
        if self.markers.is_empty() || ev.ts > self.max_marker_ts {
            return false;
        }
        let covered = |ns: u8, id: &str| {
            self.markers
                .get(&self.hasher.fingerprint(ns, id))
                .is_some_and(|&t| ev.ts <= t)
        };
        ev.device
            .as_ref()
            .is_some_and(|x| covered(privacy::DEVICE_NS, &x.text()))
            || ev
                .account
                .as_ref()
                .is_some_and(|x| covered(privacy::ACCOUNT_NS, &x.text()))
    }

    /// Drains the privacy acknowledgements produced so far.
    pub fn take_privacy_acks(&mut self) -> Vec<PrivacyAck> {
        self.purge_pending();
        std::mem::take(&mut self.acks)
    }

    /// Renders these devices' `device-links` records and these accounts'
    /// `account-devices` records again with the next
    /// [`Engine::take_changes`]: the line of an id it holds, a tombstone for
    /// one it does not (erased, unlinked, or never seen). A fenced owner
    /// asks for this for the keys it may have written after its
    /// successor's: the current owner's rendering must be the last record
    /// of each key. (A device partition of the staged engine is given
    /// devices only: its account stage renders the accounts.)
    pub fn republish(&mut self, devices: &[Box<str>], accounts: &[Box<str>]) {
        let Some(c) = self.changes.as_mut() else {
            return;
        };
        for id in devices {
            match self.devices.find(id) {
                Some(d) => {
                    c.devices.insert(d);
                }
                None => c.removed_devices.push(id.clone()),
            }
        }
        for id in accounts {
            match self.accounts.find(id) {
                Some(a) => {
                    c.accounts.insert(a);
                }
                None => c.removed_accounts.push(id.clone()),
            }
        }
    }

    /// Drains the output changes since the last call (change tracking
    /// must be on).
    pub fn take_changes(&mut self) -> Changes {
        self.purge_pending();
        let Some(log) = self.changes.as_mut() else {
            return Changes::default();
        };
        let mut log = std::mem::take(log);
        // A change to an account at its cap may move other devices into or
        // out of its view: their lines are published again too.
        // (A device stage is told by the account stage instead.)
        let followers: Vec<u32> = if self.stage.is_some() {
            Vec::new()
        } else {
            log.accounts
                .iter()
                .flat_map(|&a| self.cap_followers(a, self.capped.contains(&a)))
                .collect()
        };
        log.devices.extend(followers);
        let mut out = Changes::default();
        let mut shown = cap::Shown::default();
        let mut ds: Vec<u32> = log.devices.into_iter().collect();
        ds.retain(|&d| self.devices.get(d).is_some());
        ds.sort_unstable_by(|&x, &y| self.devices.id(x).cmp(&self.devices.id(y)));
        // A freed id interned again since (an erased device seen after its
        // erasure) gets its new record, not a tombstone before it.
        let rendered: FxHashSet<u32> = ds.iter().copied().collect();
        for id in log.removed_devices {
            if self
                .devices
                .find(&id)
                .is_none_or(|d| !rendered.contains(&d))
            {
                out.devices.push((id.into(), None));
            }
        }
        for d in ds {
            out.devices
                .push((self.devices.id(d).into(), self.render_device(d, &mut shown)));
        }
        let mut accs: Vec<u32> = log.accounts.into_iter().collect();
        accs.retain(|&a| self.accounts.get(a).is_some());
        if self.stage.is_some() {
            // The account stage merges the lines from every partition.
            self.staged_parts(&accs, &log.removed_accounts);
            return out;
        }
        accs.sort_unstable_by(|&x, &y| self.accounts.id(x).cmp(&self.accounts.id(y)));
        let rendered: FxHashSet<u32> = accs.iter().copied().collect();
        for id in log.removed_accounts {
            if self
                .accounts
                .find(&id)
                .is_none_or(|a| !rendered.contains(&a))
            {
                out.accounts.push((id.into(), None));
            }
        }
        for a in accs {
            out.accounts.push((
                self.accounts.id(a).into(),
                self.render_account(a, &mut shown),
            ));
            if self.over_cap(a) {
                self.capped.insert(a);
            } else {
                self.capped.remove(&a);
            }
        }
        out
    }

    /// Address buckets holding window or day state, for diagnostics.
    pub fn bucket_count(&self) -> usize {
        self.coloc.len()
    }

    /// Day used for decisions made outside a day close (privacy).
    fn decision_day(&self) -> i32 {
        if self.current_day == i32::MIN {
            0
        } else {
            self.current_day
        }
    }
}
