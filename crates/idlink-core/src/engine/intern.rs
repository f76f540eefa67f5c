//! Interning of ids into dense `u32` slots.
//!
//! The engine refers to devices and accounts by slot index everywhere, so
//! the id is stored exactly once, packed ([`Key`]: a UUID in 16 bytes).
//! All ids live back to back in one arena; a slot holds its id's span and
//! form (8 bytes) instead of a boxed string (16 bytes plus a heap block
//! with its header and rounding). The lookup table holds only slot numbers
//! and hashes through the arena ([`SlotIndex`], which can prefetch). Freed
//! bytes are reclaimed by compacting the arena once more than half of it
//! is garbage.

mod sort;

use super::slot_index::{SlotIndex, prefetch, prefetch_all};
use crate::ids::{Form, Key};
use rustc_hash::FxHasher;
use std::hash::Hasher;

/// How many places ahead [`Slots::prefetch_walk`] starts loading a slot.
pub const WALK_SLOT_AHEAD: usize = 8;

/// How many places ahead [`Slots::prefetch_walk`] starts loading an id's
/// text: its slot was asked for four places earlier.
pub const WALK_TEXT_AHEAD: usize = 4;

/// Marker for "no slot" in compact fields.
pub const NONE: u32 = u32::MAX;

/// Arenas smaller than this are never compacted.
const MIN_COMPACT: usize = 1 << 16;

/// Longest id the arena keeps (bytes); longer texts are cut at a
/// character boundary. The decoder refuses ids over
/// `input.max_id_bytes`, at most 4,096.
const MAX_LEN: usize = (1 << 14) - 1;

/// Where a slot's id lies in the arena and how it is packed: offset in
/// the high 48 bits, the [`Form`] in the next 2, the length in the low
/// 14. An empty span marks a free slot.
#[derive(Clone, Copy, Debug, Default)]
struct Span(u64);

impl Span {
    fn new(at: usize, form: Form, len: usize) -> Span {
        Span(((at as u64) << 16) | (u64::from(form as u8) << 14) | len.min(MAX_LEN) as u64)
    }
    fn range(self) -> std::ops::Range<usize> {
        let at = (self.0 >> 16) as usize;
        at..at + (self.0 & MAX_LEN as u64) as usize
    }
    fn form(self) -> Form {
        Form::from_bits(((self.0 >> 14) & 3) as u8)
    }
    fn is_free(self) -> bool {
        self.0 & MAX_LEN as u64 == 0
    }
}

/// Slot storage with an id index and a free list.
#[derive(Debug)]
pub struct Slots<T> {
    /// The packed id of every live slot, back to back.
    text: Vec<u8>,
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
            text: Vec::new(),
            garbage: 0,
            slots: Vec::new(),
            index: SlotIndex::default(),
            free: Vec::new(),
        }
    }
}

#[inline]
fn hash(k: &Key<'_>) -> u64 {
    let mut h = FxHasher::default();
    h.write(k.bytes());
    if k.form() != Form::Text {
        h.write_u8(k.form() as u8);
    }
    h.finish()
}

/// The key stored under `span`.
fn key_at(text: &[u8], span: Span) -> Key<'_> {
    Key::from_parts(span.form(), text.get(span.range()).unwrap_or_default())
}

/// The order of the ids stored under `a` and `b`, as [`Key`]'s: where
/// both are texts, or UUIDs of one case, it is their stored bytes' order,
/// read without building a `Key` (whose text is checked as UTF-8 each
/// time: most of a million-id sort's time went there).
fn cmp_stored(text: &[u8], a: Span, b: Span) -> std::cmp::Ordering {
    if a.form() == b.form() {
        let bytes = |s: Span| text.get(s.range()).unwrap_or_default();
        bytes(a).cmp(bytes(b))
    } else {
        key_at(text, a).cmp(&key_at(text, b))
    }
}

