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
use crate::engine::snapshot::read_versioned;
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

/// Bumped whenever a bucket partition's snapshot layout changes, with
/// what each layout still read lacks. 2 added the phone platform.
const STAGE_VERSIONS: &[(u32, u8)] = &[(2, 0), (1, crate::format::PLATFORM)];

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

/// Privacy work that needs a pass over every bucket of the partition,
/// done in batches, as the engine does its own (`PendingPurge`). A request
/// takes effect on its id's slot at once: an erased or opted-out account
/// pairs with nothing, and neither does an erased device. Windows, day
/// aggregates and buffered sightings follow at the next
/// [`BucketStage::purge`], which runs before anything could observe the
/// difference: a day's close, a flush's answer, handing out the
/// acknowledgements (after every consumed batch), a snapshot, a sighting
/// that names an erased id, or another request about a waiting id. One
/// pass per request made a wave of erasures cost a pass over every bucket
/// for each of them.
#[derive(Debug, Default)]
struct Pending {
    /// Erased device slots, freed by the purge, and their request (an
    /// index into `acks`).
    devices: FxHashMap<u32, usize>,
    /// Erased account slots, likewise; opted out until freed.
    accounts: FxHashMap<u32, usize>,
    /// Opted-out accounts whose pairs go.
    opted: FxHashMap<u32, usize>,
    /// Erased device ids with the time before which their buffered
    /// sightings go (the request's `ts`, or later for a late request),
    /// and their request. Buffered sightings carry ids, not slots.
    erased_devices: FxHashMap<Box<str>, (Millis, usize)>,
    /// Erased account ids, likewise.
    erased_accounts: FxHashMap<Box<str>, (Millis, usize)>,
    /// Opted-out account ids, so that a later request about one finds it
    /// waiting.
    opted_ids: FxHashMap<Box<str>, usize>,
    /// The requests, in the order applied; the purge counts what each
    /// removed and hands them on for acknowledgement.
    acks: Vec<Applied>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// Whether a request about `id` (a device if `device`) waits here.
    fn names(&self, device: bool, id: &str) -> bool {
        if device {
            self.erased_devices.contains_key(id)
        } else {
            self.erased_accounts.contains_key(id) || self.opted_ids.contains_key(id)
        }
    }

    /// Whether sighting `s` names an erased id: its device or account
    /// would land in a slot about to be freed.
    fn erases_any(&self, s: &Sighting) -> bool {
        self.erased_devices.contains_key(&s.device)
            || s.account
                .as_deref()
                .is_some_and(|a| self.erased_accounts.contains_key(a))
    }

