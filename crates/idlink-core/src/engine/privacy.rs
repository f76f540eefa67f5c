//! Privacy requests: opt-out, opt-in and erasure, applied by their `ts`.

use super::Engine;
use super::intern::NONE;
use super::state::{self, Evidence};
use crate::event::{Event, EventKind, PrivacyTarget};
use crate::ids::PackedId;
use crate::time::Millis;
use rustc_hash::FxHashMap;
use serde::Serialize;

/// Namespace of device ids in erase-marker fingerprints.
pub(super) const DEVICE_NS: u8 = 1;
/// Namespace of account ids in erase-marker fingerprints.
pub(super) const ACCOUNT_NS: u8 = 2;

/// What a privacy request removed, for its acknowledgement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Removed {
    /// Sign-in links removed.
    pub login_links: u64,
    /// Inferred links removed.
    pub inferred_links: u64,
    /// Evidence entries deleted or made anonymous.
    pub evidence: u64,
    /// Events still waiting in the reorder buffer that were dropped.
    pub buffered_events: u64,
    /// Sightings in bucket windows and pending co-locations dropped.
    pub sightings: u64,
}

/// Proof that a privacy request took effect in this engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrivacyAck {
    /// The request's `ts`.
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub ts: Millis,
    /// `erase`, `opt_out` or `opt_in`.
    pub kind: &'static str,
    /// `account` or `device`.
    pub subject: &'static str,
    /// Keyed hash (HMAC-SHA256, hex) of the id: provable without the id.
    pub id_hash: String,
    /// What was removed.
    pub removed: Removed,
}

/// Privacy work that needs a pass over every bucket, done in batches: a
/// request takes effect on links and evidence at once, and on windows,
/// day aggregates, bucket regulars and the reorder buffer at the next purge,
/// which runs before anything could observe the difference (a day close,
/// a flush, a snapshot, handing out acks or changes, or an event about the
/// same id). Acknowledgements wait for their purge.
#[derive(Debug, Default)]
pub(super) struct PendingPurge {
    /// Erased account slots (kept, opted out, until purged) and their ack.
    /// Maps, not lists: every released event asks whether its ids are
    /// waiting here.
    accounts: FxHashMap<u32, usize>,
    /// Erased device slots and their ack.
    devices: FxHashMap<u32, usize>,
    /// Opted-out accounts whose pending co-locations must go, and their ack.
    opted_out: FxHashMap<u32, usize>,
    /// Opted-out accounts that opted in again before the purge, with the
    /// opt-out's ack: their pairs from before it still go, and their new
    /// ones wait aside in the co-location state until then.
    rejoined: FxHashMap<u32, usize>,
    /// Erased device ids, with their marker fingerprint and ack: the purge
    /// finds the buffered events that mention them by id (a hash lookup),
    /// not by a keyed fingerprint of every buffered event's ids. Never
    /// stored: the purge runs before any snapshot.
    erased_devices: FxHashMap<PackedId, (u128, usize)>,
    /// Erased account ids, likewise.
    erased_accounts: FxHashMap<PackedId, (u128, usize)>,
    /// Acknowledgements waiting for the purge.
    acks: Vec<PrivacyAck>,
}

/// Requests a purge batch may hold before it runs. A purge is a pass over
/// all bucket state, so a large batch keeps its cost per request small;
/// the service hands out acknowledgements (which purges) after every
/// consumed batch anyway, so this bounds replay, not ack latency.
const PURGE_BATCH: usize = 8192;

/// The acknowledgement's `subject` and `id_hash` of a request about
/// `target`: a keyed hash, provable without the id.
pub(crate) fn ack_subject(
    hasher: &crate::keyed::KeyedHasher,
    target: &PrivacyTarget,
) -> (&'static str, String) {
    let (subject, ns, id) = match target {
        PrivacyTarget::Account(a) => ("account", ACCOUNT_NS, a.text()),
        PrivacyTarget::Device(d) => ("device", DEVICE_NS, d.text()),
    };
    (
        subject,
        hex::encode(hasher.hmac(&[&[ns][..], id.as_bytes()].concat())),
    )
}

