//! Privacy requests: opt-out, opt-in and erasure, applied by their `ts`.

use super::Engine;
use super::intern::NONE;
use super::state::{self, Evidence};
use crate::event::{Event, EventKind, PrivacyTarget};
use crate::time::Millis;
use serde::Serialize;

/// Namespace of device ids in erase-marker fingerprints.
pub(super) const DEVICE_NS: u8 = 1;
/// Namespace of account ids in erase-marker fingerprints.
pub(super) const ACCOUNT_NS: u8 = 2;

/// What a privacy request removed, for its acknowledgement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

impl Engine {
    pub(super) fn apply_privacy(&mut self, ev: Event) {
        let Some(target) = ev.privacy_target() else {
            return;
        };
        self.stats.privacy_requests += 1;
        let mut removed = Removed::default();
        let (subject, id): (&'static str, String) = match &target {
            PrivacyTarget::Account(a) => ("account", a.as_str().to_owned()),
            PrivacyTarget::Device(d) => ("device", d.as_str().to_owned()),
        };
        match (ev.kind, &target) {
            (EventKind::Erase, PrivacyTarget::Account(acc)) => {
                self.add_marker(ACCOUNT_NS, acc.as_str(), ev.ts);
                removed.buffered_events =
                    self.purge_buffer(ev.ts, |e| e.account.as_ref() == Some(acc));
                if let Some(a) = self.accounts.find(acc.as_str()) {
                    self.erase_account(a, ev.ts, &mut removed);
                }
            }
            (EventKind::Erase, PrivacyTarget::Device(dev)) => {
                self.add_marker(DEVICE_NS, dev.as_str(), ev.ts);
                removed.buffered_events =
                    self.purge_buffer(ev.ts, |e| e.device.as_ref() == Some(dev));
                if let Some(d) = self.devices.find(dev.as_str()) {
                    self.erase_device(d, &mut removed);
                }
            }
            (EventKind::OptOut, PrivacyTarget::Account(acc)) => {
                let (a, _) = self.accounts.intern(acc.as_str(), Default::default);
                self.opt_out(a, ev.ts, &mut removed);
            }
            (EventKind::OptIn, PrivacyTarget::Account(acc)) => {
                if let Some(a) = self.accounts.find(acc.as_str())
                    && let Some(x) = self.accounts.get_mut(a)
                {
                    x.opted_out = false;
                }
            }
            _ => return,
        }
        let tag = self.hasher.hmac(
            &[
                &[if subject == "account" {
                    ACCOUNT_NS
                } else {
                    DEVICE_NS
                }][..],
                id.as_bytes(),
            ]
            .concat(),
        );
        self.acks.push(PrivacyAck {
            ts: ev.ts,
            kind: ev.kind.as_str(),
            subject,
            id_hash: hex::encode(tag),
            removed,
        });
    }

    fn add_marker(&mut self, ns: u8, id: &str, ts: Millis) {
        let fp = self.hasher.fingerprint(ns, id);
        let t = self.markers.entry(fp).or_insert(ts);
        *t = (*t).max(ts);
        self.max_marker_ts = self.max_marker_ts.max(ts);
    }

    /// Drops buffered events at or before `ts` that match.
    fn purge_buffer(&mut self, ts: Millis, matches: impl Fn(&Event) -> bool) -> u64 {
        let before = self.buffer.len();
        self.buffer.retain(|p| {
            !(p.0.event.ts <= ts && !p.0.event.kind.is_privacy() && matches(&p.0.event))
        });
        (before - self.buffer.len()) as u64
    }

    /// Every trace of account `a` goes: links, evidence (kept only as an
    /// anonymous total on each device), sightings and pending co-locations.
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
        removed.evidence += self.anonymise_evidence(a, &holding, ts);
        for st in self.buckets.values_mut() {
            let before = st.recent.len();
            st.recent.retain(|s| s.account != a);
            removed.sightings += (before - st.recent.len()) as u64;
            if let Some(agg) = st.agg.as_mut() {
                let pairs = agg.pairs.len();
                agg.forget_account(a);
                removed.sightings += (pairs - agg.pairs.len()) as u64;
            }
        }
        self.mark_account(a);
        self.free_account(a);
        self.redecide(&holding);
    }

    /// Every trace of device `d` goes.
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
        for st in self.buckets.values_mut() {
            let before = st.recent.len();
            st.recent.retain(|s| s.device != d);
            removed.sightings += (before - st.recent.len()) as u64;
            if let Some(agg) = st.agg.as_mut() {
                let pairs = agg.pairs.len();
                agg.forget_device(d);
                removed.sightings += (pairs - agg.pairs.len()) as u64;
            }
        }
        for prof in self.profiles.values_mut() {
            prof.retain(|x| x.0 != d);
        }
        self.mark_device(d);
        self.free_device(d);
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
        removed.evidence += self.anonymise_evidence(a, &holding, ts);
        for st in self.buckets.values_mut() {
            if let Some(agg) = st.agg.as_mut() {
                let pairs = agg.pairs.len();
                agg.pairs.retain(|p| p.account != a);
                removed.sightings += (pairs - agg.pairs.len()) as u64;
            }
        }
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
                if let Some(a) = self.decide(d, day) {
                    self.enforce_account_cap(a);
                }
            }
        }
    }
}
