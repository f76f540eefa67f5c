//! Interning of ids into dense `u32` slots.
//!
//! The engine refers to devices and accounts by slot index everywhere, so
//! the id text is stored exactly once. All ids live back to back in one
//! arena string; a slot holds its id's span (8 bytes) instead of a boxed
//! string (16 bytes plus a heap block with its header and rounding). The
//! lookup table holds only slot numbers and hashes through the arena
//! ([`SlotIndex`], which can prefetch). Freed text is reclaimed by
//! compacting the arena once more than half of it is garbage.

use super::slot_index::{SlotIndex, prefetch, prefetch_all};
use rustc_hash::FxHasher;
use std::hash::Hasher;

/// Marker for "no slot" in compact fields.
pub const NONE: u32 = u32::MAX;

/// Arenas smaller than this are never compacted.
const MIN_COMPACT: usize = 1 << 16;

/// Where a slot's id lies in the arena: offset in the high 48 bits,
/// length in the low 16 (ids are at most 256 bytes; longer ones are
/// refused by the decoder, and truncated to 65,535 here if they ever
/// came). An empty span marks a free slot.
#[derive(Clone, Copy, Debug, Default)]
struct Span(u64);

impl Span {
    fn new(at: usize, len: usize) -> Span {
        Span(((at as u64) << 16) | len.min(usize::from(u16::MAX)) as u64)
    }
    fn range(self) -> std::ops::Range<usize> {
        let at = (self.0 >> 16) as usize;
        at..at + (self.0 & 0xffff) as usize
    }
    fn is_free(self) -> bool {
        self.0 & 0xffff == 0
    }
}

/// Slot storage with an id index and a free list.
#[derive(Debug)]
pub struct Slots<T> {
    /// The id text of every live slot, back to back.
    text: String,
    /// Bytes of `text` no live slot refers to any more.
    garbage: usize,
    /// Per slot: its id's span in `text` (empty when free) and its value.
    slots: Vec<(Span, T)>,
    /// Index from id text to slot, hashed through `text`.
    index: SlotIndex,
    /// Freed slot numbers, reused before the vector grows.
    free: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            text: String::new(),
            garbage: 0,
            slots: Vec::new(),
            index: SlotIndex::default(),
            free: Vec::new(),
        }
    }
}

fn hash(s: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(s.as_bytes());
    h.finish()
}

/// The hash of the id in slot `i`.
fn hash_slot<T>(text: &str, slots: &[(Span, T)], i: u32) -> u64 {
    slots
        .get(i as usize)
        .and_then(|s| text.get(s.0.range()))
        .map_or(0, hash)
}

/// The stages of [`Slots::prefetch`], in the order they must run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Where the slot number is.
    Index,
    /// The slot.
    Slot,
    /// The id's text.
    Text,
}

impl<T: serde::Serialize> serde::Serialize for Slots<T> {
    /// The slots as (id, value) with "" for a free slot, and the free
    /// list; the arena and the index are rebuilt on load.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct All<'a, T>(&'a Slots<T>);
        impl<T: serde::Serialize> serde::Serialize for All<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let slots = self.0;
                s.collect_seq(
                    slots
                        .slots
                        .iter()
                        .map(|(span, v)| (slots.text_of(*span), v)),
                )
            }
        }
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&All(self))?;
        t.serialize_element(&self.free)?;
        t.end()
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Slots<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (all, free): (Vec<(Box<str>, T)>, Vec<u32>) = serde::Deserialize::deserialize(d)?;
        let mut s = Slots {
            text: String::with_capacity(all.iter().map(|(id, _)| id.len()).sum()),
            garbage: 0,
            slots: Vec::with_capacity(all.len()),
            index: SlotIndex::with_capacity(all.len()),
            free,
        };
        for (id, value) in all {
            let span = s.append(&id);
            let i = s.slots.len() as u32;
            s.slots.push((span, value));
            if !id.is_empty() {
                let (text, slots) = (&s.text, &s.slots);
                s.index.insert(hash(&id), i, |j| hash_slot(text, slots, j));
            }
        }
        Ok(s)
    }
}

impl<T> Slots<T> {
    fn text_of(&self, span: Span) -> &str {
        self.text.get(span.range()).unwrap_or("")
    }

    /// Appends an id to the arena.
    fn append(&mut self, id: &str) -> Span {
        let id = match id.char_indices().nth(usize::from(u16::MAX)) {
            Some((cut, _)) => &id[..cut],
            None => id,
        };
        let at = self.text.len();
        self.text.push_str(id);
        Span::new(at, id.len())
    }

