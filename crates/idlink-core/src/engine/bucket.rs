//! Address buckets: the sightings within the co-location window, and the
//! day's aggregate that becomes evidence once the day is complete.

use super::intern::NONE;
use super::slot_index::{SlotIndex, prefetch_all};
use crate::addr::Bucket;
use crate::agent::Platform;
use crate::time::{DAY_MS, Millis};
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::hash::BuildHasher;
use thin_vec::ThinVec;

/// Largest number of sightings a bucket keeps for its window; only a
/// crowded bucket (which counts for nothing) could exceed it.
const MAX_RECENT: usize = 256;

/// A released sighting, kept for the window so later sightings can pair
/// with it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Sighting {
    /// When.
    pub ts: Millis,
    /// Device slot.
    pub device: u32,
    /// Signed-in account slot, or `NONE`.
    pub account: u32,
}

/// A co-location found on a bucket-day: an unsigned sighting of `device`
/// within the window of a signed-in sighting of `account`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Pair {
    /// The unsigned device.
    pub device: u32,
    /// The signed-in account.
    pub account: u32,
    /// Smallest gap found that day, in milliseconds (at most the window,
    /// which is at most a day).
    gap_ms: u32,
    /// When the closest pair happened (the later sighting), as
    /// milliseconds into the bucket's UTC day: 16 bytes a pair, not 24.
    at_in_day: u32,
}

impl Pair {
    /// Smallest gap found that day, in milliseconds.
    pub fn gap_ms(&self) -> i64 {
        i64::from(self.gap_ms)
    }

    /// When the closest pair happened, given the bucket's UTC day.
    pub fn at(&self, day: i32) -> Millis {
        Millis(i64::from(day) * DAY_MS + i64::from(self.at_in_day))
    }
}

/// What one bucket saw on one UTC day. Decided only when the day is
/// complete, so crowding seen at 18:00 also voids the morning's pairs.
///
/// Most buckets are homes with a handful of devices and one or two
/// accounts, so the id lists are inline up to that size: a bucket costs
/// one allocation, not five.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DayAgg {
    /// Too many devices or accounts: the day counts for nothing.
    pub crowded: bool,
    /// Distinct device slots seen.
    devices: SmallVec<[u32; 4]>,
    /// Bit `i` set: `devices[i]` was seen signed in here today, so it is
    /// no candidate here. Fits because the config caps the devices a
    /// bucket-day may hold at 32.
    signed: u32,
    /// What the day's sightings said about each device, beyond being
    /// signed in here.
    facts: Facts,
    /// Distinct signed-in account slots seen.
    accounts: SmallVec<[u32; 2]>,
    /// Erased devices that were here, counted without their ids so their
    /// removal never makes the bucket look more exclusive (saturating;
    /// formats before 5 wrote a `u32`, the same varint).
    #[serde(deserialize_with = "count16")]
    pub anon_devices: u16,
    /// Erased accounts that were here, likewise.
    #[serde(deserialize_with = "count16")]
    pub anon_accounts: u16,
    /// Co-locations found, one per (device, account). Thin: most
    /// buckets have none.
    pub pairs: ThinVec<Pair>,
    /// The phone platforms each signed-in account was seen on here
    /// today, two bits (iPhone, Android) per position in `accounts`; the
    /// accounts past the eighth say nothing (three make a day crowded by
    /// default). With the devices' platforms in `facts`, a pair's platform
    /// clash is decided from the whole day, whatever order its sightings
    /// came in. Sixteen bits, like the anonymous counts and the platform
    /// masks, so that the day still takes the 80 bytes it took before.
    /// Added in snapshot format 5.
    #[serde(deserialize_with = "crate::format::added_platform")]
    account_phones: u16,
}

/// Reads a count that formats before 5 wrote as a `u32` (postcard writes
/// the same varint for both), saturating.
fn count16<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    Ok(u32::deserialize(d)?.min(u32::from(u16::MAX)) as u16)
}

