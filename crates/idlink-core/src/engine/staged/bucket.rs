//! The bucket stage: co-location on the bucket partitions.
//!
//! A bucket partition merges the sightings of every device partition in
//! event-time order (each device partition sends them in order, and says
//! how far it has got), feeds them to its [`Colocation`], and closes a day
//! when every device partition has sent all of it: the evidence of each
//! bucket-day goes to the partition of the device it is for, and every
//! device partition hears that the day is closed, evidence or not.

use super::{
    Applied, Offer, Progress, Sent, Sighting, ToAccounts, ToBuckets, ToDevices, partition_of,
};
use crate::config::Config;
use crate::engine::Params;
use crate::engine::Removed;
use crate::engine::colocation::{Colocation, Offers, Seen};
use crate::engine::intern::{NONE, Slots};
use crate::engine::privacy::ack_subject;
use crate::event::{Event, EventKind, PrivacyTarget};
use crate::keyed::KeyedHasher;
use crate::time::{DAY_MS, Millis};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a bucket partition knows of an account.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Account {
    /// Day of its latest signed-in sighting here: windows and the day's
    /// aggregate refer to its slot until that day has passed.
    last_day: i32,
    /// Opted out: its sightings pair with nothing.
    opted_out: bool,
}

/// Something waiting for the merged watermark.
#[derive(Debug, Serialize, Deserialize)]
enum Item {
    Sighting(Sighting),
    Privacy(Event),
}

/// Bumped whenever a bucket partition's snapshot layout changes.
const STAGE_VERSION: u32 = 1;

/// Ordering key: `ts`, kind priority, sending partition, arrival.
type Key = (Millis, u8, u32, u64);

/// A privacy request's copies received so far.
#[derive(Debug, Serialize, Deserialize)]
struct Copies {
    /// How many device partitions have sent it.
    received: u32,
    /// Whether every copy was applied late.
    late: bool,
    /// The latest release bound among the copies.
    released_to: Millis,
    /// The request.
    event: Event,
}

/// One partition of the bucket stage. Its snapshot is its serde form,
/// without what comes from the config.
#[derive(Debug, Serialize, Deserialize)]
pub struct BucketStage {
    /// This partition.
    partition: u32,
    /// Device partitions feeding it; each day close waits for all.
    device_partitions: u32,
    /// Derived settings.
    #[serde(skip)]
    p: Params,
    /// Bucket tags.
    #[serde(skip)]
    hasher: KeyedHasher,
    /// Windows, day aggregates, regulars.
    coloc: Colocation,
    /// Device ids named by the bucket state, with the day each was last
    /// seen (a slot is kept while a regulars list may name it).
    devices: Slots<i32>,
    /// Account ids named by the bucket state, and opt-outs.
    accounts: Slots<Account>,
    /// Sightings and privacy requests waiting for every device partition
    /// to pass them.
    buffer: BTreeMap<Key, Item>,
    /// Arrival counter.
    seq: u64,
    /// The latest progress of each device partition.
    reports: Vec<Option<Progress>>,
    /// Privacy requests waiting for the rest of their copies.
    copies: FxHashMap<(Millis, EventKind, String), Copies>,
    /// Everything before this time has been applied.
    released_to: Millis,
    /// The open day (`i32::MIN` before the first).
    day: i32,
    /// The open day was closed for good (end of input).
    ended: bool,
    /// Flushes answered, per device partition.
    answered: Vec<u64>,
    /// Messages for device partitions.
    #[serde(skip)]
    out: Vec<(u32, ToDevices)>,
    /// Privacy requests applied, for the account stage's acknowledgement.
    #[serde(skip)]
    applied: Vec<Applied>,
    /// Numbered messages taken from each device partition.
    received: Vec<u64>,
    /// Numbered messages sent to each device partition.
    sent: Vec<u64>,
    /// Bucket-days voided as crowded.
    crowded: u64,
    /// Days a slot outlives its last sighting.
    #[serde(skip)]
    keep_days: i64,
}

impl BucketStage {
    /// Partition `partition` of the bucket stage, fed by
    /// `device_partitions` device partitions.
    pub fn new(config: &Config, partition: u32, device_partitions: u32) -> Self {
        let p = Params::new(config);
        let window_days = p.window_ms.div_euclid(DAY_MS) + 1;
        BucketStage {
            partition,
            device_partitions: device_partitions.max(1),
            keep_days: p.horizon_days.max(window_days) + 2,
            p,
            hasher: KeyedHasher::new(config.privacy.hash_secret.as_bytes()),
            coloc: Colocation::default(),
            devices: Slots::default(),
            accounts: Slots::default(),
            buffer: BTreeMap::new(),
            seq: 0,
            reports: vec![None; device_partitions.max(1) as usize],
            copies: FxHashMap::default(),
            released_to: Millis::MIN,
            day: i32::MIN,
            ended: false,
            answered: vec![0; device_partitions.max(1) as usize],
            out: Vec::new(),
            applied: Vec::new(),
            received: vec![0; device_partitions.max(1) as usize],
            sent: vec![0; device_partitions.max(1) as usize],
            crowded: 0,
        }
    }