    /// The same slots with every value mapped (a snapshot migration):
    /// ids, slot numbers and the index stay as they are.
    pub fn map_values<U>(self, mut f: impl FnMut(T) -> U) -> Slots<U> {
        Slots {
            text: self.text,
            garbage: self.garbage,
            slots: self.slots.into_iter().map(|(s, v)| (s, f(v))).collect(),
            index: self.index,
            free: self.free,
        }
    }

    /// The slot of `id`, if interned.
    pub fn find(&self, id: &str) -> Option<u32> {
        self.find_hashed(hash(id), id)
    }

    fn find_hashed(&self, h: u64, id: &str) -> Option<u32> {
        let (text, slots) = (&self.text, &self.slots);
        self.index
            .find(h, |i| text.get(slots[i as usize].0.range()) == Some(id))
    }

    /// Asks the CPU to start loading what a lookup of `id` reads, one
    /// link of the chain per stage: `Index` (where the slot number is),
    /// then `Slot` (the slot: the id's span and the value), then `Text`
    /// (the id's text). Each stage finds its address through the loads
    /// the previous one started, so the engine runs them a few events
    /// apart. Only a hint: it changes nothing.
    pub fn prefetch(&self, id: &str, stage: Prefetch) {
        let h = hash(id);
        if stage == Prefetch::Index {
            self.index.prefetch(h);
        } else if let Some(i) = self.index.guess(h) {
            self.prefetch_slot(i, stage);
        }
    }

    /// Asks the CPU to start loading slot `i` (`Slot`) or, once that has
    /// arrived, its id's text (`Text`). Only a hint.
    pub fn prefetch_slot(&self, i: u32, stage: Prefetch) {
        let Some(slot) = self.slots.get(i as usize) else {
            return;
        };
        match stage {
            Prefetch::Index => {}
            Prefetch::Slot => prefetch_all(slot),
            Prefetch::Text => {
                let r = slot.0.range();
                let text = self.text.as_bytes();
                for at in [r.start, r.end.saturating_sub(1)] {
                    if let Some(b) = text.get(at) {
                        prefetch(b);
                    }
                }
            }
        }
    }

    /// The slot of `id`, interning it with `make()` if new. Returns the
    /// slot and whether it was created.
    pub fn intern(&mut self, id: &str, make: impl FnOnce() -> T) -> (u32, bool) {
        let h = hash(id);
        if let Some(i) = self.find_hashed(h, id) {
            return (i, false);
        }
        let span = self.append(id);
        let value = (span, make());
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
        let (text, slots) = (&self.text, &self.slots);
        self.index.insert(h, i, |j| hash_slot(text, slots, j));
        (i, true)
    }

    /// Frees a slot; returns its id and value.
    pub fn remove(&mut self, i: u32) -> Option<(Box<str>, T)>
    where
        T: Default,
    {
        let span = self.slots.get(i as usize)?.0;
        if span.is_free() {
            return None;
        }
        let id: Box<str> = Box::from(self.text_of(span));
        let (text, slots) = (&self.text, &self.slots);
        self.index
            .remove(hash(&id), i, |j| hash_slot(text, slots, j));
        let taken = std::mem::take(&mut self.slots[i as usize]);
        self.free.push(i);
        self.garbage += id.len();
        self.compact_if_worth_it();
        Some((id, taken.1))
    }

    /// Rewrites the arena without the text of freed slots once that is
    /// more than half of it. Slot numbers and hashes do not change, so
    /// the index stays valid.
    fn compact_if_worth_it(&mut self) {
        if self.text.len() < MIN_COMPACT || self.garbage * 2 <= self.text.len() {
            return;
        }
        let mut text = String::with_capacity(self.text.len() - self.garbage);
        for (span, _) in &mut self.slots {
            if span.is_free() {
                continue;
            }
            let at = text.len();
            let id = self.text.get(span.range()).unwrap_or("");
            text.push_str(id);
            *span = Span::new(at, id.len());
        }
        self.text = text;
        self.garbage = 0;
    }

    /// The id text of a slot.
    pub fn id(&self, i: u32) -> &str {
        self.slots.get(i as usize).map_or("", |s| self.text_of(s.0))
    }