/// Per-device facts of a bucket-day, one bit per index into its device
/// list. Carried with the sightings, so the day is decided from what the
/// bucket saw, never by reading device state at the close: a bucket stage
/// of its own (ARCHITECTURE.md, "Partitioned scale-out") decides it the
/// same way.
///
/// Stored as one integer, the bot bits lowest, then the linked, iPhone
/// and Android bits: format 3 stored the bot mask alone as a `u32` and
/// format 4 the first two as a `u64`, and postcard reads either varint as
/// the same `u128` with the later masks empty, so their snapshots restore
/// unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Facts {
    /// Bit `i` set: the device behaved like a bot when it was seen here.
    bots: u32,
    /// Bit `i` set: the device held a sign-in link (to any account) when
    /// it was seen here, so its owner is known: it is no unexplained
    /// regular of the bucket.
    linked: u32,
    /// Bit `i` set: the device's user agent named an iPhone at one of its
    /// sightings here. The devices past the sixteenth say nothing (ten
    /// make a day crowded by default).
    ios: u16,
    /// Bit `i` set: likewise, an Android device.
    android: u16,
}

impl Facts {
    /// The platform of the device at position `i`: the one its sightings
    /// here named, unknown if none or both.
    fn platform(&self, i: usize) -> Platform {
        let (ios, android) = (u32::from(self.ios), u32::from(self.android));
        Platform::from_bits(u32::from(bit(ios, i)) | u32::from(bit(android, i)) << 1)
    }
}

impl Serialize for Facts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let masks = [
            self.bots,
            self.linked,
            u32::from(self.ios),
            u32::from(self.android),
        ];
        let v = masks
            .iter()
            .enumerate()
            .fold(0u128, |v, (i, &m)| v | (u128::from(m) << (32 * i)));
        s.serialize_u128(v)
    }
}

impl<'de> Deserialize<'de> for Facts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u128::deserialize(d)?;
        let mask = |i: u32| (v >> (32 * i)) as u32;
        Ok(Facts {
            bots: mask(0),
            linked: mask(1),
            ios: mask(2) as u16,
            android: mask(3) as u16,
        })
    }
}

/// State of one bucket.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BucketState {
    /// The latest sighting of each (device, account) within the window,
    /// oldest first. Only the latest matters: sightings are applied in
    /// `ts` order, so it gives every later sighting its smallest gap.
    pub recent: SmallVec<[Sighting; 2]>,
    /// Day the aggregate belongs to.
    pub day: i32,
    /// Today's aggregate, while the day is open.
    pub agg: Option<DayAgg>,
}

impl BucketState {
    /// Forgets sightings before `from` (ms).
    pub fn prune(&mut self, from: i64) {
        let old = self.recent.iter().take_while(|r| r.ts.0 < from).count();
        if old > 0 {
            self.recent.drain(..old);
        }
    }

    /// Remembers a sighting as the latest of its (device, account).
    pub fn remember(&mut self, s: Sighting) {
        if let Some(i) = self
            .recent
            .iter()
            .position(|r| r.device == s.device && r.account == s.account)
        {
            self.recent.remove(i);
        }
        if self.recent.len() >= MAX_RECENT {
            self.recent.remove(0);
        }
        self.recent.push(s);
    }
}

impl DayAgg {
    /// Records a sighting of `device` (signed in to `account`, or
    /// `NONE`; a bot at the time if `bot`; holding a sign-in link at the
    /// time if `linked`; on a phone of `platform`); returns false if the
    /// day is (now) crowded.
    pub fn see(
        &mut self,
        device: u32,
        account: u32,
        (bot, linked, platform): (bool, bool, Platform),
        max_devices: usize,
        max_accounts: usize,
    ) -> bool {
        if self.crowded {
            return false;
        }
        let at = match self.devices.iter().position(|&d| d == device) {
            Some(i) => i,
            None => {
                self.devices.push(device);
                self.devices.len() - 1
            }
        };
        if account != NONE {
            let i = match self.accounts.iter().position(|&a| a == account) {
                Some(i) => i,
                None => {
                    self.accounts.push(account);
                    self.accounts.len() - 1
                }
            };
            self.signed |= only_bit(at);
            self.account_phones |= place(i, platform.bits());
        }
        match platform {
            Platform::Ios => self.facts.ios |= low16(only_bit(at)),
            Platform::Android => self.facts.android |= low16(only_bit(at)),
            Platform::Unknown => {}
        }
        if bot {
            self.facts.bots |= only_bit(at);
        }
        if linked {
            self.facts.linked |= only_bit(at);
        }
        if self.devices.len() + self.anon_devices as usize > max_devices
            || self.accounts.len() + self.anon_accounts as usize > max_accounts
        {
            self.crowd();
            return false;
        }
        true
    }