impl Removed {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Removed) {
        self.login_links += other.login_links;
        self.inferred_links += other.inferred_links;
        self.evidence += other.evidence;
        self.buffered_events += other.buffered_events;
        self.sightings += other.sightings;
    }
}

impl PendingPurge {
    pub(super) fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    pub(super) fn has_device(&self, d: u32) -> bool {
        self.devices.contains_key(&d)
    }

    /// Whether account slot `a` is erased and waits to be freed.
    pub(super) fn has_erased_account(&self, a: u32) -> bool {
        self.accounts.contains_key(&a)
    }

    pub(super) fn has_account(&self, a: u32) -> bool {
        self.accounts.contains_key(&a) || self.opted_out.contains_key(&a)
    }

    /// Notes that account `a`, whose opt-out waits for the purge, opted in
    /// again; false (nothing noted) unless that is its one pending cycle
    /// (not erased, not already back once).
    fn rejoin(&mut self, a: u32) -> bool {
        if self.accounts.contains_key(&a) || self.rejoined.contains_key(&a) {
            return false;
        }
        match self.opted_out.remove(&a) {
            Some(ack) => {
                self.rejoined.insert(a, ack);
                true
            }
            None => false,
        }
    }
}

impl Engine {
    pub(super) fn apply_privacy(&mut self, ev: Event) {
        let Some(target) = ev.privacy_target() else {
            return;
        };
        self.stats.privacy_requests += 1;
        let mut removed = Removed::default();
        if matches!(ev.kind, EventKind::Erase | EventKind::OptOut) {
            // Evidence a flush counted for the open day is taken back
            // rather than made anonymous: the day's real close recounts it
            // from aggregates this request purges, as it would have without
            // the flush.
            self.retract_provisional();
        }
        if let (EventKind::OptOut, PrivacyTarget::Account(acc)) = (ev.kind, &target)
            && self
                .accounts
                .find(acc)
                .is_some_and(|a| self.pending.has_erased_account(a))
        {
            // The account's erasure is still being purged: its slot is about
            // to be freed, and the opt-out must outlive it.
            self.purge_pending();
        }
        let ack = self.pending.acks.len();
        match (ev.kind, &target) {
            (EventKind::Erase, PrivacyTarget::Account(acc)) => {
                let fp = self.add_marker(ACCOUNT_NS, &acc.text(), ev.ts);
                self.pending
                    .erased_accounts
                    .insert(acc.0.clone(), (fp, ack));
                if let Some(a) = self.accounts.find(acc) {
                    self.erase_account(a, ev.ts, &mut removed);
                    self.pending.accounts.insert(a, ack);
                }
            }
            (EventKind::Erase, PrivacyTarget::Device(dev)) => {
                let fp = self.add_marker(DEVICE_NS, &dev.text(), ev.ts);
                self.pending.erased_devices.insert(dev.0.clone(), (fp, ack));
                if let Some(d) = self.devices.find(dev) {
                    self.erase_device(d, &mut removed);
                    self.pending.devices.insert(d, ack);
                }
            }
            (EventKind::OptOut, PrivacyTarget::Account(acc)) => {
                let (a, _) = self.accounts.intern(acc, Default::default);
                self.opt_out(a, ev.ts, &mut removed);
                self.pending.opted_out.insert(a, ack);
                // Back once since its last opt-out: what it paired since
                // goes too.
                removed.sightings += self.coloc.drop_aside(a);
            }
            (EventKind::OptIn, PrivacyTarget::Account(acc)) => {
                if let Some(a) = self.accounts.find(acc) {
                    // Pairs from before the opt-out must go before new
                    // ones may join them: the purge removes the old ones,
                    // and the new ones wait aside until then. Anything
                    // rarer (erased meanwhile, or back a second time) runs
                    // the purge now.
                    if self.pending.rejoin(a) {
                        self.coloc.set_aside(a);
                    } else if self.pending.has_account(a) {
                        self.purge_pending();
                    }
                    if let Some(x) = self.accounts.get_mut(a) {
                        x.opted_out = false;
                    }
                }
            }
            _ => return,
        }
        let (subject, id_hash) = ack_subject(&self.hasher, &target);
        self.pending.acks.push(PrivacyAck {
            ts: ev.ts,
            kind: ev.kind.as_str(),
            subject,
            id_hash,
            removed,
        });
        if self.pending.acks.len() >= PURGE_BATCH {
            self.purge_pending();
        }
    }