    /// The request that drops buffered sighting `s` (keyed at `ts`).
    fn drops(&self, ts: Millis, s: &Sighting) -> Option<usize> {
        let before = |&(cut, i): &(Millis, usize)| (ts < cut).then_some(i);
        self.erased_devices
            .get(&s.device)
            .and_then(before)
            .or_else(|| {
                let a = s.account.as_deref()?;
                self.erased_accounts.get(a).and_then(before)
            })
    }
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
    /// Privacy requests waiting for their pass over the buckets. Purged
    /// before the acknowledgements are taken, which comes before every
    /// snapshot.
    #[serde(skip)]
    pending: Pending,
    /// Numbered messages taken from each device partition.
    received: Vec<u64>,
    /// Numbered messages sent to each device partition.
    sent: Vec<u64>,
    /// Bucket-days voided as crowded.
    crowded: u64,
    /// Passes over every bucket that privacy purges made, for the tests
    /// and the criterion bench to count.
    #[serde(skip)]
    purges: u64,
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
            pending: Pending::default(),
            received: vec![0; device_partitions.max(1) as usize],
            sent: vec![0; device_partitions.max(1) as usize],
            crowded: 0,
            purges: 0,
        }
    }

    /// The partition's snapshot (take its outgoing messages first: the
    /// acknowledgements of requests purged here would be taken later).
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.purge();
        postcard::to_stdvec(&(STAGE_VERSIONS[0].0, &*self)).unwrap_or_default()
    }

    /// A bucket partition from its snapshot and the current config.
    pub fn restore(config: &Config, bytes: &[u8]) -> Result<Self, crate::engine::SnapshotError> {
        let mut b: BucketStage = read_versioned(bytes, STAGE_VERSIONS)?;
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

    /// Passes over every bucket that privacy purges made since start
    /// (each for every request waiting).
    pub fn privacy_purges(&self) -> u64 {
        self.purges
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
        self.purge();
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
        self.purge();
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
            if let Item::Sighting(s) = entry.get()
                && self.pending.erases_any(s)
            {
                // Its ids' slots are about to be freed; the purge may also
                // drop the sighting itself.
                self.purge();
                continue;
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
            platform: s.platform,
        };
        let (accounts, pending) = (&self.accounts, &self.pending.devices);
        self.coloc.see(
            s.bucket,
            seen,
            &self.p,
            |acc| accounts.get(acc).is_some_and(|x| !x.opted_out),
            |dev| !pending.is_empty() && pending.contains_key(&dev),
        );
    }

    /// Closes the open day: its evidence goes to the device partitions,
    /// with the first event after it (`None`: the input ended).
    fn close(&mut self, now: Option<Millis>) {
        self.purge();
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
            let k = partition_of(device.text().as_bytes(), n) as usize;
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

    /// Applies a privacy request: in `ts` order (`late` is `None`), or at
    /// once, behind the merged watermark, with the latest release bound
    /// of the device partitions that applied it. Its pass over the
    /// buckets waits for the next [`BucketStage::purge`].
    fn apply_privacy(&mut self, ev: &Event, late: Option<Millis>) {
        let Some(target) = ev.privacy_target() else {
            return;
        };
        let (device, text) = match &target {
            PrivacyTarget::Account(a) => (false, a.text()),
            PrivacyTarget::Device(d) => (true, d.text()),
        };
        let id: &str = &text;
        if self.pending.names(device, id) {
            // One waiting request per id: what each removes stays its own.
            self.purge();
        }
        let (subject, id_hash) = ack_subject(&self.hasher, &target);
        // Buffered sightings the device partitions sent before applying the
        // request go with it (they were in windows there).
        let cut = match late {
            Some(r) => r.max(ev.ts.saturating_add(1)),
            None => ev.ts.saturating_add(1),
        };
        let i = self.pending.acks.len();
        let pending = &mut self.pending;
        match ev.kind {
            EventKind::Erase if device => {
                if let Some(d) = self.devices.find(id) {
                    pending.devices.insert(d, i);
                }
                pending.erased_devices.insert(id.into(), (cut, i));
            }
            EventKind::Erase => {
                if let Some(a) = self.accounts.find(id) {
                    if let Some(x) = self.accounts.get_mut(a) {
                        x.opted_out = true;
                    }
                    pending.accounts.insert(a, i);
                }
                pending.erased_accounts.insert(id.into(), (cut, i));
            }
            EventKind::OptOut if !device => {
                let (a, _) = self.accounts.intern(id, Account::default);
                if let Some(x) = self.accounts.get_mut(a) {
                    x.opted_out = true;
                }
                pending.opted.insert(a, i);
                pending.opted_ids.insert(id.into(), i);
            }
            EventKind::OptIn if !device => {
                if let Some(x) = self
                    .accounts
                    .find(id)
                    .and_then(|a| self.accounts.get_mut(a))
                {
                    x.opted_out = false;
                }
            }
            _ => return,
        }
        pending.acks.push(Applied {
            ts: ev.ts,
            kind: ev.kind,
            device: subject == "device",
            id_hash,
            by: (1, self.partition),
            removed: Removed::default(),
        });
    }

    /// Runs the waiting requests' pass: drops the buffered sightings and
    /// the window, aggregate and pair entries that name erased ids (the
    /// aggregates keep them as anonymous counts), the pairs of opted-out
    /// accounts, and frees the erased ids' slots. Each request's count of
    /// what it removed is then complete.
    fn purge(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut p = std::mem::take(&mut self.pending);
        let mut acks = std::mem::take(&mut p.acks);
        if !p.erased_devices.is_empty() || !p.erased_accounts.is_empty() {
            self.buffer.retain(|k, item| match item {
                Item::Sighting(s) => match p.drops(k.0, s) {
                    Some(i) => {
                        if let Some(a) = acks.get_mut(i) {
                            a.removed.buffered_events += 1;
                        }
                        false
                    }
                    None => true,
                },
                Item::Privacy(_) => true,
            });
        }
        if !(p.devices.is_empty() && p.accounts.is_empty() && p.opted.is_empty()) {
            self.purges += 1;
        }
        self.coloc.forget(&p.devices, &p.accounts, &p.opted, |i| {
            if let Some(a) = acks.get_mut(i) {
                a.removed.sightings += 1;
            }
        });
        for &d in p.devices.keys() {
            self.devices.remove(d);
        }
        for &a in p.accounts.keys() {
            self.accounts.remove(a);
        }
        self.applied.append(&mut acks);
    }
}

#[cfg(test)]
mod tests {
    use super::super::PrivacyCopy;
    use super::*;
    use crate::addr::Bucket;
    use crate::agent::Platform;
    use crate::ids::{AccountId, DeviceId};
    use crate::time::MINUTE_MS;

    /// 2026-01-05T00:00Z plus `minute` minutes.
    fn t(minute: i64) -> Millis {
        Millis(1_767_571_200_000 + minute * MINUTE_MS)
    }

    /// A sighting on the one bucket of these tests.
    fn seen(minute: i64, device: &str, account: Option<&str>) -> ToBuckets {
        ToBuckets::Sighting(Sighting {
            bucket: Bucket::v4(0x5102_0304),
            device: device.into(),
            account: account.map(Into::into),
            ts: t(minute),
            priority: 3,
            bot: false,
            signed_in: account.is_some(),
            platform: Platform::Unknown,
        })
    }

    /// A privacy request of `kind` about `id` (a device if `device`).
    fn request(minute: i64, kind: EventKind, device: bool, id: &str) -> ToBuckets {
        ToBuckets::Privacy(PrivacyCopy {
            event: Event {
                ts: t(minute),
                kind,
                device: device.then(|| DeviceId::from(id)),
                account: (!device).then(|| AccountId::from(id)),
                ip: None,
                platform: Platform::Unknown,
            },
            late: false,
            released_to: Millis::MIN,
        })
    }

    /// The one device partition has sent everything before `upto`, in the
    /// open `day`.
    fn progress(day: i32, upto: Millis, next: Option<Millis>, ended: bool) -> ToBuckets {
        ToBuckets::Progress(Progress {
            day,
            upto,
            next,
            ended,
            flushes: 0,
            finished: false,
        })
    }

    /// Runs `msgs` (the first event at minute 0 opens the day) through a
    /// bucket partition fed by one device partition, releases them all
    /// at once, closes the input, and returns every account offered to a
    /// device, the acknowledgements, and the purges run.
    fn run(msgs: Vec<ToBuckets>) -> (Vec<(String, String)>, Vec<Applied>, u64) {
        let mut b = BucketStage::new(&Config::default(), 0, 1);
        let day = t(0).day() as i32;
        let send = |b: &mut BucketStage, seq: &mut u64, msg| {
            *seq += 1;
            b.receive(Sent {
                from: 0,
                seq: *seq,
                msg,
            });
        };
        let mut seq = 0;
        send(&mut b, &mut seq, progress(i32::MIN, t(0), Some(t(0)), true));
        for m in msgs {
            send(&mut b, &mut seq, m);
        }
        // One release: every request waits for one pass.
        send(&mut b, &mut seq, progress(day, t(600), None, false));
        send(
            &mut b,
            &mut seq,
            progress(day, Millis::MAX, Some(Millis::MAX), true),
        );
        let mut offered: Vec<(String, String)> = b
            .take_for_devices()
            .into_iter()
            .flat_map(|(_, sent)| match sent.msg {
                ToDevices::Closed { offers, .. } | ToDevices::SoFar { offers, .. } => offers,
            })
            .map(|o| (o.device.into(), o.account.into()))
            .collect();
        offered.sort();
        let purges = b.privacy_purges();
        let acks = b
            .take_applied()
            .into_iter()
            .filter_map(|(_, m)| match m {
                ToAccounts::Applied(a) => Some(a),
                ToAccounts::Part(_) => None,
            })
            .collect();
        (offered, acks, purges)
    }

    fn pair(device: &str, account: &str) -> (String, String) {
        (device.to_owned(), account.to_owned())
    }

    #[test]
    fn a_batch_of_requests_makes_one_pass_and_pairs_nothing_erased() {
        // Without requests, the laptop is offered both signed-in accounts.
        let sightings = || {
            vec![
                seen(0, "phone", Some("alice")),
                seen(1, "tablet", Some("bob")),
                seen(2, "laptop", None),
            ]
        };
        let (offered, _, _) = run(sightings());
        assert_eq!(
            offered,
            vec![pair("laptop", "alice"), pair("laptop", "bob")]
        );

        // Erasing the phone and bob, and opting carol out, before the
        // laptop is seen: no pair with either, one pass for all three.
        let mut msgs = sightings();
        let laptop = msgs.pop().expect("three sightings");
        msgs.extend([
            request(2, EventKind::Erase, true, "phone"),
            request(2, EventKind::Erase, false, "bob"),
            request(2, EventKind::OptOut, false, "carol"),
            laptop,
        ]);
        let (offered, acks, purges) = run(msgs);
        assert_eq!(offered, Vec::new());
        assert_eq!(purges, 1);
        let kinds: Vec<_> = acks.iter().map(|a| (a.kind, a.device)).collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Erase, true),
                (EventKind::Erase, false),
                (EventKind::OptOut, false)
            ]
        );
        // Each erased id's sighting in the window went with it.
        assert_eq!(acks[0].removed.sightings, 1);
        assert_eq!(acks[1].removed.sightings, 1);
    }

    #[test]
    fn a_sighting_naming_an_erased_id_runs_the_pass_first() {
        // The phone is erased, then seen again signed in: a new device, not
        // the slot about to be freed, so the laptop after it pairs with it.
        // Its sighting of the erasure's millisecond goes with the erasure.
        let (offered, acks, purges) = run(vec![
            seen(0, "phone", Some("alice")),
            request(1, EventKind::Erase, true, "phone"),
            seen(1, "phone", Some("alice")),
            seen(2, "phone", Some("alice")),
            seen(3, "laptop", None),
        ]);
        assert_eq!(offered, vec![pair("laptop", "alice")]);
        assert_eq!(purges, 1);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].removed.sightings, 1);
        assert_eq!(acks[0].removed.buffered_events, 1);
    }

    #[test]
    fn a_second_request_about_a_waiting_id_runs_the_pass_first() {
        // Opted out and back in before the pass: alice's pair from before
        // goes, the one after counts (the laptop's sighting is out of the
        // window by then).
        let (offered, acks, purges) = run(vec![
            seen(0, "phone", Some("alice")),
            seen(1, "laptop", None),
            request(2, EventKind::OptOut, false, "alice"),
            request(3, EventKind::OptIn, false, "alice"),
            seen(40, "phone", Some("alice")),
            seen(41, "tv", None),
        ]);
        assert_eq!(offered, vec![pair("tv", "alice")]);
        assert_eq!(purges, 1);
        assert_eq!(acks.len(), 2);
        assert_eq!(acks[0].removed.sightings, 1);
    }
}