    /// Distinct device slots seen.
    pub fn devices(&self) -> &[u32] {
        &self.devices
    }

    /// Distinct signed-in account slots seen.
    pub fn accounts(&self) -> &[u32] {
        &self.accounts
    }

    /// Whether `device` was seen signed in here today.
    pub fn is_signed(&self, device: u32) -> bool {
        self.flag(self.signed, device)
    }

    /// Whether `device` behaved like a bot when it was seen here today.
    pub fn is_bot(&self, device: u32) -> bool {
        self.flag(self.facts.bots, device)
    }

    /// Whether `device` is a phone and `account` was signed in here today
    /// only on phones of the other platform. Read from the whole day, so
    /// the answer does not depend on the order its sightings came in.
    pub fn platform_clash(&self, device: u32, account: u32) -> bool {
        let Some(d) = self.devices.iter().position(|&x| x == device) else {
            return false;
        };
        let Some(a) = self.accounts.iter().position(|&x| x == account) else {
            return false;
        };
        self.facts
            .platform(d)
            .clashes_with(pair_at(self.account_phones, a))
    }

    /// Each device seen, and whether it is unexplained here: never
    /// signed in here today, no bot and no sign-in link at any of its
    /// sightings here. OR-ed over the day, so the answer does not depend
    /// on the order the day's sightings were applied in.
    pub fn unexplained(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        let explained = self.signed | self.facts.bots | self.facts.linked;
        self.devices
            .iter()
            .enumerate()
            .map(move |(i, &d)| (d, !bit(explained, i)))
    }

    fn flag(&self, mask: u32, device: u32) -> bool {
        self.devices
            .iter()
            .position(|&d| d == device)
            .is_some_and(|i| bit(mask, i))
    }

    /// Removes the devices `gone` names (erased), counting them as
    /// anonymous so the bucket never looks more exclusive than it was.
    pub fn forget_devices(&mut self, gone: impl Fn(u32) -> bool) {
        let (mut signed, mut facts) = (0u32, Facts::default());
        let moved = |mask: u32, i: usize, to: u32| if bit(mask, i) { to } else { 0 };
        let mut kept = 0u32;
        let mut removed = 0usize;
        for (i, &d) in self.devices.iter().enumerate() {
            if gone(d) {
                removed += 1;
                continue;
            }
            let to = only_bit(kept as usize);
            signed |= moved(self.signed, i, to);
            facts.bots |= moved(self.facts.bots, i, to);
            facts.linked |= moved(self.facts.linked, i, to);
            facts.ios |= low16(moved(u32::from(self.facts.ios), i, to));
            facts.android |= low16(moved(u32::from(self.facts.android), i, to));
            kept += 1;
        }
        if removed > 0 {
            self.devices.retain(|d| !gone(*d));
            self.signed = signed;
            self.facts = facts;
            self.anon_devices = self.anon_devices.saturating_add(count(removed));
        }
    }

    /// Removes the accounts `gone` names (erased), counting them as
    /// anonymous like [`DayAgg::forget_devices`].
    pub fn forget_accounts(&mut self, gone: impl Fn(u32) -> bool) {
        let mut phones = 0u16;
        let mut kept = 0usize;
        for (i, &a) in self.accounts.iter().enumerate() {
            if !gone(a) {
                phones |= place(kept, pair_at(self.account_phones, i));
                kept += 1;
            }
        }
        let removed = self.accounts.len() - kept;
        if removed > 0 {
            self.accounts.retain(|a| !gone(*a));
            self.account_phones = phones;
            self.anon_accounts = self.anon_accounts.saturating_add(count(removed));
        }
    }

    /// Marks the day crowded and frees everything it held.
    pub fn crowd(&mut self) {
        *self = DayAgg {
            crowded: true,
            ..Default::default()
        };
    }