    /// Records an erase marker; returns its fingerprint.
    fn add_marker(&mut self, ns: u8, id: &str, ts: Millis) -> u128 {
        let fp = self.hasher.fingerprint(ns, id);
        let t = self.markers.entry(fp).or_insert(ts);
        *t = (*t).max(ts);
        self.max_marker_ts = self.max_marker_ts.max(ts);
        fp
    }

    /// Runs the pending purge: one pass over every bucket, profile and
    /// buffered event for all requests since the last one; then frees the
    /// erased slots and releases the acknowledgements.
    pub(super) fn purge_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut p = std::mem::take(&mut self.pending);
        let devices = std::mem::take(&mut p.devices);
        let accounts = std::mem::take(&mut p.accounts);
        // Pairs from before an opt-out count towards it, even if the
        // account opted in and out again since.
        let mut opted = std::mem::take(&mut p.opted_out);
        opted.extend(std::mem::take(&mut p.rejoined));
        let mut count = |ack: usize| {
            if let Some(a) = p.acks.get_mut(ack) {
                a.removed.sightings += 1;
            }
        };
        self.coloc.forget(&devices, &accounts, &opted, &mut count);
        let mut survivors: Vec<Event> = Vec::new();
        let (erased_devices, erased_accounts) = (&p.erased_devices, &p.erased_accounts);
        let any_erased = !erased_devices.is_empty() || !erased_accounts.is_empty();
        if any_erased && !self.buffer.is_empty() {
            let mut purged: Vec<usize> = Vec::new();
            let markers = &self.markers;
            self.buffer.retain(|e| {
                if e.kind.is_privacy() {
                    return true;
                }
                let mut mentions = false;
                let mut hit = |erased: &FxHashMap<PackedId, (u128, usize)>, id: &PackedId| {
                    let &(fp, i) = erased.get(id)?;
                    mentions = true;
                    markers.get(&fp).is_some_and(|&t| e.ts <= t).then_some(i)
                };
                let found = e
                    .device
                    .as_ref()
                    .and_then(|d| hit(erased_devices, &d.0))
                    .or_else(|| e.account.as_ref().and_then(|a| hit(erased_accounts, &a.0)));
                match found {
                    Some(i) => {
                        purged.push(i);
                        false
                    }
                    None => {
                        // Later than the erasure: stays, and its sign-in
                        // is published again under the id's new slot.
                        if mentions && e.account.is_some() {
                            survivors.push(e.clone());
                        }
                        true
                    }
                }
            });
            for i in purged {
                if let Some(a) = p.acks.get_mut(i) {
                    a.removed.buffered_events += 1;
                }
            }
        }
        let erased_devices: Vec<u32> = devices.keys().copied().collect();
        let erased_accounts: Vec<u32> = accounts.keys().copied().collect();
        self.forget_early(&erased_devices, &erased_accounts, &survivors);
        for &d in &erased_devices {
            self.mark_device(d);
            self.free_device(d);
        }
        for &a in &erased_accounts {
            self.mark_account(a);
            self.free_account(a);
        }
        for ev in &survivors {
            self.register_early(ev);
        }
        self.acks.append(&mut p.acks);
    }

    /// Every link and piece of evidence of account `a` goes now (evidence
    /// kept only as an anonymous total on each device); its sightings and
    /// pending co-locations go at the next purge. Until then it counts as
    /// opted out, so it pairs with nothing.
    fn erase_account(&mut self, a: u32, ts: Millis, removed: &mut Removed) {
        let Some(acc) = self.accounts.get(a) else {
            return;
        };
        let linked = acc.devices.clone();
        let holding = acc.evidence_devices.clone();
        for d in linked {
            if self.devices.get(d).is_some_and(|x| x.login(a).is_some()) {
                self.remove_login(d, a);
                removed.login_links += 1;
            }
            self.drop_inferred_to(d, a, removed);
        }
        removed.evidence += self.anonymise_evidence(a, &holding, ts);
        if let Some(acc) = self.accounts.get_mut(a) {
            acc.opted_out = true;
            acc.devices.clear();
        }
        self.mark_account(a);
        self.redecide(&holding);
    }

    /// Every link and piece of evidence of device `d` goes now; its
    /// sightings at the next purge, which also frees the slot.
    fn erase_device(&mut self, d: u32, removed: &mut Removed) {
        let Some(dev) = self.devices.get(d) else {
            return;
        };
        let logins: Vec<u32> = dev.logins.iter().map(|l| l.account).collect();
        let mut evidence_accounts: Vec<u32> = dev.evidence.iter().map(|e| e.account).collect();
        evidence_accounts.dedup();
        removed.evidence += dev.evidence.len() as u64;
        for a in logins {
            self.remove_login(d, a);
            removed.login_links += 1;
        }
        if self.devices.get(d).is_some_and(|x| x.inferred.is_some()) {
            self.set_inferred(d, None);
            removed.inferred_links += 1;
        }
        for a in evidence_accounts {
            if let Some(acc) = self.accounts.get_mut(a) {
                state::remove_value(&mut acc.evidence_devices, d);
            }
        }
        if let Some(dev) = self.devices.get_mut(d) {
            dev.evidence.clear();
        }
        self.mark_device(d);
    }

    /// Removes device `d`'s inferred link if it points to account `a`.
    fn drop_inferred_to(&mut self, d: u32, a: u32, removed: &mut Removed) {
        if self
            .devices
            .get(d)
            .and_then(|x| x.inferred.as_ref())
            .is_some_and(|i| i.account == a)
        {
            self.set_inferred(d, None);
            removed.inferred_links += 1;
        }
    }

    /// Opt-out: inferred links to `a` go and its evidence becomes
    /// anonymous; no new evidence is collected while opted out.
    fn opt_out(&mut self, a: u32, ts: Millis, removed: &mut Removed) {
        let Some(acc) = self.accounts.get_mut(a) else {
            return;
        };
        acc.opted_out = true;
        let linked = acc.devices.clone();
        let holding = std::mem::take(&mut acc.evidence_devices);
        for d in linked {
            self.drop_inferred_to(d, a, removed);
        }
        removed.evidence += self.anonymise_evidence(a, &holding, ts);
        self.redecide(&holding);
    }

    /// Rewrites `a`'s evidence on `devices` up to the request's `ts` to
    /// the anonymous account, so the weight still counts against other
    /// accounts' share but names no one. Evidence after `ts` (a request
    /// that arrived late) is deleted: it should never have been kept, and
    /// deleting it makes the result independent of when the request
    /// arrived. Returns the number of entries rewritten or deleted.
    fn anonymise_evidence(&mut self, a: u32, devices: &[u32], ts: Millis) -> u64 {
        let mut n = 0;
        for &d in devices {
            let Some(dev) = self.devices.get_mut(d) else {
                continue;
            };
            let before = dev.evidence.len();
            dev.evidence.retain(|e| e.account != a || e.at <= ts);
            n += (before - dev.evidence.len()) as u64;
            let mut changed = false;
            for e in dev.evidence.iter_mut().filter(|e| e.account == a) {
                e.account = NONE;
                n += 1;
                changed = true;
            }
            if changed {
                dev.evidence.sort_unstable_by(|x: &Evidence, y: &Evidence| {
                    (x.account, x.day, x.bucket).cmp(&(y.account, y.day, y.bucket))
                });
                dev.evidence.dedup_by(|x, y| {
                    if (x.account, x.day, x.bucket) == (y.account, y.day, y.bucket) {
                        y.weight = y.weight.saturating_add(x.weight);
                        true
                    } else {
                        false
                    }
                });
            }
        }
        if let Some(acc) = self.accounts.get_mut(a) {
            acc.evidence_devices.clear();
        }
        n
    }

    fn redecide(&mut self, devices: &[u32]) {
        let day = self.decision_day();
        for &d in devices {
            if self.devices.get(d).is_some() {
                self.decide(d, day);
            }
        }
    }
}
