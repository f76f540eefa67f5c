//! Address buckets: the sightings within the co-location window, and the
//! day's aggregate that becomes evidence once the day is complete.

use super::intern::NONE;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

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
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DayAgg {
    /// Too many devices or accounts: the day counts for nothing.
    pub crowded: bool,
    /// Distinct device slots seen.
    pub devices: Vec<u32>,
    /// Devices seen signed in here today (not candidates here).
    pub signed_devices: Vec<u32>,
    /// Distinct signed-in account slots seen.
    pub accounts: Vec<u32>,
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
    /// Sightings within the window, oldest first (released in ts order).
    pub recent: VecDeque<Sighting>,
    /// Day the aggregate belongs to.
    pub day: i32,
    /// Today's aggregate, while the day is open.
    pub agg: Option<Box<DayAgg>>,
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
