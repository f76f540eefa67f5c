//! Sign-ins published at once.
//!
//! State changes in event-time order: an event waits in the reorder buffer
//! until the watermark passes it, so in a real-time stream a new sign-in
//! would reach the published graph only after the allowed lateness. When
//! the caller publishes incrementally (`track_changes`), every buffered
//! sign-in is also kept here, and the published view merges it into the
//! device's and the account's lines at once. State itself is untouched:
//! when the event is released it is applied as always and leaves this
//! overlay, so the final graph is exactly that of event-time processing.
//!
//! The overlay is a function of the reorder buffer, never stored: a
//! restore rebuilds it from the buffer, and an erasure purge (which drops
//! buffered events and frees slots) drops the erased ids' entries and
//! registers again the buffered events about them that it keeps.
//!
//! An erasure waits in the buffer too, until the watermark reaches its
//! `ts`; while it waits, a sign-in it covers (its device or account, at
//! or before its `ts`) that arrives is not shown early: an event that
//! arrives after the request does not put the id back in view at once.
//! Event time still rules the state: released before the erasure (its
//! `ts` is earlier), the sign-in is applied and shows until the erasure's
//! own release removes it.
//!
//! A device stage also *previews* here the sign-ins it has read but not
//! taken yet: while it waits for the bucket stage (a day close) it takes
//! no input, and the sign-ins read meanwhile would wait with it. A preview
//! is counted apart from the buffered events, and it leaves when its
//! record is taken, whatever taking it did (buffered, applied late, or
//! dropped as erased). Previews are a function of the records read and not
//! taken: never stored either, and a purge that forgets a pair forgets its
//! previews (they come back when their records are taken).

use super::Engine;
use super::state::{Account, Device, LoginLink};
use crate::event::{Event, EventKind};
use crate::time::Millis;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

/// The buffered sign-ins of one device to one account.
#[derive(Clone, Copy, Debug)]
pub(super) struct EarlyLogin {
    /// Account slot.
    pub account: u32,
    /// Earliest buffered sign-in.
    pub first_seen: Millis,
    /// Latest buffered sign-in.
    pub last_seen: Millis,
    /// Buffered signed-in events, and previews.
    pub events: u32,
    /// Of `events`, the previews: sign-ins read and not taken yet.
    pub previews: u32,
    /// Where the link ranks in a capped account's view while it is only
    /// buffered: its first buffered sign-in's time, fixed, because later
    /// buffered sign-ins are not published (one that moved the view
    /// would leave the account's line behind the device's).
    pub ranked: Millis,
}

/// Buffered sign-ins, by device and by account.
#[derive(Debug, Default)]
pub(super) struct Early {
    /// By device slot, for the device's line.
    by_device: FxHashMap<u32, SmallVec<[EarlyLogin; 1]>>,
    /// Devices by account slot, for the account's line.
    by_account: FxHashMap<u32, SmallVec<[u32; 2]>>,
    /// Erasures in the reorder buffer, which keep the sign-ins they cover
    /// out of this overlay ([`covers`]). Few: privacy requests are rare,
    /// and each leaves with its release.
    erasures: Vec<Event>,
}

/// Whether erasure `erase` covers sign-in `ev`: it names the sign-in's
/// device or account, and the sign-in is not later than it.
pub(super) fn covers(erase: &Event, ev: &Event) -> bool {
    ev.ts <= erase.ts
        && ((erase.device.is_some() && erase.device == ev.device)
            || (erase.account.is_some() && erase.account == ev.account))
}

impl Early {
    /// Whether device slot `d` has buffered sign-ins (its slot must live).
    pub fn holds_device(&self, d: u32) -> bool {
        self.by_device.contains_key(&d)
    }

    /// Whether account slot `a` has buffered sign-ins.
    pub fn holds_account(&self, a: u32) -> bool {
        self.by_account.contains_key(&a)
    }

    /// Buffered sign-ins of device `d`.
    pub fn logins(&self, d: u32) -> &[EarlyLogin] {
        self.by_device.get(&d).map_or(&[], |v| v.as_slice())
    }

    /// How many devices have buffered sign-ins to account `a`.
    pub fn count_of(&self, a: u32) -> usize {
        self.by_account.get(&a).map_or(0, |v| v.len())
    }

    /// Devices with buffered sign-ins to account `a`, with the latest
    /// and the time the link ranks by.
    pub fn devices_of(&self, a: u32) -> Vec<(u32, Millis, Millis)> {
        let Some(ds) = self.by_account.get(&a) else {
            return Vec::new();
        };
        ds.iter()
            .filter_map(|&d| {
                self.logins(d)
                    .iter()
                    .find(|e| e.account == a)
                    .map(|e| (d, e.last_seen, e.ranked))
            })
            .collect()
    }