    /// Records a co-location, keeping the smallest gap per pair. `at`
    /// lies in the bucket's day and `gap_ms` within the window.
    pub fn pair(&mut self, device: u32, account: u32, gap_ms: i64, at: Millis) {
        let gap_ms = gap_ms.clamp(0, i64::from(u32::MAX)) as u32;
        let at = at.0.rem_euclid(DAY_MS) as u32;
        if let Some(p) = self
            .pairs
            .iter_mut()
            .find(|p| p.device == device && p.account == account)
        {
            if gap_ms < p.gap_ms {
                p.gap_ms = gap_ms;
                p.at_in_day = at;
            }
            return;
        }
        self.pairs.push(Pair {
            device,
            account,
            gap_ms,
            at_in_day: at,
        });
    }
}

/// Bit `i` of `mask` (false past 31).
fn bit(mask: u32, i: usize) -> bool {
    mask.checked_shr(i as u32).unwrap_or(0) & 1 == 1
}

/// A mask with only bit `i` set (none past 31).
fn only_bit(i: usize) -> u32 {
    1u32.checked_shl(i as u32).unwrap_or(0)
}

/// A count as sixteen bits, saturating.
fn count(n: usize) -> u16 {
    n.min(usize::from(u16::MAX)) as u16
}

/// The low sixteen bits of a mask (positions past 15 drop out).
fn low16(mask: u32) -> u16 {
    (mask & 0xffff) as u16
}

/// Two bits placed at entry `i` of a two-bits-per-entry mask (nothing
/// past the eighth entry).
fn place(i: usize, bits: u32) -> u16 {
    if i < 8 {
        low16((bits & 3) << (2 * i))
    } else {
        0
    }
}

/// The two bits at entry `i` of a two-bits-per-entry mask.
fn pair_at(mask: u16, i: usize) -> u32 {
    if i < 8 {
        (u32::from(mask) >> (2 * i)) & 3
    } else {
        0
    }
}

/// An unsigned device a bucket has seen within the evidence horizon: its
/// slot, the day it was last seen there unsigned, and whether it was
/// unexplained then (no sign-in link, no bot). A bucket that many
/// unexplained devices share over weeks (a household member who never
/// signs in) is ambiguous even on a day only one of them shows up.
/// Like the day aggregate's flags, what is known about the device travels
/// with its sighting: deciding a bucket-day never reads device state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regular {
    /// Device slot.
    pub device: u32,
    /// Day last seen, shifted left once, with the unexplained flag in
    /// bit 0: 8 bytes an entry.
    day_unexplained: i32,
}

impl Regular {
    /// `device` seen unsigned on `day`, unexplained or not.
    pub fn new(device: u32, day: i32, unexplained: bool) -> Self {
        Regular {
            device,
            day_unexplained: (day << 1) | i32::from(unexplained),
        }
    }

    /// Day last seen.
    pub fn day(self) -> i32 {
        self.day_unexplained >> 1
    }

    /// Neither signed in anywhere nor a bot when last seen.
    pub fn unexplained(self) -> bool {
        self.day_unexplained & 1 == 1
    }
}

/// Bucket states in one vector, found through a compact index.
///
/// A map from bucket to boxed state would spend 24 bytes per table slot
/// (at 50 % load, 48 per bucket) plus an allocation header per state;
/// here a table slot is 4 bytes and the states sit back to back.
#[derive(Debug, Default)]
pub struct BucketTable {
    /// States by slot; `None` is a free slot.
    slots: Vec<Option<(Bucket, BucketState)>>,
    /// Index from bucket to slot, hashed through `slots`.
    index: SlotIndex,
    /// Free slots, reused before the vector grows.
    free: Vec<u32>,
}

fn hash_bucket(b: &Bucket) -> u64 {
    FxBuildHasher.hash_one(b)
}