    /// The value in a slot.
    pub fn get(&self, i: u32) -> Option<&T> {
        self.slots
            .get(i as usize)
            .filter(|s| !s.0.is_free())
            .map(|s| &s.1)
    }

    /// The value in a slot, mutably.
    pub fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.slots
            .get_mut(i as usize)
            .filter(|s| !s.0.is_free())
            .map(|s| &mut s.1)
    }

    /// Number of live slots.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no slot is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live slot numbers.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.0.is_free())
            .map(|(i, _)| i as u32)
    }

    /// Live slot numbers sorted by id text, for deterministic output.
    ///
    /// Ordered by the ids' first two bytes with a counting pass first,
    /// then by whole texts within each group. Comparing texts straight
    /// away costs two cache misses a comparison at a million ids; a group
    /// is small, so its texts are loaded once and compared in cache. The
    /// extra memory is two tables of 65,537 counts, not a key per id.
    /// (A missing byte counts as zero, so "a" and "a\0…" share a group and
    /// the texts decide: the order is exactly the texts' byte order.)
    pub fn sorted(&self) -> Vec<u32> {
        const GROUPS: usize = 1 << 16;
        let group = |i: u32| {
            let id = self.id(i).as_bytes();
            let byte = |k: usize| usize::from(id.get(k).copied().unwrap_or(0));
            (byte(0) << 8) | byte(1)
        };
        let mut start = vec![0u32; GROUPS + 1];
        for i in self.live() {
            start[group(i) + 1] += 1;
        }
        for g in 0..GROUPS {
            start[g + 1] += start[g];
        }
        let mut next = start.clone();
        let mut out = vec![0u32; self.len()];
        for i in self.live() {
            let at = &mut next[group(i)];
            out[*at as usize] = i;
            *at += 1;
        }
        for g in start.windows(2) {
            out[g[0] as usize..g[1] as usize].sort_unstable_by(|&a, &b| self.id(a).cmp(self.id(b)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_frees_and_reuses() {
        let mut s: Slots<u8> = Slots::default();
        let (a, new) = s.intern("a", || 1);
        assert!(new);
        assert_eq!(s.intern("a", || 9), (a, false));
        let (b, _) = s.intern("b", || 2);
        assert_eq!(s.find("b"), Some(b));
        assert_eq!(s.remove(a).map(|x| x.1), Some(1));
        assert_eq!(s.find("a"), None);
        assert_eq!(s.len(), 1);
        let (c, _) = s.intern("c", || 3);
        assert_eq!(c, a, "freed slot is reused");
        assert_eq!(s.sorted(), vec![b, c]);
    }

    proptest::proptest! {
        #[test]
        fn sorts_in_the_texts_byte_order(ids in proptest::collection::btree_set("(device-0|dev|d\\x00?|é)[a-c]{0,12}", 0..60)) {
            let mut s: Slots<()> = Slots::default();
            for id in ids.iter().rev() {
                s.intern(id, || ());
            }
            let sorted: Vec<&str> = s.sorted().into_iter().map(|i| s.id(i)).collect();
            let expected: Vec<&str> = ids.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(sorted, expected);
        }
    }

    #[test]
    fn compacts_freed_text_and_survives_serde() {
        let mut s: Slots<u32> = Slots::default();
        let ids: Vec<String> = (0..20_000).map(|i| format!("device-{i:08}")).collect();
        for (n, id) in ids.iter().enumerate() {
            s.intern(id, || n as u32);
        }
        for id in ids.iter().step_by(3).chain(ids.iter().skip(1).step_by(3)) {
            let slot = s.find(id).expect("interned");
            assert_eq!(s.remove(slot).map(|x| x.0), Some(Box::from(id.as_str())));
        }
        assert!(s.text.len() < 20_000 * 15 / 2, "the arena was compacted");
        for (n, id) in ids.iter().enumerate() {
            let found = s.find(id).and_then(|i| s.get(i)).copied();
            assert_eq!(found, (n % 3 == 2).then_some(n as u32), "{id}");
        }
        let bytes = postcard::to_stdvec(&s).expect("serializes");
        let back: Slots<u32> = postcard::from_bytes(&bytes).expect("deserializes");
        assert_eq!(back.len(), s.len());
        let slot = back.find(&ids[2]).expect("kept");
        assert_eq!(back.id(slot), ids[2]);
        let (again, new) = s.intern(&ids[0], || 7);
        assert!(new);
        assert_eq!(s.id(again), ids[0]);
    }
}
