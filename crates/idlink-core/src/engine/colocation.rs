//! Co-location: the bucket side of the engine.
//!
//! Everything the engine keeps per address bucket (the sightings within
//! the window, the open day's aggregate, the bucket's regulars) and every
//! decision made from it alone: which sightings pair, when a day turns
//! crowded, and what each complete bucket-day weighs. It reads no device
//! or account state. What it needs to know about a device travels with
//! the sighting ([`Seen`]), and whether an account may pair is asked
//! through a callback that a partitioned deployment answers from the
//! privacy requests every stage receives. This is the state and the logic
//! of the bucket stage in ARCHITECTURE.md ("Partitioned scale-out"); the
//! engine turns what it offers into evidence on devices.

use super::Params;
use super::bucket::{self, BucketTable, DayAgg, Regular};
use super::intern::NONE;
use super::state::{Evidence, WEIGHT_ONE};
use crate::addr::Bucket;
use crate::agent::Platform;
use crate::keyed::KeyedHasher;
use crate::time::Millis;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Most unsigned devices a bucket's regulars list tracks; a bucket with
/// more is so ambiguous that the exact number no longer matters.
const MAX_REGULARS: usize = 16;

/// One in-order sighting on a usable bucket, with what was known about
/// its device at the time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    /// Device slot.
    pub device: u32,
    /// Signed-in account slot, or `NONE`.
    pub account: u32,
    /// When.
    pub ts: Millis,
    /// The device behaved like a bot that day, as of this sighting.
    pub bot: bool,
    /// The device held a sign-in link, as of this sighting.
    pub signed_in: bool,
    /// The phone platform the sighting's user agent named.
    pub platform: Platform,
}

/// What one complete bucket-day offers: `(device, evidence)` for each of
/// its pairs that weighs anything.
pub(super) type Offers = Vec<(u32, Evidence)>;

/// The bucket side's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Colocation {
    /// Bucket state for buckets with sightings in the window or today.
    buckets: BucketTable,
    /// Buckets holding state, visited when a day closes.
    active: Vec<u32>,
    /// Per bucket, the devices seen on it within the horizon and whether
    /// each was unexplained (never signed in there, no sign-in link, no
    /// bot) on the last uncrowded day it was seen there: how many
    /// unexplained devices share the address over weeks, not just today.
    /// A household with a member who never signs in keeps that member's
    /// devices here, which is what keeps them from being handed to the
    /// member who does. Updated only when a bucket-day closes, from the
    /// whole day: a crowded day adds nothing, and the order the day's
    /// sightings came in (a flush may have applied some of a millisecond
    /// before the rest) cannot change what it adds.
    regulars: FxHashMap<Bucket, SmallVec<[Regular; 2]>>,
    /// Accounts that opted in again while their opt-out still waits for
    /// the privacy purge: their pairs from before the opt-out are still in
    /// today's aggregates, so new pairs must not merge with them. They
    /// wait in `fresh` and join the aggregates once the purge removed the
    /// old ones, instead of an early purge (a pass over every bucket) at
    /// each such opt-in. Empty whenever no purge is pending (snapshots).
    #[serde(skip)]
    aside: FxHashSet<u32>,
    /// Pairs of the accounts set aside, in the order they were made.
    #[serde(skip)]
    fresh: Vec<FreshPair>,
}

/// A pair kept aside until the purge ([`Colocation::set_aside`]).
#[derive(Clone, Copy, Debug)]
struct FreshPair {
    /// The bucket's slot.
    slot: u32,
    /// The bucket-day it belongs to.
    day: i32,
    /// The unsigned device.
    device: u32,
    /// The signed-in account.
    account: u32,
    /// The gap between the two sightings.
    gap_ms: i64,
    /// When the later sighting happened.
    at: Millis,
}

impl Colocation {
    /// Asks the CPU to start loading bucket `b`'s index positions
    /// (`first`) or its state: see [`BucketTable::prefetch`].
    pub fn prefetch(&self, b: Bucket, first: bool) {
        self.buckets.prefetch(b, first);
    }