    /// The partition's snapshot (take its outgoing messages first).
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&(STAGE_VERSION, self)).unwrap_or_default()
    }

    /// A bucket partition from its snapshot and the current config.
    pub fn restore(config: &Config, bytes: &[u8]) -> Result<Self, crate::engine::SnapshotError> {
        let found = postcard::take_from_bytes::<u32>(bytes)?.0;
        if found != STAGE_VERSION {
            return Err(crate::engine::SnapshotError::Version { found });
        }
        let (_, mut b) = postcard::from_bytes::<(u32, BucketStage)>(bytes)?;
        let fresh = BucketStage::new(config, b.partition, b.device_partitions);
        b.p = fresh.p;
        b.hasher = fresh.hasher;
        b.keep_days = fresh.keep_days;
        Ok(b)
    }

    /// This partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Bucket-days voided as crowded so far.
    pub fn crowded_bucket_days(&self) -> u64 {
        self.crowded
    }

    /// Address buckets holding state.
    pub fn bucket_count(&self) -> usize {
        self.coloc.len()
    }

    /// Takes a message from a device partition, and does what it makes
    /// possible (a numbered one already taken is dropped).
    pub fn receive(&mut self, sent: Sent<ToBuckets>) {
        let from = sent.from;
        if sent.seq > 0 {
            let Some(last) = self.received.get_mut(from as usize) else {
                return;
            };
            if sent.seq <= *last {
                return;
            }
            *last = sent.seq;
        }
        match sent.msg {
            ToBuckets::Sighting(s) => {
                self.seq += 1;
                self.buffer
                    .insert((s.ts, s.priority, from, self.seq), Item::Sighting(s));
            }
            ToBuckets::Privacy(copy) => {
                let Some(target) = copy.event.privacy_target() else {
                    return;
                };
                let id = match target {
                    PrivacyTarget::Account(a) => format!("a{a}"),
                    PrivacyTarget::Device(d) => format!("d{d}"),
                };
                let key = (copy.event.ts, copy.event.kind, id);
                let c = self.copies.entry(key.clone()).or_insert(Copies {
                    received: 0,
                    late: true,
                    released_to: Millis::MIN,
                    event: copy.event,
                });
                c.received += 1;
                c.late &= copy.late;
                c.released_to = c.released_to.max(copy.released_to);
                if c.received < self.device_partitions {
                    return;
                }
                let Some(c) = self.copies.remove(&key) else {
                    return;
                };
                if c.late && c.event.ts < self.released_to {
                    self.apply_privacy(&c.event, Some(c.released_to));
                } else {
                    self.seq += 1;
                    let k = (c.event.ts, c.event.kind.priority(), 0, self.seq);
                    self.buffer.insert(k, Item::Privacy(c.event));
                }
            }
            ToBuckets::Progress(p) => {
                if let Some(r) = self.reports.get_mut(from as usize) {
                    *r = Some(p);
                }
            }
        }
        self.step();
    }

    /// Takes the privacy requests applied here, for the account stage's
    /// acknowledgement: `(account partition, message)`.
    pub fn take_applied(&mut self) -> Vec<(u32, ToAccounts)> {
        let n = self.device_partitions;
        std::mem::take(&mut self.applied)
            .into_iter()
            .map(|a| {
                (
                    partition_of(a.id_hash.as_bytes(), n),
                    ToAccounts::Applied(a),
                )
            })
            .collect()
    }

    /// Takes the messages for device partitions, addressed and numbered:
    /// `(device partition, message)`.
    pub fn take_for_devices(&mut self) -> Vec<(u32, Sent<ToDevices>)> {
        let from = self.partition;
        let mut out = Vec::with_capacity(self.out.len());
        for (to, msg) in std::mem::take(&mut self.out) {
            if let Some(s) = self.sent.get_mut(to as usize) {
                *s += 1;
                out.push((to, Sent { from, seq: *s, msg }));
            }
        }
        out
    }

    /// Applies what every device partition has passed, answers flushes,
    /// and closes the day if every device partition has released all of it.
    fn step(&mut self) {
        let Some(reports) = self
            .reports
            .iter()
            .copied()
            .collect::<Option<Vec<Progress>>>()
        else {
            return;
        };
        let bound = reports.iter().map(|r| r.upto).min().unwrap_or(Millis::MIN);
        self.release(bound);
        self.answer_flushes(&reports);
        // The day closes once every device partition has released all of
        // it; the next starts with the earliest event any of them holds
        // beyond it, or where the slowest of them is.
        if reports.iter().all(|r| r.day == self.day && r.ended) {
            let now = reports
                .iter()
                .map(|r| r.next.unwrap_or(r.upto))
                .min()
                .unwrap_or(bound);
            if now == Millis::MAX {
                // The input ended: the last day closes for good, once.
                if self.day != i32::MIN && !self.ended {
                    self.ended = true;
                    self.close(None);
                }
            } else if bound >= now {
                self.close(Some(now));
            }
        }
    }

    /// A device partition that flushed waits for what the open day offers
    /// its devices so far (a provisional count; the day's close replaces
    /// it). A flush is a round every device partition takes part in (a
    /// request goes to all of them): the `f`-th is answered once every
    /// device partition has flushed `f` times, so that the answer counts
    /// everything all of them had when they flushed. Answered any earlier,
    /// a partition's devices would miss the evidence that the others'
    /// last sightings make, until its next flush.
    fn answer_flushes(&mut self, reports: &[Progress]) {
        let everyone = reports.iter().map(|r| r.flushes).min().unwrap_or(0);
        let asking: Vec<usize> = (0..reports.len())
            .filter(|&k| {
                let r = &reports[k];
                r.day == self.day
                    && r.next.is_none()
                    && r.flushes <= everyone
                    && self.answered.get(k).is_some_and(|&a| r.flushes > a)
            })
            .collect();
        if asking.is_empty() {
            return;
        }
        let mut offers = Offers::new();
        if self.day != i32::MIN {
            self.coloc
                .offers_so_far(self.day, &self.p, &self.hasher, |o| offers.extend(o));
        }
        let mut by_partition = self.route(offers);
        for k in asking {
            let flushes = reports[k].flushes;
            self.answered[k] = flushes;
            let offers = by_partition
                .get_mut(k)
                .map(std::mem::take)
                .unwrap_or_default();
            self.out.push((
                k as u32,
                ToDevices::SoFar {
                    day: self.day,
                    flushes,
                    offers,
                },
            ));
        }
    }

    /// Applies everything before `bound` in order.
    fn release(&mut self, bound: Millis) {
        while let Some(entry) = self.buffer.first_entry() {
            if entry.key().0 >= bound {
                break;
            }
            match entry.remove() {
                Item::Sighting(s) => self.see(s),
                Item::Privacy(ev) => self.apply_privacy(&ev, None),
            }
        }
        self.released_to = self.released_to.max(bound);
    }

    fn see(&mut self, s: Sighting) {
        let day = s.ts.day() as i32;
        let (d, _) = self.devices.intern(&s.device, || day);
        if let Some(x) = self.devices.get_mut(d) {
            *x = (*x).max(day);
        }
        let a = match s.account.as_deref() {
            Some(acc) => {
                let (a, _) = self.accounts.intern(acc, Account::default);
                if let Some(x) = self.accounts.get_mut(a) {
                    x.last_day = x.last_day.max(day);
                }
                a
            }
            None => NONE,
        };
        let seen = Seen {
            device: d,
            account: a,
            ts: s.ts,
            bot: s.bot,
            signed_in: s.signed_in,
        };
        let accounts = &self.accounts;
        self.coloc.see(
            s.bucket,
            seen,
            &self.p,
            |acc| accounts.get(acc).is_some_and(|x| !x.opted_out),
            |_| false,
        );
    }

    /// Closes the open day: its evidence goes to the device partitions,
    /// with the first event after it (`None`: the input ended).
    fn close(&mut self, now: Option<Millis>) {
        let day = self.day;
        let mut offers = Offers::new();
        if day != i32::MIN {
            let from = now.map_or(i64::MAX, |n| n.0.saturating_sub(self.p.window_ms));
            self.crowded += self
                .coloc
                .close(from, &self.p, &self.hasher, |o| offers.extend(o));
            self.coloc.expire(day, self.p.horizon_days);
            self.sweep(day);
        }
        let by_partition = self.route(offers);
        let at = now.unwrap_or(Millis::MAX);
        for (k, offers) in by_partition.into_iter().enumerate() {
            self.out.push((
                k as u32,
                ToDevices::Closed {
                    day,
                    now: at,
                    offers,
                },
            ));
        }
        if let Some(n) = now {
            self.day = n.day() as i32;
            self.ended = false;
        }
    }

    /// Offers by the partition of their device.
    fn route(&self, offers: Offers) -> Vec<Vec<Offer>> {
        let n = self.device_partitions;
        let mut out: Vec<Vec<Offer>> = (0..n).map(|_| Vec::new()).collect();
        for (d, e) in offers {
            let device = self.devices.id(d);
            let k = partition_of(device.as_bytes(), n) as usize;
            if let Some(v) = out.get_mut(k) {
                v.push(Offer {
                    device: device.into(),
                    account: self.accounts.id(e.account).into(),
                    evidence: e,
                });
            }
        }
        out
    }

    /// Frees ids no bucket state can name any more.
    fn sweep(&mut self, day: i32) {
        let keep = self.keep_days;
        let old: Vec<u32> = self
            .devices
            .live()
            .filter(|&d| {
                self.devices
                    .get(d)
                    .is_some_and(|&x| i64::from(day) - i64::from(x) >= keep)
            })
            .collect();
        for d in old {
            self.devices.remove(d);
        }
        let old: Vec<u32> = self
            .accounts
            .live()
            .filter(|&a| {
                self.accounts
                    .get(a)
                    .is_some_and(|x| !x.opted_out && i64::from(day) - i64::from(x.last_day) >= keep)
            })
            .collect();
        for a in old {
            self.accounts.remove(a);
        }
    }

    /// Drops the buffered sightings before `cut` for which `names` says
    /// they name the erased id; returns how many.
    fn purge_buffer(&mut self, cut: Millis, names: impl Fn(&Sighting) -> bool) -> u64 {
        let before = self.buffer.len();
        self.buffer.retain(|k, item| match item {
            Item::Sighting(s) => k.0 >= cut || !names(s),
            Item::Privacy(_) => true,
        });
        (before - self.buffer.len()) as u64
    }

    /// Applies a privacy request: in `ts` order (`late` is `None`), or at
    /// once, behind the merged watermark, with the latest release bound
    /// of the device partitions that applied it.
    fn apply_privacy(&mut self, ev: &Event, late: Option<Millis>) {
        let Some(target) = ev.privacy_target() else {
            return;
        };
        let none = FxHashMap::default();
        let mut removed = Removed::default();
        let (subject, id_hash) = ack_subject(&self.hasher, &target);
        // Buffered sightings the device partitions sent before applying the
        // request go with it (they were in windows there).
        let cut = match late {
            Some(r) => r.max(ev.ts.saturating_add(1)),
            None => ev.ts.saturating_add(1),
        };
        match (ev.kind, target) {
            (EventKind::Erase, PrivacyTarget::Account(acc)) => {
                if let Some(a) = self.accounts.find(acc.as_str()) {
                    let gone = FxHashMap::from_iter([(a, 0usize)]);
                    self.coloc
                        .forget(&none, &gone, &none, |_| removed.sightings += 1);
                    self.accounts.remove(a);
                }
                removed.buffered_events +=
                    self.purge_buffer(cut, |s| s.account.as_deref() == Some(acc.as_str()));
            }
            (EventKind::Erase, PrivacyTarget::Device(dev)) => {
                if let Some(d) = self.devices.find(dev.as_str()) {
                    let gone = FxHashMap::from_iter([(d, 0usize)]);
                    self.coloc
                        .forget(&gone, &none, &none, |_| removed.sightings += 1);
                    self.devices.remove(d);
                }
                removed.buffered_events += self.purge_buffer(cut, |s| &*s.device == dev.as_str());
            }
            (EventKind::OptOut, PrivacyTarget::Account(acc)) => {
                let (a, _) = self.accounts.intern(acc.as_str(), Account::default);
                if let Some(x) = self.accounts.get_mut(a) {
                    x.opted_out = true;
                }
                let opted = FxHashMap::from_iter([(a, 0usize)]);
                self.coloc
                    .forget(&none, &none, &opted, |_| removed.sightings += 1);
            }
            (EventKind::OptIn, PrivacyTarget::Account(acc)) => {
                if let Some(x) = self
                    .accounts
                    .find(acc.as_str())
                    .and_then(|a| self.accounts.get_mut(a))
                {
                    x.opted_out = false;
                }
            }
            _ => return,
        }
        self.applied.push(Applied {
            ts: ev.ts,
            kind: ev.kind,
            device: subject == "device",
            id_hash,
            by: (1, self.partition),
            removed,
        });
    }
}
