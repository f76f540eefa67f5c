//! Random-number helpers shared by the generators: the seeded generator
//! type, a stateless hash for values that must be stable without storing
//! them, and a few small distributions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator used everywhere; ChaCha8 is fast and its output is the
/// same on every platform, which is what makes runs byte-identical.
pub(crate) type SimRng = ChaCha8Rng;

/// A generator for one independent stream of the scenario (population,
/// privacy plan, each day ...). Deriving streams from the seed instead of
/// sharing one generator keeps the streams from shifting each other when
/// one of them changes.
pub(crate) fn stream(seed: u64, stream: u64) -> SimRng {
    SimRng::seed_from_u64(mix(seed ^ mix(stream.wrapping_add(0x5851_f42d_4c95_7f2d))))
}

/// SplitMix64 finaliser: a bijective 64-bit mix. Bijective matters: it is
/// used to turn unique counters into unique random-looking ids.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of several values, for per-(device, day) values such as IPv6
/// privacy interface ids that must be stable within a day without being
/// stored anywhere.
pub(crate) fn hash3(a: u64, b: u64, c: u64) -> u64 {
    mix(mix(mix(a) ^ b) ^ c)
}

/// Uniform index in `0..n`; returns 0 for an empty range instead of
/// panicking so callers need no special case.
pub(crate) fn index(rng: &mut SimRng, n: usize) -> usize {
    if n <= 1 { 0 } else { rng.random_range(0..n) }
}

/// Uniform integer in `lo..=hi` (order-tolerant).
pub(crate) fn between(rng: &mut SimRng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

/// Bernoulli trial that tolerates probabilities outside `0..=1`.
pub(crate) fn chance(rng: &mut SimRng, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random::<f64>() < p
    }
}

/// Small count with the given mean, drawn as a sum of geometric steps; a
/// cheap stand-in for a Poisson draw that still gives a long-ish tail.
pub(crate) fn count(rng: &mut SimRng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    let p = mean / (1.0 + mean);
    let mut n = 0u32;
    while n < 10_000 && rng.random::<f64>() < p {
        n += 1;
    }
    n
}

/// Log-normal-ish multiplier around 1.0, used for per-person activity
/// levels so that some people are heavy users and some barely show up.
pub(crate) fn spread(rng: &mut SimRng, sigma: f64) -> f64 {
    // Sum of uniforms approximates a normal well enough here.
    let z: f64 = (0..4).map(|_| rng.random::<f64>()).sum::<f64>() - 2.0;
    (z * sigma * 1.7).exp()
}

/// Picks an index from a table of weights.
pub(crate) fn weighted(rng: &mut SimRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_injective_on_a_sample() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u64 {
            assert!(seen.insert(mix(i)));
        }
    }

    #[test]
    fn count_has_roughly_the_asked_mean() {
        let mut rng = stream(7, 1);
        let total: u64 = (0..20_000).map(|_| u64::from(count(&mut rng, 4.0))).sum();
        let mean = total as f64 / 20_000.0;
        assert!((mean - 4.0).abs() < 0.3, "mean {mean}");
    }
}
