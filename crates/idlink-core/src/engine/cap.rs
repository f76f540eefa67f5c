//! The device cap of an account, as a view.
//!
//! An account shows at most `max_devices_per_account` devices, on both
//! output topics: its sign-in devices first, most recently used first,
//! then its inferred devices, strongest first (ties: the device id). A
//! link past the cap stays in state and is published on neither topic;
//! it comes back into view when a shown device leaves or falls behind.
//!
//! The cap is a view, not an eviction, so that it is a function of the
//! account's links alone and feeds nothing back into decisions: the
//! device still counts as signed in (no inferred link) and keeps its
//! evidence. That is what lets an account stage apply it on its own
//! partition (ARCHITECTURE.md, "Partitioned scale-out"). The links a
//! capped account can accumulate are bounded per device by
//! `max_accounts_per_device` and by the sign-in lifetime.

use super::Engine;
use super::state::WEIGHT_ONE;
use crate::time::Millis;
use rustc_hash::{FxHashMap, FxHashSet};

/// The devices shown by accounts over their cap, computed at most once
/// per account in one rendering pass.
#[derive(Debug, Default)]
pub(super) struct Shown {
    /// Account slot → the device slots it shows.
    by_account: FxHashMap<u32, FxHashSet<u32>>,
}

impl Engine {
    /// How many devices account `a` is linked to, buffered sign-ins
    /// included (a device both linked and buffered counts twice: an upper
    /// bound, which is all the cap checks need).
    fn linked_devices(&self, a: u32) -> usize {
        self.accounts
            .get(a)
            .map_or(0, |acc| acc.devices.len() + self.early.count_of(a))
    }

    /// Whether account `a` may have more devices than it may show.
    fn over_cap(&self, a: u32) -> bool {
        self.linked_devices(a) > self.p.max_devices_per_account
    }

    /// Whether account `a` shows device `d`.
    pub(super) fn shows(&self, a: u32, d: u32, memo: &mut Shown) -> bool {
        if !self.over_cap(a) {
            return true;
        }
        memo.by_account
            .entry(a)
            .or_insert_with(|| self.shown_devices(a))
            .contains(&d)
    }

    /// The devices an over-cap account shows.
    fn shown_devices(&self, a: u32) -> FxHashSet<u32> {
        let Some(acc) = self.accounts.get(a) else {
            return FxHashSet::default();
        };
        let early = self.early.devices_of(a);
        let mut slots: Vec<u32> = acc.devices.iter().copied().collect();
        slots.extend(early.iter().map(|e| e.0));
        slots.sort_unstable();
        slots.dedup();
        // (sign-in, confidence, last seen), greatest first; then the id. A
        // sign-in link ranks by its state; a buffered sign-in only when it
        // is a new link. A buffered refresh of a known link publishes
        // nothing until it is applied (`early.rs`), so letting it move the
        // boundary would change a view that nobody is told about.
        let mut ranked: Vec<((bool, u32, Millis), &str, u32)> = slots
            .into_iter()
            .filter_map(|d| {
                let dev = self.devices.get(d)?;
                let buffered = early.iter().find(|e| e.0 == d).map(|e| e.1);
                let key = match dev.login(a).map(|l| l.last_seen).or(buffered) {
                    Some(last) => (true, WEIGHT_ONE, last),
                    None if self.inferred_hidden(d) => return None,
                    None => {
                        let i = dev.inferred.as_ref().filter(|i| i.account == a)?;
                        (false, i.confidence, i.last_seen)
                    }
                };
                Some((key, self.devices.id(d), d))
            })
            .collect();
        ranked.sort_unstable_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(y.1)));
        ranked
            .into_iter()
            .take(self.p.max_devices_per_account)
            .map(|r| r.2)
            .collect()
    }

    /// Devices whose shown links may change when account `a` changes:
    /// all of them once the account is at its cap (a device entering or
    /// leaving moves the boundary), none below it.
    pub(super) fn cap_followers(&self, a: u32) -> Vec<u32> {
        let Some(acc) = self.accounts.get(a) else {
            return Vec::new();
        };
        if self.linked_devices(a) < self.p.max_devices_per_account {
            return Vec::new();
        }
        let mut ds: Vec<u32> = acc.devices.iter().copied().collect();
        ds.extend(self.early.devices_of(a).into_iter().map(|e| e.0));
        ds
    }
}