/// The hash of the id in slot `i`.
fn hash_slot<T>(text: &[u8], slots: &[(Span, T)], i: u32) -> u64 {
    slots
        .get(i as usize)
        .map_or(0, |s| hash(&key_at(text, s.0)))
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
    /// The slots as (id text, value) with "" for a free slot, and the
    /// free list; the arena and the index are rebuilt on load.
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
                        .map(|(span, v)| (key_at(&slots.text, *span), v)),
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
            text: Vec::with_capacity(all.iter().map(|(id, _)| id.len()).sum()),
            garbage: 0,
            slots: Vec::with_capacity(all.len()),
            index: SlotIndex::with_capacity(all.len()),
            free,
        };
        for (id, value) in all {
            let key = Key::of(&id);
            let span = s.append(&key);
            let i = s.slots.len() as u32;
            s.slots.push((span, value));
            if !id.is_empty() {
                let (text, slots) = (&s.text, &s.slots);
                s.index.insert(hash(&key), i, |j| hash_slot(text, slots, j));
            }
        }
        Ok(s)
    }
}

impl<T> Slots<T> {
    /// Appends an id to the arena.
    fn append(&mut self, id: &Key<'_>) -> Span {
        let mut bytes = id.bytes();
        if let Key::Text(t) = id
            && t.len() > MAX_LEN
        {
            let cut = (0..=MAX_LEN)
                .rev()
                .find(|&i| t.is_char_boundary(i))
                .unwrap_or(0);
            bytes = &bytes[..cut];
        }
        let at = self.text.len();
        self.text.extend_from_slice(bytes);
        Span::new(at, id.form(), bytes.len())
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
    pub fn find<'k>(&self, id: impl Into<Key<'k>>) -> Option<u32> {
        let id = id.into();
        self.find_hashed(hash(&id), &id)
    }

    fn find_hashed(&self, h: u64, id: &Key<'_>) -> Option<u32> {
        let (text, slots) = (&self.text, &self.slots);
        self.index.find(h, |i| {
            let span = slots[i as usize].0;
            span.form() == id.form() && text.get(span.range()) == Some(id.bytes())
        })
    }