impl BucketTable {
    fn key_hash(slots: &[Option<(Bucket, BucketState)>], i: u32) -> u64 {
        slots
            .get(i as usize)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| hash_bucket(&s.0))
    }

    /// The slot of `b`, created empty if new; and whether it was created.
    pub fn slot(&mut self, b: Bucket) -> (u32, bool) {
        let h = hash_bucket(&b);
        let slots = &self.slots;
        let found = self.index.find(h, |i| {
            slots
                .get(i as usize)
                .and_then(|s| s.as_ref())
                .is_some_and(|s| s.0 == b)
        });
        if let Some(i) = found {
            return (i, false);
        }
        let value = Some((b, BucketState::default()));
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = value;
                i
            }
            None => {
                self.slots.push(value);
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.index.insert(h, i, |j| Self::key_hash(slots, j));
        (i, true)
    }

    /// Asks the CPU to start loading what [`BucketTable::slot`] reads for
    /// `b`: its index positions (`first`), or, a few events later when
    /// those have arrived, its slot. Only a hint: it changes nothing.
    pub fn prefetch(&self, b: Bucket, first: bool) {
        let h = hash_bucket(&b);
        if first {
            self.index.prefetch(h);
        } else if let Some(s) = self.index.guess(h).and_then(|i| self.slots.get(i as usize)) {
            prefetch_all(s);
        }
    }

    /// The bucket and state in slot `i`.
    pub fn get(&self, i: u32) -> Option<(Bucket, &BucketState)> {
        self.slots
            .get(i as usize)
            .and_then(|s| s.as_ref())
            .map(|s| (s.0, &s.1))
    }

    /// The bucket and state in slot `i`, to change.
    pub fn get_mut(&mut self, i: u32) -> Option<(Bucket, &mut BucketState)> {
        self.slots
            .get_mut(i as usize)
            .and_then(|s| s.as_mut())
            .map(|s| (s.0, &mut s.1))
    }

    /// Frees slot `i`.
    pub fn remove(&mut self, i: u32) {
        let Some(Some((b, _))) = self.slots.get(i as usize) else {
            return;
        };
        let slots = &self.slots;
        self.index
            .remove(hash_bucket(b), i, |j| Self::key_hash(slots, j));
        self.slots[i as usize] = None;
        self.free.push(i);
    }

    /// Every live state.
    pub fn states_mut(&mut self) -> impl Iterator<Item = &mut BucketState> {
        self.slots.iter_mut().flatten().map(|s| &mut s.1)
    }

    /// Live buckets.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Serialize for BucketTable {
    /// The slots and the free list; the index is rebuilt on load.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.slots, &self.free).serialize(s)
    }
}

impl<'de> Deserialize<'de> for BucketTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (slots, free): (Vec<Option<(Bucket, BucketState)>>, Vec<u32>) =
            Deserialize::deserialize(d)?;
        Ok(BucketTable::from_parts(slots, free))
    }
}

