//! Per-device and per-account state, kept compact: ids are slot numbers,
//! times are event-time milliseconds, weights are fixed-point.

use crate::time::Millis;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use thin_vec::ThinVec;

/// Fixed-point scale of evidence weights: 1.0 is `WEIGHT_ONE`. Integers
/// make sums exact and independent of the order evidence arrived in.
pub const WEIGHT_ONE: u32 = 10_000;

/// A device's sign-in association with an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginLink {
    /// Account slot.
    pub account: u32,
    /// Earliest sign-in sighting (min is order-independent).
    pub first_seen: Millis,
    /// Latest sign-in sighting; drives expiry and eviction.
    pub last_seen: Millis,
    /// Signed-in events seen, for the explanation.
    pub events: u32,
}

/// The device's inferred link as last decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferredLink {
    /// Account slot.
    pub account: u32,
    /// Score of the account at decision time (fixed-point).
    pub score: u32,
    /// Share of the device's evidence the account held (fixed-point).
    pub share: u16,
    /// Confidence published (fixed-point, 4 decimals).
    pub confidence: u16,
    /// Distinct days of evidence.
    pub days: u16,
    /// Distinct buckets of evidence.
    pub buckets: u16,
    /// Distinct days of close use (co-location minutes apart).
    pub close_days: u16,
    /// Days the device was seen at all in the window coverage is
    /// measured over: `close_days / active_days` is the coverage.
    pub active_days: u16,
    /// UTC day the decision was made on; support is decayed to it.
    pub decided_day: i32,
    /// Earliest supporting co-location.
    pub first_seen: Millis,
    /// Latest supporting co-location.
    pub last_seen: Millis,
}

/// One bucket-day's co-location evidence between a device and an account.
///
/// Only a keyed hash of the bucket is kept: state never holds the raw
/// addresses evidence came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Evidence {
    /// Account slot, or [`super::intern::NONE`] for the anonymous total of
    /// removed (erased or opted-out) accounts.
    pub account: u32,
    /// UTC day of the co-location.
    pub day: i32,
    /// Keyed 64-bit tag of the bucket.
    pub bucket: u64,
    /// Weight (fixed-point), before decay.
    pub weight: u16,
    /// Smallest time gap that day, in seconds.
    pub gap_s: u16,
    /// Distinct devices on the bucket that day (saturating).
    pub bucket_devices: u8,
    /// Distinct signed-in accounts on the bucket that day (saturating).
    pub bucket_accounts: u8,
    /// When the closest co-location happened.
    pub at: Millis,
    /// The device was a phone, and the account was signed in on the
    /// bucket that day only on phones of the other platform: a
    /// housemate's phone, not the account owner's (see
    /// `linking.refuse_platform_clash`). Fits in the padding. Added in
    /// snapshot format 5.
    #[serde(deserialize_with = "crate::format::added_platform")]
    pub clash: bool,
}

/// Everything known about one device.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Device {
    /// Sign-in links, sorted by account slot. Nearly every signed-in
    /// device has exactly one, kept inline.
    pub logins: SmallVec<[LoginLink; 1]>,
    /// The inferred link, if the evidence supports one.
    pub inferred: Option<Box<InferredLink>>,
    /// Co-location evidence within the horizon, sorted. A thin vector:
    /// most devices have none, and an empty one is a single pointer.
    pub evidence: ThinVec<Evidence>,
    /// UTC day of the latest in-order sighting: the bot counters below
    /// and `active_days` refer to it, and idle eviction counts from it.
    pub bot_day: i32,
    /// Events on `bot_day` (saturating; `bots.max_events_per_day` is
    /// validated below its maximum).
    pub day_events: u16,
    /// Days, `bot_day` included, that the device still counts as a bot:
    /// through `bot_day + bot_days - 1` (0: not a bot). Relative to
    /// `bot_day` so that it shares a word with `day_events`.
    pub bot_days: u16,
    /// A 64-bit linear-counting sketch of the buckets seen on `bot_day`:
    /// its population count estimates distinct addresses in 8 bytes.
    pub day_buckets: u64,
    /// Hours of `bot_day` with activity, one bit each: people sleep,
    /// crawlers do not.
    pub day_hours: u32,
    /// Days with an in-order sighting, one bit each, bit `i` for day
    /// `bot_day - i`: the days an inferred link's coverage is measured
    /// against (the last [`ACTIVE_DAYS`] of them).
    pub active_days: u32,
}

/// How many days back `Device::active_days` remembers.
pub const ACTIVE_DAYS: i32 = 32;

impl Device {
    /// A fresh device.
    pub fn new() -> Self {
        Device {
            bot_day: i32::MIN,
            ..Default::default()
        }
    }

    /// Last UTC day the device counts as a bot (`i32::MIN` if none).
    pub fn bot_until(&self) -> i32 {
        match self.bot_days {
            0 => i32::MIN,
            n => self.bot_day.saturating_add(i32::from(n) - 1),
        }
    }

    /// Whether the device counts as a bot on `day`.
    pub fn is_bot(&self, day: i32) -> bool {
        self.bot_until() >= day
    }

    /// Marks the device a bot through `until` (at least `bot_day`).
    pub fn mark_bot(&mut self, until: i32) {
        let days = i64::from(until) - i64::from(self.bot_day) + 1;
        self.bot_days = days.clamp(1, i64::from(u16::MAX)) as u16;
    }