    /// Records a sighting on bucket `b` and the pairs it makes with the
    /// sightings in the window. `may_pair(account)` is false for accounts
    /// that must not collect evidence (opted out, being erased);
    /// `gone(device)` is true for devices whose erasure is pending.
    pub fn see(
        &mut self,
        b: Bucket,
        s: Seen,
        p: &Params,
        may_pair: impl Fn(u32) -> bool,
        gone: impl Fn(u32) -> bool,
    ) {
        let (d, a, ts) = (s.device, s.account, s.ts);
        let day = ts.day() as i32;
        let (slot, created) = self.buckets.slot(b);
        if created {
            self.active.push(slot);
        }
        let Some((_, st)) = self.buckets.get_mut(slot) else {
            return;
        };
        if st.agg.is_none() || st.day != day {
            st.day = day;
            st.agg = Some(DayAgg::default());
        }
        st.prune(ts.0.saturating_sub(p.window_ms));
        let Some(agg) = st.agg.as_mut() else { return };
        let facts = (s.bot, s.signed_in, s.platform);
        if !agg.see(d, a, facts, p.max_bucket_devices, p.max_bucket_accounts) {
            st.recent.clear();
            return;
        }
        let me_may_pair = a != NONE && may_pair(a);
        for r in &st.recent {
            if r.device == d || gone(r.device) {
                continue;
            }
            let gap = ts.0 - r.ts.0;
            let (device, account) = if a == NONE && r.account != NONE && may_pair(r.account) {
                (d, r.account)
            } else if me_may_pair && r.account == NONE {
                (r.device, a)
            } else {
                continue;
            };
            if !self.aside.is_empty() && self.aside.contains(&account) {
                self.fresh.push(FreshPair {
                    slot,
                    day,
                    device,
                    account,
                    gap_ms: gap,
                    at: ts,
                });
            } else {
                agg.pair(device, account, gap, ts);
            }
        }
        st.remember(bucket::Sighting {
            ts,
            device: d,
            account: a,
        });
    }

    /// Closes every open bucket-day: what it offers goes to `take`, one
    /// bucket-day at a time (or it counts as crowded), and its aggregate
    /// is dropped; windows are pruned to sightings from `window_from` (ms)
    /// on, and buckets left with nothing are freed. Returns the number of
    /// crowded bucket-days.
    pub fn close(
        &mut self,
        window_from: i64,
        p: &Params,
        hasher: &KeyedHasher,
        mut take: impl FnMut(Offers),
    ) -> u64 {
        let mut crowded = 0;
        let active = std::mem::take(&mut self.active);
        let mut keep = Vec::with_capacity(active.len() / 4);
        for slot in active {
            let Some((b, st)) = self.buckets.get_mut(slot) else {
                continue;
            };
            let agg = st.agg.take();
            let day = st.day;
            st.prune(window_from);
            if st.recent.is_empty() {
                self.buckets.remove(slot);
            } else {
                keep.push(slot);
            }
            match agg {
                Some(agg) if agg.crowded => crowded += 1,
                Some(agg) => {
                    if !agg.pairs.is_empty() {
                        take(self.weigh(b, day, &agg, p, hasher));
                    }
                    self.update_regulars(b, day, &agg);
                }
                None => {}
            }
        }
        self.active = keep;
        crowded
    }

    /// What the open `day` would offer if it closed now (a provisional
    /// close), to `take` one bucket-day at a time; the state is untouched.
    pub fn offers_so_far(
        &self,
        day: i32,
        p: &Params,
        hasher: &KeyedHasher,
        mut take: impl FnMut(Offers),
    ) {
        for &slot in &self.active {
            let Some((b, st)) = self.buckets.get(slot) else {
                continue;
            };
            if st.day != day {
                continue;
            }
            if let Some(agg) = st
                .agg
                .as_ref()
                .filter(|a| !a.crowded && !a.pairs.is_empty())
            {
                take(self.weigh(b, day, agg, p, hasher));
            }
        }
    }

    /// Folds the uncrowded bucket-day `agg` of `day`, now closed, into
    /// bucket `b`'s regulars.
    fn update_regulars(&mut self, b: Bucket, day: i32, agg: &DayAgg) {
        match self.regulars.get_mut(&b) {
            Some(list) => fold_day(list, day, agg),
            None => {
                let mut list = SmallVec::new();
                fold_day(&mut list, day, agg);
                if !list.is_empty() {
                    self.regulars.insert(b, list);
                }
            }
        }
    }

