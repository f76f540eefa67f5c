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
use crate::output::{self, AccountEntry};
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
    pub(super) fn over_cap(&self, a: u32) -> bool {
        self.linked_devices(a) > self.p.max_devices_per_account
    }

    /// Whether account `a` shows device `d`. A device stage is told by
    /// the account stage, which sees all of the account's devices.
    pub(super) fn shows(&self, a: u32, d: u32, memo: &mut Shown) -> bool {
        if let Some(stage) = self.stage.as_deref() {
            return stage.shows(&self.accounts.id(a).text(), &self.devices.id(d).text());
        }
        if !self.over_cap(a) {
            return true;
        }
        memo.by_account
            .entry(a)
            .or_insert_with(|| self.shown_devices(a))
            .contains(&d)
    }

    /// The entries of account `a`'s line for the devices held here, linked
    /// in state or by a buffered sign-in, with their slots.
    pub(super) fn account_entries(&self, a: u32) -> Vec<(u32, AccountEntry)> {
        let Some(acc) = self.accounts.get(a) else {
            return Vec::new();
        };
        let early = self.early.devices_of(a);
        let mut slots: Vec<u32> = acc.devices.iter().copied().collect();
        slots.extend(early.iter().map(|e| e.0));
        slots.sort_unstable();
        slots.dedup();
        slots
            .into_iter()
            .filter_map(|d| {
                let dev = self.devices.get(d)?;
                let buffered = early.iter().find(|e| e.0 == d).map(|e| (e.1, e.2));
                let entry = output::account_entry(
                    a,
                    self.devices.id(d),
                    dev,
                    buffered,
                    self.inferred_hidden(d),
                )?;
                Some((d, entry))
            })
            .collect()
    }

    /// The devices an over-cap account shows.
    fn shown_devices(&self, a: u32) -> FxHashSet<u32> {
        let (slots, entries): (Vec<u32>, Vec<AccountEntry>) =
            self.account_entries(a).into_iter().unzip();
        output::shown_entries(&entries, self.p.max_devices_per_account)
            .into_iter()
            .map(|i| slots[i])
            .collect()
    }

    /// Devices whose shown links may change when account `a` changes:
    /// all of them once the account is at its cap (a device entering or
    /// leaving moves the boundary) or was over it when last published
    /// (`was_capped`: the devices it hid come back), none otherwise.
    pub(super) fn cap_followers(&self, a: u32, was_capped: bool) -> Vec<u32> {
        let Some(acc) = self.accounts.get(a) else {
            return Vec::new();
        };
        if !was_capped && self.linked_devices(a) < self.p.max_devices_per_account {
            return Vec::new();
        }
        let mut ds: Vec<u32> = acc.devices.iter().copied().collect();
        ds.extend(self.early.devices_of(a).into_iter().map(|e| e.0));
        ds
    }
}