    /// Asks the CPU to start loading what a lookup of `id` reads, one
    /// link of the chain per stage: `Index` (where the slot number is),
    /// then `Slot` (the slot: the id's span and the value), then `Text`
    /// (the id's text). Each stage finds its address through the loads
    /// the previous one started, so the engine runs them a few events
    /// apart. Only a hint: it changes nothing.
    pub fn prefetch<'k>(&self, id: impl Into<Key<'k>>, stage: Prefetch) {
        let h = hash(&id.into());
        if stage == Prefetch::Index {
            self.index.prefetch(h);
        } else if let Some(i) = self.index.guess(h) {
            self.prefetch_slot(i, stage);
        }
    }

    /// Before visiting `order[k]` of a walk that visits the slots in no
    /// memory order (by id, or by group): starts loading the slot
    /// [`WALK_SLOT_AHEAD`] places on and the id's text
    /// [`WALK_TEXT_AHEAD`] places on, whose slot has arrived by then.
    /// Only a hint.
    pub fn prefetch_walk(&self, order: &[u32], k: usize) {
        for (ahead, stage) in [
            (WALK_SLOT_AHEAD, Prefetch::Slot),
            (WALK_TEXT_AHEAD, Prefetch::Text),
        ] {
            if let Some(&i) = order.get(k + ahead) {
                self.prefetch_slot(i, stage);
            }
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
                for at in [r.start, r.end.saturating_sub(1)] {
                    if let Some(b) = self.text.get(at) {
                        prefetch(b);
                    }
                }
            }
        }
    }

    /// The slot of `id`, interning it with `make()` if new. Returns the
    /// slot and whether it was created.
    pub fn intern<'k>(&mut self, id: impl Into<Key<'k>>, make: impl FnOnce() -> T) -> (u32, bool) {
        let id = id.into();
        let h = hash(&id);
        if let Some(i) = self.find_hashed(h, &id) {
            return (i, false);
        }
        let span = self.append(&id);
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
        let key = key_at(&self.text, span);
        let id: Box<str> = key.into();
        let (text, slots) = (&self.text, &self.slots);
        self.index
            .remove(hash(&key), i, |j| hash_slot(text, slots, j));
        let taken = std::mem::take(&mut self.slots[i as usize]);
        self.free.push(i);
        self.garbage += span.range().len();
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
        let mut text = Vec::with_capacity(self.text.len() - self.garbage);
        for (span, _) in &mut self.slots {
            if span.is_free() {
                continue;
            }
            let at = text.len();
            let id = self.text.get(span.range()).unwrap_or_default();
            text.extend_from_slice(id);
            *span = Span::new(at, span.form(), id.len());
        }
        self.text = text;
        self.garbage = 0;
    }

    /// The id of a slot ("" if there is none).
    pub fn id(&self, i: u32) -> Key<'_> {
        self.slots
            .get(i as usize)
            .map_or(Key::Text(""), |s| key_at(&self.text, s.0))
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
        fn sorts_in_the_texts_byte_order(ids in proptest::collection::btree_set(
            "(device-0|dev|d\\x00?|é)[a-c]{0,12}\
            |[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\
            |[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\
            |[0-9a-fA-F]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-fA-F]{11}[-g]?",
            0..60,
        )) {
            let mut s: Slots<()> = Slots::default();
            for id in ids.iter().rev() {
                s.intern(id.as_str(), || ());
            }
            let sorted: Vec<String> = s.sorted().into_iter().map(|i| s.id(i).text().to_string()).collect();
            let expected: Vec<String> = ids.iter().cloned().collect();
            proptest::prop_assert_eq!(sorted, expected);
            for id in &ids {
                let slot = s.find(id.as_str());
                proptest::prop_assert!(slot.is_some(), "{} not found", id);
                let back = slot.map(|i| s.id(i).text().to_string());
                proptest::prop_assert_eq!(back.as_deref(), Some(id.as_str()));
            }
        }
    }

    #[test]
    fn keeps_a_uuid_in_16_bytes_and_gives_its_text_back() {
        let mut s: Slots<u8> = Slots::default();
        let lower = "65fe1ec4-4430-4024-8422-5e4ef9ba55d3";
        let upper = "65FE1EC4-4430-4024-8422-5E4EF9BA55D3";
        let mixed = "65fe1ec4-4430-4024-8422-5E4EF9BA55D3";
        let (a, _) = s.intern(lower, || 1);
        let (b, _) = s.intern(upper, || 2);
        let (c, _) = s.intern(mixed, || 3);
        assert_eq!(
            s.text.len(),
            16 + 16 + 36,
            "two packed, the mixed case as text"
        );
        for (slot, id) in [(a, lower), (b, upper), (c, mixed)] {
            assert_eq!(s.find(id), Some(slot));
            assert_eq!(&*s.id(slot).text(), id);
        }
        assert_eq!(s.remove(b).map(|x| x.0), Some(Box::from(upper)));
        assert_eq!(s.find(upper), None);
        assert_eq!(s.find(lower), Some(a));
    }

    #[test]
    fn compacts_freed_text_and_survives_serde() {
        let mut s: Slots<u32> = Slots::default();
        let ids: Vec<String> = (0..20_000).map(|i| format!("device-{i:08}")).collect();
        for (n, id) in ids.iter().enumerate() {
            s.intern(id, || n as u32);
        }
        for id in ids.iter().step_by(3).chain(ids.iter().skip(1).step_by(3)) {
            let slot = s.find(id.as_str()).expect("interned");
            assert_eq!(s.remove(slot).map(|x| x.0), Some(Box::from(id.as_str())));
        }
        assert!(s.text.len() < 20_000 * 15 / 2, "the arena was compacted");
        for (n, id) in ids.iter().enumerate() {
            let found = s.find(id.as_str()).and_then(|i| s.get(i)).copied();
            assert_eq!(found, (n % 3 == 2).then_some(n as u32), "{id}");
        }
        let bytes = postcard::to_stdvec(&s).expect("serializes");
        let back: Slots<u32> = postcard::from_bytes(&bytes).expect("deserializes");
        assert_eq!(back.len(), s.len());
        let slot = back.find(ids[2].as_str()).expect("kept");
        assert_eq!(&*back.id(slot).text(), ids[2]);
        let (again, new) = s.intern(ids[0].as_str(), || 7);
        assert!(new);
        assert_eq!(&*s.id(again).text(), ids[0]);
    }
}