    /// The unexplained regulars bucket `b` has within the horizon once
    /// `agg`, its open `day`, is folded in, without changing them: a
    /// provisional close and the real one weigh the same day alike.
    fn unexplained_regulars(&self, b: Bucket, day: i32, agg: &DayAgg, p: &Params) -> usize {
        let mut list = self.regulars.get(&b).cloned().unwrap_or_default();
        fold_day(&mut list, day, agg);
        list.iter()
            .filter(|x| x.unexplained() && i64::from(day) - i64::from(x.day()) < p.horizon_days)
            .count()
    }

    /// The evidence one complete bucket-day offers. A pair weighs
    /// `exp(-gap / gap_scale) / (accounts × unknown^exponent)`, where
    /// `unknown` is the larger of today's unexplained devices and the
    /// bucket's unexplained regulars within the horizon, today's
    /// included.
    fn weigh(&self, b: Bucket, day: i32, agg: &DayAgg, p: &Params, hasher: &KeyedHasher) -> Offers {
        let devices = agg.devices();
        let humans = devices.iter().filter(|&&d| !agg.is_bot(d)).count();
        let today = devices
            .iter()
            .filter(|&&d| !agg.is_bot(d) && !agg.is_signed(d))
            .count();
        let known = self.unexplained_regulars(b, day, agg, p);
        let unknown = today.max(known).max(1);
        let ambiguity = (unknown as f64).powf(p.ambiguity_exponent);
        let n_dev = humans + agg.anon_devices as usize;
        let n_acc = (agg.accounts().len() + agg.anon_accounts as usize).max(1);
        let tag = hasher.tag(&b.to_bytes());
        let mut offers = Vec::with_capacity(agg.pairs.len());
        for pair in &agg.pairs {
            if agg.is_signed(pair.device) || agg.is_bot(pair.device) {
                continue;
            }
            let tf = (-(pair.gap_ms() as f64) / p.gap_scale_ms).exp();
            let w = tf / (n_acc as f64 * ambiguity);
            let weight = (w * f64::from(WEIGHT_ONE))
                .round()
                .clamp(0.0, f64::from(WEIGHT_ONE)) as u16;
            if weight == 0 {
                continue;
            }
            offers.push((
                pair.device,
                Evidence {
                    account: pair.account,
                    day,
                    bucket: tag,
                    weight,
                    gap_s: (pair.gap_ms() / 1000).clamp(0, i64::from(u16::MAX)) as u16,
                    bucket_devices: n_dev.min(255) as u8,
                    bucket_accounts: n_acc.min(255) as u8,
                    at: pair.at(day),
                    clash: agg.platform_clash(pair.device, pair.account),
                },
            ));
        }
        offers
    }

    /// Forgets regulars last seen `horizon_days` or more before `day`.
    pub fn expire(&mut self, day: i32, horizon_days: i64) {
        self.regulars.retain(|_, list| {
            list.retain(|x| i64::from(day) - i64::from(x.day()) < horizon_days);
            !list.is_empty()
        });
    }

    /// Keeps account `a`'s new pairs aside until the next
    /// [`Colocation::forget`]: it opted in again while its opt-out (whose
    /// pairs that purge removes) is pending.
    pub fn set_aside(&mut self, a: u32) {
        self.aside.insert(a);
    }

    /// Drops the pairs kept aside for account `a` (it opted out again);
    /// returns how many.
    pub fn drop_aside(&mut self, a: u32) -> u64 {
        let before = self.fresh.len();
        self.fresh.retain(|f| f.account != a);
        (before - self.fresh.len()) as u64
    }

    /// Removes erased devices and accounts (by slot, with the index of the
    /// request that erased them) and the pending pairs of opted-out
    /// accounts, then adds the pairs kept aside (but those of erased ids).
    /// Erased ids stay counted, anonymously, where they made a bucket-day
    /// crowded or ambiguous. `count(request)` is called for every sighting
    /// or pair dropped.
    pub fn forget(
        &mut self,
        devices: &FxHashMap<u32, usize>,
        accounts: &FxHashMap<u32, usize>,
        opted: &FxHashMap<u32, usize>,
        mut count: impl FnMut(usize),
    ) {
        self.forget_pass(devices, accounts, opted, &mut count);
        self.aside.clear();
        for f in std::mem::take(&mut self.fresh) {
            if let Some(&i) = devices.get(&f.device).or(accounts.get(&f.account)) {
                count(i);
            } else if let Some((_, st)) = self.buckets.get_mut(f.slot)
                && st.day == f.day
                && let Some(agg) = st.agg.as_mut()
            {
                agg.pair(f.device, f.account, f.gap_ms, f.at);
            }
        }
    }

