//! The engine's graph as published lines: one device's or account's line
//! for a change, and every line in id order for replay's files.
//!
//! The bulk writers visit the slots in id order, which is no memory
//! order, and each line follows a chain of dependent loads (a device's
//! slot, then its accounts' slots, then their ids' text). So they start
//! loading each link of the chain a few lines ahead, and render every
//! line into one reused buffer rather than a `String` of its own.

use super::Engine;
use super::cap::Shown;
use super::intern::{Prefetch, WALK_TEXT_AHEAD};
use crate::output::{self, AccountEntry, DeviceArgs};

/// Bytes gathered before the bulk writers hand them to their sink.
const CHUNK: usize = 1 << 16;

/// How many lines ahead a line's linked slots' ids start loading. A
/// device line's chain of loads: its slot, then its id's text and its
/// sign-in accounts' slots (inline in the device's slot; both
/// [`WALK_TEXT_AHEAD`] lines ahead), then those accounts' ids. An account
/// line's: its slot, then its id and its devices' slots, then their ids.
const LINKED_TEXT_AHEAD: usize = 2;

/// Linked slots prefetched per line: nearly every device has one sign-in
/// account, and nearly every account one or two devices.
const LINKED_PREFETCHED: usize = 2;

impl Engine {
    /// Every device line, sorted by device id.
    pub fn device_lines(&self) -> impl Iterator<Item = String> + '_ {
        let mut shown = Shown::default();
        let order = self.linked_devices_sorted();
        (0..order.len()).filter_map(move |k| {
            self.prefetch_device_lines(&order, k);
            self.render_device(order[k], &mut shown)
        })
    }

    /// Every account line, sorted by account id.
    pub fn account_lines(&self) -> impl Iterator<Item = String> + '_ {
        let mut shown = Shown::default();
        let order = self.linked_accounts_sorted();
        (0..order.len()).filter_map(move |k| {
            self.prefetch_account_lines(&order, k);
            self.render_account(order[k], &mut shown)
        })
    }

    /// Writes every device line, sorted by device id, each ended by a
    /// newline (replay's `device-links.jsonl`), handing `sink` whole lines
    /// some 64 KiB at a time. Returns the number of lines; stops at the
    /// first error of `sink`.
    pub fn write_device_lines<E>(
        &self,
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut shown = Shown::default();
        let order = self.linked_devices_sorted();
        write_lines(order.len(), sink, |k, out| {
            self.prefetch_device_lines(&order, k);
            self.device_args(order[k], &mut shown, |args| {
                output::write_device_line(out, args)
            })
            .unwrap_or(false)
        })
    }

    /// Writes every account line, sorted by account id (replay's
    /// `account-devices.jsonl`), as [`Engine::write_device_lines`] does.
    pub fn write_account_lines<E>(
        &self,
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut shown = Shown::default();
        let order = self.linked_accounts_sorted();
        write_lines(order.len(), sink, |k, out| {
            self.prefetch_account_lines(&order, k);
            let a = order[k];
            let entries = self.shown_entries(a, &mut shown);
            output::write_account_line(out, self.accounts.id(a), &entries)
        })
    }

    /// The `device-links` line of one device, if it has links.
    pub fn device_line(&self, device_id: &str) -> Option<String> {
        self.render_device(self.devices.find(device_id)?, &mut Shown::default())
    }

    /// The `account-devices` line of one account, if it has devices.
    pub fn account_line(&self, account_id: &str) -> Option<String> {
        self.render_account(self.accounts.find(account_id)?, &mut Shown::default())
    }

    pub(super) fn render_device(&self, d: u32, shown: &mut Shown) -> Option<String> {
        self.device_args(d, shown, output::device_line).flatten()
    }

    pub(super) fn render_account(&self, a: u32, shown: &mut Shown) -> Option<String> {
        output::account_line(self.accounts.id(a), &self.shown_entries(a, shown))
    }

    /// The devices that may have a line, sorted by id: those with a link
    /// in state or a buffered sign-in. Half the devices held at the end
    /// of a replay have neither (seen, never linked), and sorting them
    /// was half the sort.
    fn linked_devices_sorted(&self) -> Vec<u32> {
        self.devices.sorted_where(|d, dev| {
            !dev.logins.is_empty() || dev.inferred.is_some() || self.early.holds_device(d)
        })
    }

    /// The accounts that may have a line (a device linked in state or by
    /// a buffered sign-in), sorted by id.
    fn linked_accounts_sorted(&self) -> Vec<u32> {
        self.accounts
            .sorted_where(|a, acc| !acc.devices.is_empty() || self.early.holds_account(a))
    }

    /// Calls `f` with what device `d`'s line is made of (its state with
    /// its buffered sign-ins merged in), if `d` is held.
    fn device_args<R>(
        &self,
        d: u32,
        shown: &mut Shown,
        f: impl FnOnce(DeviceArgs<'_, '_>) -> R,
    ) -> Option<R> {
        let dev = self.devices.get(d)?;
        let merged = self.with_early(d, dev);
        Some(f(DeviceArgs {
            id: self.devices.id(d),
            dev: merged.as_ref().unwrap_or(dev),
            accounts: &self.accounts,
            shown: &mut |a| self.shows(a, d, shown),
            horizon_days: self.p.horizon_days,
            max_support: self.p.max_support,
        }))
    }

    /// The entries account `a` shows under its device cap.
    fn shown_entries(&self, a: u32, shown: &mut Shown) -> Vec<AccountEntry> {
        let mut entries = self.account_entries(a);
        entries.retain(|&(d, _)| self.shows(a, d, shown));
        entries.into_iter().map(|e| e.1).collect()
    }

    /// Before rendering device `order[k]`: starts the loads of the lines
    /// a few places further on.
    fn prefetch_device_lines(&self, order: &[u32], k: usize) {
        self.devices.prefetch_walk(order, k);
        let accounts_of = |ahead: usize, stage: Prefetch| {
            let dev = order.get(k + ahead).and_then(|&d| self.devices.get(d));
            for l in dev
                .iter()
                .flat_map(|d| d.logins.iter())
                .take(LINKED_PREFETCHED)
            {
                self.accounts.prefetch_slot(l.account, stage);
            }
        };
        accounts_of(WALK_TEXT_AHEAD, Prefetch::Slot);
        accounts_of(LINKED_TEXT_AHEAD, Prefetch::Text);
    }

    /// Before rendering account `order[k]`: as
    /// [`Engine::prefetch_device_lines`], through the account's devices.
    fn prefetch_account_lines(&self, order: &[u32], k: usize) {
        self.accounts.prefetch_walk(order, k);
        let devices_of = |ahead: usize, stage: Prefetch| {
            let acc = order.get(k + ahead).and_then(|&a| self.accounts.get(a));
            for &d in acc
                .iter()
                .flat_map(|a| a.devices.iter())
                .take(LINKED_PREFETCHED)
            {
                self.devices.prefetch_slot(d, stage);
            }
        };
        devices_of(WALK_TEXT_AHEAD, Prefetch::Slot);
        devices_of(LINKED_TEXT_AHEAD, Prefetch::Text);
    }
}

/// Renders lines `0..n` with `render` (which appends line `k` to the
/// buffer, or nothing and false) and hands them to `sink` in chunks of
/// whole lines. Returns the number of lines.
fn write_lines<E>(
    n: usize,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    mut render: impl FnMut(usize, &mut Vec<u8>) -> bool,
) -> Result<u64, E> {
    let mut buf = Vec::with_capacity(CHUNK + CHUNK / 4);
    let mut lines = 0;
    for k in 0..n {
        if render(k, &mut buf) {
            buf.push(b'\n');
            lines += 1;
        }
        if buf.len() >= CHUNK {
            sink(&buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        sink(&buf)?;
    }
    Ok(lines)
}
