//! The ids of a [`Slots`] in their texts' byte order, for deterministic
//! output.
//!
//! A comparison sort of a million ids waits on two cache misses per
//! comparison (each id's text), some twenty times per id. So the order is
//! found most significant bytes first:
//!
//! - a counting pass spreads the ids over groups by two bytes of text;
//! - a group still large is spread again by the next two bytes, after
//!   skipping the bytes all its ids share (ids of one scheme, such as
//!   `acct-000123`, begin alike);
//! - a small group is sorted with eight bytes of each text kept beside
//!   its slot, so most comparisons touch no text at all; only ids whose
//!   eight bytes tie are compared whole.
//!
//! A missing byte counts as zero, so "a" and "a\0" tie on their bytes and
//! their whole texts decide: the order is exactly the texts' byte order.
//! The extra memory is a table of 65,537 counts per spreading pass, a copy
//! of a large group's slots, and eight bytes beside each slot of a small
//! group: never a key per id.

use super::{Form, MAX_LEN, Slots, cmp_stored, key_at};
use std::cmp::Ordering;

/// Groups of a spreading pass: two bytes of text.
const GROUPS: usize = 1 << 16;

/// Groups up to this size are sorted by comparison (their keyed slots
/// take 16 bytes each: 64 KiB, in cache).
const SMALL: usize = 4096;

impl<T> Slots<T> {
    /// Live slot numbers sorted by id text.
    pub fn sorted(&self) -> Vec<u32> {
        self.sorted_where(|_, _| true)
    }

    /// The live slots that `keep` accepts (given the slot and its value),
    /// sorted by id text.
    pub fn sorted_where(&self, keep: impl Fn(u32, &T) -> bool) -> Vec<u32> {
        let kept = || {
            self.slots
                .iter()
                .enumerate()
                .filter(|(i, s)| !s.0.is_free() && keep(*i as u32, &s.1))
                .map(|(i, _)| i as u32)
        };
        let mut out = vec![0u32; kept().count()];
        let bounds = self.spread(kept, 0, &mut out);
        // (An empty id, which the decoder never lets in, has a slot that
        // reads as free: counted by `len`, not listed by `live`.)
        out.truncate(bounds[GROUPS] as usize);
        let mut keyed = Vec::new();
        for g in bounds.windows(2) {
            self.sort_group(&mut out[g[0] as usize..g[1] as usize], 2, &mut keyed);
        }
        out
    }

    /// Up to eight bytes of slot `i`'s id text from byte `at` on,
    /// big-endian and zero-padded, and the text's length.
    fn word(&self, i: u32, at: usize) -> (u64, usize) {
        let Some(&(span, _)) = self.slots.get(i as usize) else {
            return (0, 0);
        };
        let word = |text: &[u8]| {
            let mut w = [0u8; 8];
            if let Some(rest) = text.get(at..) {
                let n = rest.len().min(8);
                w[..n].copy_from_slice(&rest[..n]);
            }
            (u64::from_be_bytes(w), text.len())
        };
        match span.form() {
            Form::Text => word(self.text.get(span.range()).unwrap_or_default()),
            _ => word(key_at(&self.text, span).text().as_bytes()),
        }
    }

    /// The texts' order of slots `a` and `b`.
    fn cmp_slots(&self, a: u32, b: u32) -> Ordering {
        match (self.slots.get(a as usize), self.slots.get(b as usize)) {
            (Some(x), Some(y)) => cmp_stored(&self.text, x.0, y.0),
            _ => self.id(a).cmp(&self.id(b)),
        }
    }

    /// Writes the slots `ids()` yields into `out` grouped by the two text
    /// bytes at `depth`, groups in byte order; returns where each group
    /// starts (and, last, where the final one ends).
    fn spread<I: Iterator<Item = u32>>(
        &self,
        ids: impl Fn() -> I,
        depth: usize,
        out: &mut [u32],
    ) -> Vec<u32> {
        let group = |i: u32| (self.word(i, depth).0 >> 48) as usize;
        let mut start = vec![0u32; GROUPS + 1];
        for i in ids() {
            start[group(i) + 1] += 1;
        }
        for g in 0..GROUPS {
            start[g + 1] += start[g];
        }
        let mut next = start.clone();
        for i in ids() {
            let at = &mut next[group(i)];
            if let Some(slot) = out.get_mut(*at as usize) {
                *slot = i;
            }
            *at += 1;
        }
        start
    }

    /// Sorts `ids`, whose texts agree on their first `depth` bytes.
    fn sort_group(&self, ids: &mut [u32], depth: usize, keyed: &mut Vec<(u64, u32)>) {
        let Some(&first) = ids.first() else {
            return;
        };
        let mut depth = depth;
        if ids.len() > SMALL {
            // Bytes every id shares order nothing: skip them.
            let longest = ids.iter().map(|&i| self.word(i, 0).1).max().unwrap_or(0);
            while depth < longest.min(MAX_LEN) {
                let shared = self.word(first, depth).0;
                if ids.iter().any(|&i| self.word(i, depth).0 != shared) {
                    break;
                }
                depth += 8;
            }
            if depth < longest.min(MAX_LEN) {
                let copy = ids.to_vec();
                let bounds = self.spread(|| copy.iter().copied(), depth, ids);
                for g in bounds.windows(2) {
                    self.sort_group(&mut ids[g[0] as usize..g[1] as usize], depth + 2, keyed);
                }
                return;
            }
        }
        keyed.clear();
        // The group's slots lie anywhere: start loading each slot, then
        // its text, a few ids ahead of reading them.
        for (k, &i) in ids.iter().enumerate() {
            self.prefetch_walk(ids, k);
            keyed.push((self.word(i, depth).0, i));
        }
        keyed.sort_unstable_by_key(|&(w, _)| w);
        for tied in keyed.chunk_by_mut(|a, b| a.0 == b.0) {
            if tied.len() > 1 {
                tied.sort_unstable_by(|a, b| self.cmp_slots(a.1, b.1));
            }
        }
        for (slot, &(_, i)) in ids.iter_mut().zip(keyed.iter()) {
            *slot = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of several schemes, enough of them that groups are spread
    /// again, with shared prefixes longer than a word, UUIDs of both
    /// cases, and texts that differ only by trailing zeros.
    #[test]
    fn sorts_large_groups_in_the_texts_byte_order() {
        let mut ids: Vec<String> = Vec::new();
        for n in 0..12_000u64 {
            let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ids.push(format!("acct-{:06}", h % 1_000_000));
            ids.push(format!("device-shared-prefix-{:05}", h % 100_000));
            ids.push(format!(
                "{:08x}-0000-4000-8000-{:012x}",
                h >> 32,
                h & 0xffff_ffff_ffff
            ));
            if n % 3 == 0 {
                ids.push(format!(
                    "{:08X}-0000-4000-8000-{:012X}",
                    h >> 40,
                    h & 0xffff
                ));
            }
            if n % 1000 == 0 {
                ids.push(format!("acct-{:06}\0", h % 1_000_000));
            }
        }
        ids.extend(["a".into(), "a\0".into(), "a\0\0".into(), String::new()]);
        let mut s: Slots<()> = Slots::default();
        for id in &ids {
            s.intern(id.as_str(), || ());
        }
        let got: Vec<String> = s
            .sorted()
            .into_iter()
            .map(|i| s.id(i).text().to_string())
            .collect();
        let mut expected: Vec<String> = ids.iter().filter(|i| !i.is_empty()).cloned().collect();
        expected.sort();
        expected.dedup();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "not in byte order");
    }
}