    fn add(&mut self, d: u32, a: u32, ts: Millis, preview: bool) {
        let v = self.by_device.entry(d).or_default();
        match v.iter_mut().find(|e| e.account == a) {
            Some(e) => {
                e.first_seen = e.first_seen.min(ts);
                e.last_seen = e.last_seen.max(ts);
                e.events = e.events.saturating_add(1);
                e.previews += u32::from(preview);
            }
            None => {
                v.push(EarlyLogin {
                    account: a,
                    first_seen: ts,
                    last_seen: ts,
                    events: 1,
                    previews: u32::from(preview),
                    ranked: ts,
                });
                let ds = self.by_account.entry(a).or_default();
                if !ds.contains(&d) {
                    ds.push(d);
                }
            }
        }
    }

    /// One buffered sign-in of `d` to `a` left the buffer (`preview`:
    /// one preview was taken). Returns whether the pair's entry is gone.
    fn remove_one(&mut self, d: u32, a: u32, preview: bool) -> bool {
        let Some(v) = self.by_device.get_mut(&d) else {
            return false;
        };
        let Some(i) = v.iter().position(|e| e.account == a) else {
            return false;
        };
        let e = &mut v[i];
        if preview {
            // A purge forgot it (and whatever was registered since is
            // not this preview's).
            if e.previews == 0 {
                return false;
            }
            e.previews -= 1;
        } else if e.events == e.previews {
            // A buffered event that was not registered (its ids awaited
            // a purge then): the entry holds previews only.
            return false;
        }
        e.events -= 1;
        if e.events > 0 {
            return false;
        }
        v.swap_remove(i);
        if v.is_empty() {
            self.by_device.remove(&d);
        }
        self.unlink(d, a);
        true
    }

    fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    /// Removes `d` from account `a`'s device list (and an empty list).
    fn unlink(&mut self, d: u32, a: u32) {
        if let Some(ds) = self.by_account.get_mut(&a) {
            ds.retain(|x| *x != d);
            if ds.is_empty() {
                self.by_account.remove(&a);
            }
        }
    }

    /// Drops the entry of `d` signing in to `a`.
    pub fn forget_pair(&mut self, d: u32, a: u32) {
        if let Some(v) = self.by_device.get_mut(&d) {
            v.retain(|e| e.account != a);
            if v.is_empty() {
                self.by_device.remove(&d);
            }
        }
        self.unlink(d, a);
    }

    /// Drops every entry of device `d`; returns the accounts they named.
    pub fn forget_device(&mut self, d: u32) -> Vec<u32> {
        let Some(v) = self.by_device.remove(&d) else {
            return Vec::new();
        };
        let accounts: Vec<u32> = v.iter().map(|e| e.account).collect();
        for &a in &accounts {
            self.unlink(d, a);
        }
        accounts
    }

    /// Drops every entry naming account `a`; returns the devices.
    pub fn forget_account(&mut self, a: u32) -> Vec<u32> {
        let devices: Vec<u32> = self
            .by_account
            .remove(&a)
            .map(Vec::from_iter)
            .unwrap_or_default();
        for &d in &devices {
            if let Some(v) = self.by_device.get_mut(&d) {
                v.retain(|e| e.account != a);
                if v.is_empty() {
                    self.by_device.remove(&d);
                }
            }
        }
        devices
    }
}

impl Engine {
    /// Keeps a sign-in that waits in the reorder buffer, so the next
    /// published changes show it (only when publishing incrementally).
    pub(super) fn register_early(&mut self, ev: &Event) {
        self.register_early_as(ev, false);
    }

    /// [`Engine::register_early`], for a buffered sign-in or a preview;
    /// returns whether it was registered.
    pub(super) fn register_early_as(&mut self, ev: &Event, preview: bool) -> bool {
        if self.changes.is_none() {
            return false;
        }
        if ev.kind.is_privacy() {
            if ev.kind == EventKind::Erase && !preview {
                self.early.erasures.push(ev.clone());
            }
            return false;
        }
        let (Some(device), Some(account)) = (&ev.device, &ev.account) else {
            return false;
        };
        if self.is_erased(ev) {
            return false;
        }
        let d = self.devices.find(device);
        let a = self.accounts.find(account);
        // An id whose slot waits to be freed by a purge gets nothing now;
        // the purge rebuilds this overlay from the buffer.
        if d.is_some_and(|d| self.pending.has_device(d))
            || a.is_some_and(|a| self.pending.has_erased_account(a))
        {
            return false;
        }
        let d = d.unwrap_or_else(|| self.devices.intern(device, Device::new).0);
        let a = a.unwrap_or_else(|| self.accounts.intern(account, Account::default).0);
        // Covered by a buffered erasure: the slots are taken as always (so
        // that the state is the same whichever arrived first), but the
        // sign-in stays out of view.
        if self.early.erasures.iter().any(|x| covers(x, ev)) {
            return false;
        }
        // Only a new link is published now; a known one's refreshed
        // counts go out when the event is applied, as before.
        let known = self.devices.get(d).is_some_and(|x| x.login(a).is_some())
            || self.early.logins(d).iter().any(|e| e.account == a);
        let inferred_was_shown = !self.inferred_hidden(d);
        self.early.add(d, a, ev.ts, preview);
        if !known {
            self.mark_device(d);
            self.mark_account(a);
        }
        if inferred_was_shown
            && self.inferred_hidden(d)
            && let Some(x) = self.devices.get(d).and_then(|x| x.inferred.as_ref())
        {
            // The inferred link disappears from view: its account's line
            // changes too.
            let x = x.account;
            self.mark_account(x);
        }
        true
    }

