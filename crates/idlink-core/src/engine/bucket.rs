//! Address buckets: the sightings within the co-location window, and the
//! day's aggregate that becomes evidence once the day is complete.

use super::intern::NONE;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

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
    /// Smallest gap found that day, in milliseconds.
    pub gap_ms: i64,
    /// When the closest pair happened (the later sighting).
    pub at: Millis,
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
    pub devices: SmallVec<[u32; 4]>,
    /// Devices seen signed in here today (not candidates here).
    pub signed_devices: SmallVec<[u32; 2]>,
    /// Distinct signed-in account slots seen.
    pub accounts: SmallVec<[u32; 2]>,
    /// Erased devices that were here, counted without their ids so their
    /// removal never makes the bucket look more exclusive.
    pub anon_devices: u32,
    /// Erased accounts that were here, likewise.
    pub anon_accounts: u32,
    /// Co-locations found, one per (device, account).
    pub pairs: Vec<Pair>,
}

/// State of one bucket.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BucketState {
    /// The latest sighting of each (device, account) within the window,
    /// oldest first. Only the latest matters: sightings are applied in
    /// `ts` order, so it gives every later sighting its smallest gap.
    pub recent: SmallVec<[Sighting; 4]>,
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
    /// Records a sighting; returns false if the day is (now) crowded.
    pub fn see(
        &mut self,
        device: u32,
        account: u32,
        max_devices: usize,
        max_accounts: usize,
    ) -> bool {
        if self.crowded {
            return false;
        }
        if !self.devices.contains(&device) {
            self.devices.push(device);
        }
        if account != NONE {
            if !self.accounts.contains(&account) {
                self.accounts.push(account);
            }
            if !self.signed_devices.contains(&device) {
                self.signed_devices.push(device);
            }
        }
        if self.devices.len() + self.anon_devices as usize > max_devices
            || self.accounts.len() + self.anon_accounts as usize > max_accounts
        {
            self.crowd();
            return false;
        }
        true
    }

    /// Marks the day crowded and frees everything it held.
    pub fn crowd(&mut self) {
        *self = DayAgg {
            crowded: true,
            ..Default::default()
        };
    }

    /// Records a co-location, keeping the smallest gap per pair.
    pub fn pair(&mut self, device: u32, account: u32, gap_ms: i64, at: Millis) {
        if let Some(p) = self
            .pairs
            .iter_mut()
            .find(|p| p.device == device && p.account == account)
        {
            if gap_ms < p.gap_ms {
                p.gap_ms = gap_ms;
                p.at = at;
            }
            return;
        }
        self.pairs.push(Pair {
            device,
            account,
            gap_ms,
            at,
        });
    }
}