    /// Moves the per-day counters to `day`, a later day than `bot_day`:
    /// the day's counters start afresh, the bot mark keeps its last day,
    /// and `active_days` shifts to count from `day`.
    pub fn start_day(&mut self, day: i32) {
        let until = self.bot_until();
        let shift = i64::from(day) - i64::from(self.bot_day);
        self.active_days = match u32::try_from(shift) {
            Ok(s) if s < ACTIVE_DAYS as u32 => self.active_days << s,
            _ => 0,
        };
        self.bot_day = day;
        self.bot_days = 0;
        if until >= day {
            self.mark_bot(until);
        }
        self.day_events = 0;
        self.day_buckets = 0;
        self.day_hours = 0;
    }

    /// Notes an in-order sighting on `day` (`bot_day` or one of the
    /// days before it that `active_days` remembers).
    pub fn mark_active(&mut self, day: i32) {
        if let Ok(back) = u32::try_from(i64::from(self.bot_day) - i64::from(day))
            && back < ACTIVE_DAYS as u32
        {
            self.active_days |= 1 << back;
        }
    }

    /// Days with an in-order sighting among the `window` days that end
    /// with `day` (at most [`ACTIVE_DAYS`] are remembered).
    pub fn active_days_to(&self, day: i32, window: i32) -> u32 {
        let window = window.clamp(0, ACTIVE_DAYS);
        // Bit i is day bot_day - i; the window is days day-window+1..=day.
        let lo = i64::from(self.bot_day) - i64::from(day);
        let hi = lo + i64::from(window) - 1;
        let (lo, hi) = (lo.max(0), hi.min(i64::from(ACTIVE_DAYS) - 1));
        if lo > hi {
            return 0;
        }
        let bits = hi - lo + 1;
        let mask = if bits >= 32 {
            u32::MAX
        } else {
            (1u32 << bits) - 1
        };
        ((self.active_days >> lo) & mask).count_ones()
    }

    /// Whether the device has nothing worth keeping.
    pub fn is_empty(&self) -> bool {
        self.logins.is_empty() && self.inferred.is_none() && self.evidence.is_empty()
    }

    /// The sign-in link to `account`, if any.
    pub fn login(&self, account: u32) -> Option<&LoginLink> {
        self.logins.iter().find(|l| l.account == account)
    }
}

/// Everything known about one account.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    /// Devices linked to it (sign-in or inferred), for the account view.
    pub devices: IdList,
    /// Devices holding evidence for it, so opt-out and erase reach them
    /// without a scan of all devices. Thin: most accounts have none.
    pub evidence_devices: ThinVec<u32>,
    /// Whether the account opted out of inferred links.
    pub opted_out: bool,
    /// UTC day of its latest signed-in sighting on an address bucket.
    /// Bucket windows and the open day's aggregate refer to its slot
    /// until that day is closed and its windows have passed, so an empty
    /// account is freed only at a later day's close: a slot reused sooner
    /// would hand its sightings to another account.
    pub seen_day: i32,
}

impl Account {
    /// Whether the account has nothing worth keeping.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.evidence_devices.is_empty() && !self.opted_out
    }
}

/// A short list of slots: most accounts have one or two devices, kept
/// inline.
pub type IdList = SmallVec<[u32; 2]>;

/// The small unordered slot lists the engine keeps.
pub trait SlotList: std::ops::Deref<Target = [u32]> {
    /// Removes the element at `i`, moving the last one there.
    fn swap_remove_at(&mut self, i: usize);
    /// Appends `x`.
    fn push_slot(&mut self, x: u32);
}

impl SlotList for IdList {
    fn swap_remove_at(&mut self, i: usize) {
        self.swap_remove(i);
    }
    fn push_slot(&mut self, x: u32) {
        self.push(x);
    }
}

impl SlotList for ThinVec<u32> {
    fn swap_remove_at(&mut self, i: usize) {
        self.swap_remove(i);
    }
    fn push_slot(&mut self, x: u32) {
        self.push(x);
    }
}

/// Removes one value from an unordered small list.
pub fn remove_value(v: &mut impl SlotList, x: u32) -> bool {
    match v.iter().position(|&y| y == x) {
        Some(p) => {
            v.swap_remove_at(p);
            true
        }
        None => false,
    }
}

/// Adds a value to an unordered small list if absent.
pub fn add_value(v: &mut impl SlotList, x: u32) {
    if !v.contains(&x) {
        v.push_slot(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_days_shift_with_the_day_and_count_a_window() {
        let mut d = Device::new();
        for day in [100, 101, 103, 110] {
            d.start_day(day);
            d.mark_active(day);
        }
        // Bits for 110, 103, 101, 100.
        assert_eq!(d.active_days_to(110, 32), 4);
        assert_eq!(d.active_days_to(110, 10), 3);
        assert_eq!(d.active_days_to(103, 4), 3);
        assert_eq!(d.active_days_to(102, 2), 1);
        assert_eq!(d.active_days_to(120, 10), 0);
        // An earlier day still remembered is marked in place.
        d.mark_active(105);
        assert_eq!(d.active_days_to(110, 6), 2);
        // Past 32 days, everything earlier is forgotten.
        d.start_day(142);
        d.mark_active(142);
        assert_eq!(d.active_days_to(142, 32), 1);
        d.start_day(200);
        assert_eq!(d.active_days, 0);
    }

    #[test]
    fn a_bot_mark_keeps_its_last_day_across_days() {
        let mut d = Device::new();
        assert!(!d.is_bot(0));
        d.start_day(10);
        d.mark_bot(40);
        assert_eq!(d.bot_until(), 40);
        d.start_day(25);
        assert!(d.is_bot(25) && d.is_bot(40) && !d.is_bot(41));
        assert_eq!(d.bot_until(), 40);
        d.start_day(41);
        assert_eq!(d.bot_until(), i32::MIN);
        assert!(!d.is_bot(41));
    }
}