    /// A previewed sign-in's record was taken (or dropped): its preview
    /// leaves the overlay, and if that was the pair's last entry, the
    /// next published changes show what the state says.
    pub(super) fn unpreview(&mut self, ev: &Event) {
        let (Some(device), Some(account)) = (&ev.device, &ev.account) else {
            return;
        };
        let (Some(d), Some(a)) = (self.devices.find(device), self.accounts.find(account)) else {
            return;
        };
        if !self.early.remove_one(d, a, true) {
            return;
        }
        self.mark_device(d);
        self.mark_account(a);
        if let Some(x) = self.devices.get(d).and_then(|x| x.inferred.as_ref()) {
            // Its inferred link may be in view again.
            let x = x.account;
            self.mark_account(x);
        }
    }

    /// `ev` left the reorder buffer. Returns the pair whose entry it
    /// left: applying the event publishes the pair again anyway, and a
    /// dropped event's caller must (the link may be gone).
    pub(super) fn release_early(&mut self, ev: &Event) -> Option<(u32, u32)> {
        if ev.kind.is_privacy() {
            let erasures = &mut self.early.erasures;
            if let Some(i) = erasures.iter().position(|x| x == ev) {
                erasures.swap_remove(i);
            }
            return None;
        }
        if self.early.is_empty() {
            return None;
        }
        let (Some(device), Some(account)) = (&ev.device, &ev.account) else {
            return None;
        };
        let (Some(d), Some(a)) = (self.devices.find(device), self.accounts.find(account)) else {
            return None;
        };
        if !self.early.holds_device(d) {
            return None;
        }
        self.early.remove_one(d, a, false);
        Some((d, a))
    }

    /// Drops, before an erasure purge frees slots, the entries of the
    /// erased slots and of every pair a surviving buffered event names
    /// (all of that pair's buffered events survive with it: they name the
    /// same ids); the survivors are registered again after the frees. The
    /// next published changes re-render whatever lost an entry.
    pub(super) fn forget_early(&mut self, devices: &[u32], accounts: &[u32], survivors: &[Event]) {
        for ev in survivors {
            let (Some(device), Some(account)) = (&ev.device, &ev.account) else {
                continue;
            };
            if let (Some(d), Some(a)) = (self.devices.find(device), self.accounts.find(account)) {
                self.early.forget_pair(d, a);
                self.mark_device(d);
                self.mark_account(a);
            }
        }
        for &d in devices {
            for a in self.early.forget_device(d) {
                self.mark_account(a);
            }
        }
        for &a in accounts {
            for d in self.early.forget_account(a) {
                self.mark_device(d);
            }
        }
    }

    /// Rebuilds the overlay from the reorder buffer (after a restore).
    pub(super) fn rebuild_early(&mut self) {
        let old = std::mem::take(&mut self.early);
        for (d, v) in &old.by_device {
            self.mark_device(*d);
            for e in v {
                self.mark_account(e.account);
            }
        }
        if self.changes.is_none() {
            return;
        }
        // In arrival order, so that an erasure covers what arrived after
        // it, as it did before the restore.
        let mut buffered: Vec<(u64, Event)> = self
            .buffer
            .pending()
            .filter(|p| {
                let e = &p.event;
                e.kind == EventKind::Erase || (e.account.is_some() && !e.kind.is_privacy())
            })
            .map(|p| (p.seq, p.event.clone()))
            .collect();
        buffered.sort_unstable_by_key(|&(seq, _)| seq);
        for (_, ev) in &buffered {
            self.register_early(ev);
        }
    }

    /// Whether buffered sign-ins hide device `d`'s inferred link: a
    /// device about to be signed in gets none (unless configured
    /// otherwise), on both topics and in its accounts' cap.
    pub(super) fn inferred_hidden(&self, d: u32) -> bool {
        !self.p.infer_for_signed_in && !self.early.logins(d).is_empty()
    }

    /// Device `dev` (slot `d`) as published: its state with its buffered
    /// sign-ins merged in.
    pub(super) fn with_early(&self, d: u32, dev: &Device) -> Option<Device> {
        let early = self.early.logins(d);
        if early.is_empty() {
            return None;
        }
        let mut m = dev.clone();
        for e in early {
            match m.logins.binary_search_by_key(&e.account, |l| l.account) {
                Ok(i) => {
                    let l = &mut m.logins[i];
                    l.first_seen = l.first_seen.min(e.first_seen);
                    l.last_seen = l.last_seen.max(e.last_seen);
                    l.events = l.events.saturating_add(e.events);
                }
                Err(i) => m.logins.insert(
                    i,
                    LoginLink {
                        account: e.account,
                        first_seen: e.first_seen,
                        last_seen: e.last_seen,
                        events: e.events,
                    },
                ),
            }
        }
        if self.inferred_hidden(d) {
            m.inferred = None;
        }
        Some(m)
    }
}
