//! An index from a key's hash to a slot number, for tables that keep their
//! keys in their own slot vectors (ids in [`super::intern::Slots`], buckets
//! in [`super::bucket::BucketTable`]).
//!
//! Open addressing with linear probing over two arrays: a byte of tag per
//! position (7 bits of the hash; 0 marks an empty position) and the slot
//! number. That is hashbrown's `HashTable<u32>` layout, 5 bytes a
//! position, grown at the same 7/8 load. It exists for one thing
//! hashbrown does not offer: [`SlotIndex::prefetch`]. At a million
//! devices, a lookup is a chain of cache misses (tag, slot number, the
//! slot, the key); the engine asks for the first links of the chain a few
//! events ahead, so the misses overlap instead of queueing one behind the
//! other. Removal shifts the rest of the probe run back instead of leaving
//! tombstones, so a run never outgrows its live entries.

/// Marks an empty position in `tags`.
const EMPTY: u8 = 0;

/// Smallest table allocated.
const MIN_POSITIONS: usize = 8;

/// Hash to slot number.
#[derive(Debug, Default)]
pub(super) struct SlotIndex {
    /// Per position: `EMPTY`, or `0x80` with the top 7 bits of the hash. A
    /// probe compares these bytes and looks at a key only where they
    /// match, so a probe that passes other entries touches no keys.
    tags: Vec<u8>,
    /// Per position: the slot number stored there.
    slots: Vec<u32>,
    /// Entries held, to grow at 7/8 load.
    len: usize,
}

fn tag(h: u64) -> u8 {
    0x80 | (h >> 57) as u8
}

impl SlotIndex {
    /// An index that holds `n` entries without growing.
    pub fn with_capacity(n: usize) -> Self {
        let mut index = SlotIndex::default();
        if n > 0 {
            index.allocate(positions_for(n));
        }
        index
    }

    fn mask(&self) -> usize {
        self.tags.len().wrapping_sub(1)
    }

    fn allocate(&mut self, positions: usize) {
        self.tags = vec![EMPTY; positions];
        self.slots = vec![0; positions];
        self.len = 0;
    }

    /// The slot stored under hash `h` that `eq` accepts.
    pub fn find(&self, h: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.position(h, eq).map(|p| self.slots[p])
    }

    /// The position of the entry under `h` that `eq` accepts.
    fn position(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Option<usize> {
        if self.tags.is_empty() {
            return None;
        }
        let (mask, t) = (self.mask(), tag(h));
        let mut p = h as usize & mask;
        loop {
            match self.tags[p] {
                EMPTY => return None,
                x if x == t && eq(self.slots[p]) => return Some(p),
                _ => p = (p + 1) & mask,
            }
        }
    }

    /// Stores `slot` under `h`; the caller knows it is not there yet.
    /// `rehash` gives the hash of any stored slot, for growing.
    pub fn insert(&mut self, h: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        if (self.len + 1) * 8 > self.tags.len() * 7 {
            self.grow(&rehash);
        }
        self.place(h, slot);
    }

    fn place(&mut self, h: u64, slot: u32) {
        let mask = self.mask();
        let mut p = h as usize & mask;
        while self.tags[p] != EMPTY {
            p = (p + 1) & mask;
        }
        self.tags[p] = tag(h);
        self.slots[p] = slot;
        self.len += 1;
    }

    fn grow(&mut self, rehash: &impl Fn(u32) -> u64) {
        let positions = positions_for(self.len + 1).max(self.tags.len() * 2);
        let tags = std::mem::take(&mut self.tags);
        let slots = std::mem::take(&mut self.slots);
        self.allocate(positions);
        for (t, s) in tags.into_iter().zip(slots) {
            if t != EMPTY {
                self.place(rehash(s), s);
            }
        }
    }

    /// Removes `slot`, stored under `h`. `rehash` gives the hash of any
    /// stored slot: the entries after it in its probe run move back to
    /// where a probe will still find them.
    pub fn remove(&mut self, h: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        let Some(mut hole) = self.position(h, |s| s == slot) else {
            return;
        };
        let mask = self.mask();
        let mut p = hole;
        loop {
            p = (p + 1) & mask;
            if self.tags[p] == EMPTY {
                break;
            }
            let home = rehash(self.slots[p]) as usize & mask;
            // The entry at `p` may fill the hole unless its home lies
            // cyclically after the hole (then a probe from home would
            // never pass the hole).
            if (p.wrapping_sub(home) & mask) >= (p.wrapping_sub(hole) & mask) {
                self.tags[hole] = self.tags[p];
                self.slots[hole] = self.slots[p];
                hole = p;
            }
        }
        self.tags[hole] = EMPTY;
        self.len -= 1;
    }

    /// The slot a lookup of `h` most likely finds: the first whose tag
    /// matches, without looking at keys. For prefetching only.
    pub fn guess(&self, h: u64) -> Option<u32> {
        self.find(h, |_| true)
    }

    /// Asks the CPU to start loading the positions a lookup of `h` reads
    /// first. Only a hint: it changes no state and reads nothing.
    pub fn prefetch(&self, h: u64) {
        if self.tags.is_empty() {
            return;
        }
        let p = h as usize & self.mask();
        prefetch(&self.tags[p]);
        prefetch(&self.slots[p]);
    }
}

/// Positions for `n` entries at no more than 7/8 load: a power of two.
fn positions_for(n: usize) -> usize {
    (n.saturating_mul(8) / 7 + 1)
        .next_power_of_two()
        .max(MIN_POSITIONS)
}

/// Asks the CPU to start loading every cache line `r` spans.
pub(super) fn prefetch_all<T>(r: &T) {
    const LINE: usize = 64;
    let start: *const T = r;
    let start = start.cast::<u8>();
    let first = start.addr() / LINE;
    let last = (start.addr() + std::mem::size_of::<T>().max(1) - 1) / LINE;
    for line in 0..=last - first {
        prefetch_line(start.wrapping_add(line * LINE));
    }
}

/// Asks the CPU to start loading the cache line that holds `r`.
pub(super) fn prefetch<T>(r: &T) {
    prefetch_line(r as *const T);
}

/// Asks the CPU to start loading the cache line that holds `p`.
fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint that never faults, whatever the
        // address, and neither reads nor writes memory as far as the
        // program can tell. SSE is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// A hash with few distinct homes, so runs are long and wrap around.
    fn h(k: u32) -> u64 {
        (u64::from(k) % 13).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(k) << 57)
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in prop::collection::vec((any::<bool>(), 0u32..200), 0..600)) {
            let mut index = SlotIndex::default();
            let mut model = BTreeSet::new();
            for (add, k) in ops {
                if add && model.insert(k) {
                    index.insert(h(k), k, h);
                } else if !add && model.remove(&k) {
                    index.remove(h(k), k, h);
                }
                prop_assert_eq!(index.len, model.len());
            }
            for k in 0..200 {
                prop_assert_eq!(index.find(h(k), |s| s == k), model.contains(&k).then_some(k));
            }
        }
    }

    #[test]
    fn sizes_like_hashbrown() {
        assert_eq!(positions_for(1), 8);
        assert_eq!(positions_for(7), 16);
        assert_eq!(positions_for(1_000_000), 1 << 21);
        let index = SlotIndex::with_capacity(100);
        assert_eq!(index.tags.len(), 128);
        index.prefetch(12345);
        SlotIndex::default().prefetch(1);
    }
}
