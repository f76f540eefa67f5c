//! Slight disorder in the written stream: real pipelines deliver events a
//! little out of order. Each event's write position may move by up to two
//! minutes of event time, so no two events are ever swapped across more
//! than four minutes (the contract promises at most five).

use rand::Rng;

use crate::event::Ev;
use crate::rng::SimRng;

/// Largest shift of one event's write position, in ms.
pub(crate) const MAX_JITTER_MS: u64 = 120_000;
/// Share of events whose position is shifted at all.
const JITTERED_SHARE: f64 = 0.35;

/// Turns each event's `key` (its write position in ms within the day) into
/// a unique sort key with jitter applied, then sorts the day.
pub(crate) fn order_day(events: &mut [Ev], rng: &mut SimRng) {
    for (seq, ev) in events.iter_mut().enumerate() {
        let mut pos = ev.key + MAX_JITTER_MS;
        if rng.random::<f64>() < JITTERED_SHARE {
            let shift = rng.random_range(0..=2 * MAX_JITTER_MS);
            pos = pos + shift - MAX_JITTER_MS;
        }
        ev.key = (pos << 32) | (seq as u64 & 0xffff_ffff);
    }
    events.sort_unstable_by_key(|e| e.key);
}
