//! Scoring: from a device's evidence set to per-account scores.
//!
//! Pure functions of the evidence set and the decision day, so a score
//! never depends on the order evidence arrived in.
//!
//! * A bucket-day's weight (fixed when the day closes) is
//!   `exp(-gap / gap_scale) / (accounts × unknown^ambiguity_exponent)`:
//!   same-session use minutes apart counts most, evidence is split among
//!   the accounts signed in there that day, and an address shared by many
//!   unexplained devices over the horizon (a household with members who
//!   never sign in) counts less.
//! * Each weight decays linearly to zero at the evidence horizon.
//! * The score is the sum of decayed weights: in effect, the number of
//!   days the device was used minutes apart from the account's signed-in
//!   use. Housemates' devices meet the account's use by chance and rarely
//!   minutes apart; a person's own devices do so day after day.

use super::state::{Evidence, WEIGHT_ONE};
use crate::time::Millis;

/// One account's standing in a device's evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Account slot, or `NONE` for the anonymous removed-account total.
    pub account: u32,
    /// Combined score.
    pub score: f64,
    /// Distinct days of evidence within the horizon.
    pub days: u16,
    /// The same days, each counted by its decay factor: what the score
    /// is divided by for the mean weight of a day. Dividing the decayed
    /// score by whole days made the mean of a device used the same way
    /// every day fall as its evidence aged, so a laptop used minutes
    /// from its owner's phone every evening lost its link after two or
    /// three weeks of that (`bench/memory-flat.sh`, session 24).
    pub decayed_days: f64,
    /// Distinct days of close use within [`CloseUse::window_days`]: days
    /// with a co-location at most [`CloseUse::gap_s`] apart.
    pub close_days: u16,
    /// Distinct buckets of evidence within the horizon.
    pub buckets: u16,
    /// Earliest co-location within the horizon.
    pub first_seen: Millis,
    /// Latest co-location within the horizon.
    pub last_seen: Millis,
    /// Some evidence within the horizon has a platform clash: the device
    /// is a phone of another platform than the account's signed-in
    /// phones beside it.
    pub clash: bool,
}

/// Linear decay factor of evidence from `evidence_day` seen on `day`.
pub fn decay(evidence_day: i32, day: i32, horizon_days: i64) -> f64 {
    let age = i64::from(day) - i64::from(evidence_day);
    let age = age.max(0);
    if age >= horizon_days {
        return 0.0;
    }
    1.0 - age as f64 / horizon_days as f64
}

/// What counts as close use: a co-location at most `gap_s` apart, on one
/// of the `window_days` days that end with the decision day.
#[derive(Clone, Copy, Debug)]
pub struct CloseUse {
    /// Largest gap, in seconds, of a co-location that counts.
    pub gap_s: u16,
    /// Days counted, the decision day included.
    pub window_days: i32,
}

/// Scores every account in `evidence` (sorted by account, day, bucket).
pub fn candidates(
    evidence: &[Evidence],
    day: i32,
    horizon_days: i64,
    close: CloseUse,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut per_bucket: Vec<(u64, f64, u32)> = Vec::new();
    let mut days: Vec<i32> = Vec::new();
    let mut close_days: Vec<i32> = Vec::new();
    for group in evidence.chunk_by(|a, b| a.account == b.account) {
        per_bucket.clear();
        days.clear();
        close_days.clear();
        let mut first = Millis::MAX;
        let mut last = Millis::MIN;
        let mut clash = false;
        let mut decayed_days = 0.0;
        for e in group {
            let f = decay(e.day, day, horizon_days);
            if f <= 0.0 {
                continue;
            }
            let w = f64::from(e.weight) / f64::from(WEIGHT_ONE) * f;
            match per_bucket.iter_mut().find(|b| b.0 == e.bucket) {
                Some(b) => {
                    b.1 += w;
                    b.2 += 1;
                }
                None => per_bucket.push((e.bucket, w, 1)),
            }
            if days.last() != Some(&e.day) && !days.contains(&e.day) {
                days.push(e.day);
                decayed_days += f;
            }
            let in_window = i64::from(day) - i64::from(e.day) < i64::from(close.window_days);
            if e.gap_s <= close.gap_s && in_window && close_days.last() != Some(&e.day) {
                close_days.push(e.day);
            }
            first = first.min(e.at);
            last = last.max(e.at);
            clash |= e.clash;
        }
        if per_bucket.is_empty() {
            continue;
        }
        let score = per_bucket.iter().map(|b| b.1).sum();
        out.push(Candidate {
            account: group[0].account,
            score,
            days: days.len().min(u16::MAX as usize) as u16,
            decayed_days,
            close_days: close_days.len().min(u16::MAX as usize) as u16,
            buckets: per_bucket.len().min(u16::MAX as usize) as u16,
            first_seen: first,
            last_seen: last,
            clash,
        });
    }
    out
}

/// Confidence published for an inferred link: the account's share of the
/// evidence times `score / (score + 1)`, which grows with the days of
/// same-session use (0.71 at the default threshold, 0.83 at twice it).
pub fn confidence(score: f64, share: f64) -> f64 {
    round4(share * score / (score + 1.0))
}

/// Rounds to four decimals, the precision of every published number.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSE: CloseUse = CloseUse {
        gap_s: 300,
        window_days: 32,
    };

    fn ev(account: u32, day: i32, bucket: u64, weight: u16) -> Evidence {
        Evidence {
            account,
            day,
            bucket,
            weight,
            gap_s: 0,
            bucket_devices: 2,
            bucket_accounts: 1,
            at: Millis(i64::from(day) * crate::time::DAY_MS),
            clash: false,
        }
    }

    #[test]
    fn the_mean_weight_of_steady_use_does_not_fall_with_age() {
        let e: Vec<_> = (0..30).map(|d| ev(1, d, 7, 5_000)).collect();
        let c = candidates(&e, 29, 30, CLOSE);
        assert_eq!(c[0].days, 30);
        let mean = c[0].score / c[0].decayed_days;
        assert!((mean - 0.5).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn the_score_sums_decayed_daily_weights() {
        let e: Vec<_> = (0..4).map(|d| ev(1, d, 7, 5_000)).collect();
        let c = candidates(&e, 3, 1000, CLOSE);
        assert!(
            (c[0].score - 4.0 * 0.5 * 0.9985).abs() < 0.01,
            "{}",
            c[0].score
        );
        assert_eq!((c[0].days, c[0].buckets), (4, 1));
        let e = vec![
            ev(1, 1, 7, 10_000),
            ev(1, 1, 8, 10_000),
            ev(2, 1, 7, 10_000),
        ];
        let c = candidates(&e, 1, 1000, CLOSE);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].days, c[0].buckets), (1, 2));
    }

    #[test]
    fn evidence_past_the_horizon_is_gone() {
        let e = vec![ev(1, 0, 7, 10_000)];
        assert!(candidates(&e, 30, 30, CLOSE).is_empty());
        assert_eq!(decay(0, 15, 30), 0.5);
    }
}
