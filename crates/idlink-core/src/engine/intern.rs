//! Interning of ids into dense `u32` slots.
//!
//! The engine refers to devices and accounts by slot index everywhere, so
//! the id text is stored exactly once, in its slot. The lookup table holds
//! only indices and hashes through the slots (hashbrown's `HashTable`),
//! which keeps the per-id overhead near 10 bytes.

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use std::hash::Hasher;

/// Marker for "no slot" in compact fields.
pub const NONE: u32 = u32::MAX;

/// Slot storage with an id index and a free list.
#[derive(Debug)]
pub struct Slots<T> {
    /// The slots; a free slot has an empty id.
    slots: Vec<(Box<str>, T)>,
    /// Index from id text to slot, hashed through `slots`.
    index: HashTable<u32>,
    /// Freed slot numbers, reused before the vector grows.
    free: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            index: HashTable::new(),
            free: Vec::new(),
        }
    }
}

fn hash(s: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(s.as_bytes());
    h.finish()
}

impl<T: serde::Serialize> serde::Serialize for Slots<T> {
    /// The slots and the free list; the index is rebuilt on load.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.slots, &self.free).serialize(s)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Slots<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (slots, free): (Vec<(Box<str>, T)>, Vec<u32>) = serde::Deserialize::deserialize(d)?;
        let mut index = HashTable::with_capacity(slots.len());
        for (i, (id, _)) in slots.iter().enumerate() {
            if !id.is_empty() {
                index.insert_unique(hash(id), i as u32, |&j| hash(&slots[j as usize].0));
            }
        }
        Ok(Slots { slots, index, free })
    }
}

impl<T> Slots<T> {
    /// The slot of `id`, if interned.
    pub fn find(&self, id: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash(id), |&i| &*slots[i as usize].0 == id)
            .copied()
    }

    /// The slot of `id`, interning it with `make()` if new. Returns the
    /// slot and whether it was created.
    pub fn intern(&mut self, id: &str, make: impl FnOnce() -> T) -> (u32, bool) {
        let h = hash(id);
        let slots = &self.slots;
        if let Some(&i) = self.index.find(h, |&i| &*slots[i as usize].0 == id) {
            return (i, false);
        }
        let value = (Box::from(id), make());
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
        let slots = &self.slots;
        self.index
            .insert_unique(h, i, |&j| hash(&slots[j as usize].0));
        (i, true)
    }

    /// Frees a slot; returns its id and value.
    pub fn remove(&mut self, i: u32) -> Option<(Box<str>, T)>
    where
        T: Default,
    {
        let slot = self.slots.get_mut(i as usize)?;
        if slot.0.is_empty() {
            return None;
        }
        let h = hash(&slot.0);
        if let Ok(entry) = self.index.find_entry(h, |&j| j == i) {
            entry.remove();
        }
        let taken = std::mem::replace(slot, (Box::from(""), T::default()));
        self.free.push(i);
        Some(taken)
    }

    /// The id text of a slot.
    pub fn id(&self, i: u32) -> &str {
        self.slots.get(i as usize).map_or("", |s| &*s.0)
    }

    /// The value in a slot.
    pub fn get(&self, i: u32) -> Option<&T> {
        self.slots
            .get(i as usize)
            .filter(|s| !s.0.is_empty())
            .map(|s| &s.1)
    }

    /// The value in a slot, mutably.
    pub fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.slots
            .get_mut(i as usize)
            .filter(|s| !s.0.is_empty())
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
            .filter(|(_, s)| !s.0.is_empty())
            .map(|(i, _)| i as u32)
    }

    /// Live slot numbers sorted by id text, for deterministic output.
    pub fn sorted(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.live().collect();
        v.sort_unstable_by(|&a, &b| self.id(a).cmp(self.id(b)));
        v
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
}