    /// [`Colocation::forget`]'s pass over every bucket.
    fn forget_pass(
        &mut self,
        devices: &FxHashMap<u32, usize>,
        accounts: &FxHashMap<u32, usize>,
        opted: &FxHashMap<u32, usize>,
        mut count: impl FnMut(usize),
    ) {
        if devices.is_empty() && accounts.is_empty() && opted.is_empty() {
            return;
        }
        for st in self.buckets.states_mut() {
            st.recent.retain(
                |s| match (devices.get(&s.device), accounts.get(&s.account)) {
                    (Some(&i), _) | (None, Some(&i)) => {
                        count(i);
                        false
                    }
                    (None, None) => true,
                },
            );
            let Some(agg) = st.agg.as_mut() else { continue };
            agg.forget_devices(|d| devices.contains_key(&d));
            agg.forget_accounts(|a| accounts.contains_key(&a));
            agg.pairs.retain(|x| {
                match devices
                    .get(&x.device)
                    .or(accounts.get(&x.account))
                    .or(opted.get(&x.account))
                {
                    Some(&i) => {
                        count(i);
                        false
                    }
                    None => true,
                }
            });
        }
        if !devices.is_empty() {
            for list in self.regulars.values_mut() {
                list.retain(|x| !devices.contains_key(&x.device));
            }
        }
    }

    /// Buckets holding window or day state.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// A bucket's regulars once the uncrowded bucket-day `agg` of `day` is
/// counted in: the devices it saw take that day's answer; an unexplained
/// one is added while the list has room, an explained one only updated
/// (it never counts).
fn fold_day(list: &mut SmallVec<[Regular; 2]>, day: i32, agg: &DayAgg) {
    for (d, unexplained) in agg.unexplained() {
        match list.iter().position(|x| x.device == d) {
            Some(i) => list[i] = Regular::new(d, day.max(list[i].day()), unexplained),
            None if unexplained && list.len() < MAX_REGULARS => {
                list.push(Regular::new(d, day, true));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What a provisional close counts is what the real close leaves:
        /// the two weigh a day alike only if they agree.
        #[test]
        fn the_provisional_count_is_the_count_after_the_close(
            earlier in prop::collection::vec((0u32..40, 0i32..40, any::<bool>()), 0..=MAX_REGULARS),
            today in prop::collection::vec(
                (0u32..40, prop::bool::weighted(0.2), prop::bool::weighted(0.1), prop::bool::weighted(0.2)),
                0..32,
            ),
        ) {
            let b = Bucket::v4(0x5102_0304);
            let day = 40;
            let p = Params { horizon_days: 30, ..Params::default() };
            let mut c = Colocation::default();
            let mut list: SmallVec<[Regular; 2]> = SmallVec::new();
            for (d, ago, unexplained) in earlier {
                if !list.iter().any(|x| x.device == d) {
                    list.push(Regular::new(d, day - ago, unexplained));
                }
            }
            c.regulars.insert(b, list);
            let mut agg = DayAgg::default();
            for (d, signed, bot, linked) in today {
                let account = if signed { 7 } else { NONE };
                agg.see(d, account, (bot, linked, Platform::Unknown), 32, 32);
            }
            let provisional = c.unexplained_regulars(b, day, &agg, &p);
            c.update_regulars(b, day, &agg);
            let after = c.regulars.get(&b).map_or(0, |list| {
                list.iter()
                    .filter(|x| x.unexplained() && i64::from(day - x.day()) < p.horizon_days)
                    .count()
            });
            prop_assert_eq!(provisional, after);
            prop_assert!(c.regulars.get(&b).map_or(0, |l| l.len()) <= MAX_REGULARS);
        }
    }
}