impl BucketTable {
    /// A table of `slots` (with `free` listing the empty ones), its index
    /// rebuilt.
    pub fn from_parts(slots: Vec<Option<(Bucket, BucketState)>>, free: Vec<u32>) -> Self {
        let mut index = SlotIndex::with_capacity(slots.len());
        for (i, s) in slots.iter().enumerate() {
            if let Some((b, _)) = s {
                index.insert(hash_bucket(b), i as u32, |j| Self::key_hash(&slots, j));
            }
        }
        BucketTable { slots, index, free }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_masks_follow_devices_through_removal() {
        let mut agg = DayAgg::default();
        use Platform::{Android, Ios, Unknown};
        for (d, a, bot, linked, platform) in [
            (1, NONE, false, false, Ios),
            (2, 7, false, true, Ios),
            (3, NONE, true, false, Unknown),
            (4, 8, false, true, Android),
            (5, NONE, true, false, Android),
            (6, NONE, false, true, Unknown),
            (7, NONE, false, false, Android),
        ] {
            assert!(agg.see(d, a, (bot, linked, platform), 10, 3));
        }
        // Account 7 was signed in on an iPhone, 8 on an Android phone.
        assert!(agg.platform_clash(5, 7) && agg.platform_clash(7, 7));
        assert!(!agg.platform_clash(1, 7) && !agg.platform_clash(6, 7));
        assert!(agg.platform_clash(1, 8) && !agg.platform_clash(7, 8));
        assert!(agg.is_signed(2) && agg.is_signed(4));
        assert!(!agg.is_signed(1) && !agg.is_signed(3) && !agg.is_signed(5));
        assert!(agg.is_bot(3) && agg.is_bot(5) && !agg.is_bot(2));
        let unexplained = |agg: &DayAgg| -> Vec<u32> {
            agg.unexplained()
                .filter(|&(_, u)| u)
                .map(|(d, _)| d)
                .collect()
        };
        assert_eq!(unexplained(&agg), [1, 7]);
        // Removing devices before and between the flagged ones shifts
        // positions; the masks must follow.
        agg.forget_devices(|d| d == 1 || d == 3);
        assert_eq!(agg.devices(), &[2, 4, 5, 6, 7]);
        assert!(agg.is_signed(2) && agg.is_signed(4) && !agg.is_signed(5));
        assert!(agg.is_bot(5) && !agg.is_bot(2) && !agg.is_bot(4));
        assert_eq!(unexplained(&agg), [7]);
        assert_eq!(agg.anon_devices, 2);
        assert!(agg.platform_clash(5, 7) && agg.platform_clash(7, 7));
        assert!(!agg.platform_clash(6, 7) && !agg.platform_clash(7, 8));
        // Removing an account shifts the accounts' platforms likewise.
        agg.forget_accounts(|a| a == 7);
        assert_eq!((agg.accounts(), agg.anon_accounts), (&[8][..], 1));
        assert!(agg.platform_clash(2, 8) && !agg.platform_clash(7, 8));
        assert!(!agg.platform_clash(5, 7), "no account, no clash");
        // A device seen as both platforms names neither.
        assert!(agg.see(7, NONE, (false, false, Ios), 10, 3));
        assert!(!agg.platform_clash(7, 8));
        // A later sighting as a bot flags the device for the day.
        assert!(agg.see(2, NONE, (true, false, Unknown), 10, 3));
        assert!(agg.is_bot(2) && agg.is_signed(2));
        // Crowding counts the erased devices too.
        assert!(
            agg.see(8, NONE, (false, false, Unknown), 8, 3),
            "2 anonymous + 6 named = 8"
        );
        assert!(
            !agg.see(9, NONE, (false, false, Unknown), 8, 3),
            "2 anonymous + 7 named > 8"
        );
        assert!(agg.crowded);
    }

    #[test]
    fn a_bucket_keeps_its_size() {
        // Every live bucket has one; at a million devices there are
        // hundreds of thousands, and 8 bytes more each is 3 bytes a
        // device (the bench's memory target is 300).
        assert_eq!(std::mem::size_of::<DayAgg>(), 80);
        assert_eq!(std::mem::size_of::<BucketState>(), 128);
    }

    #[test]
    fn older_formats_facts_read_as_facts_without_the_later_masks() {
        let v3 = postcard::to_stdvec(&0x8000_0005u32).unwrap();
        let facts: Facts = postcard::from_bytes(&v3).unwrap();
        let bots = Facts {
            bots: 0x8000_0005,
            ..Facts::default()
        };
        assert_eq!(facts, bots);
        let v4 = postcard::to_stdvec(&(0xffff_ffff_8000_0001u64)).unwrap();
        let facts: Facts = postcard::from_bytes(&v4).unwrap();
        let linked = Facts {
            bots: 0x8000_0001,
            linked: 0xffff_ffff,
            ..Facts::default()
        };
        assert_eq!(facts, linked);
        let all = Facts {
            bots: 0x8000_0001,
            linked: 0xffff_ffff,
            ios: 0x8000,
            android: 3,
        };
        let bytes = postcard::to_stdvec(&all).unwrap();
        assert_eq!(postcard::from_bytes::<Facts>(&bytes).unwrap(), all);
    }

    #[test]
    fn window_keeps_the_latest_sighting_per_device_and_account() {
        let mut st = BucketState::default();
        let s = |ts: i64, device: u32, account: u32| Sighting {
            ts: Millis(ts),
            device,
            account,
        };
        st.remember(s(1, 1, NONE));
        st.remember(s(2, 2, 7));
        st.remember(s(3, 1, NONE));
        st.remember(s(4, 1, 7));
        let seen: Vec<(i64, u32, u32)> = st
            .recent
            .iter()
            .map(|r| (r.ts.0, r.device, r.account))
            .collect();
        assert_eq!(seen, [(2, 2, 7), (3, 1, NONE), (4, 1, 7)]);
        st.prune(3);
        assert_eq!(st.recent.len(), 2);
    }
}
