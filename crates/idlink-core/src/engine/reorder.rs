//! The reorder buffer: events waiting for the watermark, released in key
//! order.
//!
//! A calendar queue: events are appended, unsorted, to one-second slots;
//! a slot is sorted once, when the watermark reaches it. The slots of the
//! next half hour or so are a ring indexed by slot number, where nearly
//! every event lands at the cost of an index; slots further ahead are kept
//! in a small ordered map, so partitions days apart cost nothing extra.
//! Input is typically disordered by minutes, never by more than the
//! allowed lateness, so nearly every event costs an append and its share
//! of one small sort, not a heap's cache-missing sift through every event
//! of the lateness window. The few events whose slot was already sorted
//! go to a heap; releasing merges the heap with the sorted slots, so the
//! order is exactly that of a single priority queue.

use crate::addr::AddressClass;
use crate::event::Event;
use crate::time::Millis;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// Ordering key: `ts`, kind priority, arrival sequence. Unique, because
/// the sequence is.
pub(super) type Key = (Millis, u8, u64);

/// Width of a calendar slot, in milliseconds.
const SLOT_MS: i64 = 1_000;

/// Slots the ring holds, from `next` on: 34 minutes, more than the
/// default lateness of 10 minutes with room for disorder around it.
const NEAR: usize = 2048;

/// An event waiting for the watermark.
#[derive(Debug)]
pub(super) struct Pending {
    /// Arrival sequence, the last part of the key. The rest of the key is
    /// the event's own `ts` and kind, not stored twice.
    pub seq: u64,
    /// The event, inline: boxing it costs an allocation per event.
    pub event: Event,
    /// The class of the event's address, found once when it is buffered:
    /// two prefetch stages and the release each need it. Not in
    /// snapshots; `None` (after a restore, or for an event without an
    /// address) means "classify when needed".
    pub class: Option<AddressClass>,
}

impl Pending {
    /// Where the event sorts.
    pub fn key(&self) -> Key {
        (self.event.ts, self.event.kind.priority(), self.seq)
    }
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.seq == o.seq
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

impl Serialize for Pending {
    /// As `(key, event)`, the layout of snapshots since version 2.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.key(), &self.event).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Pending {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ((_, _, seq), event) = <(Key, Event)>::deserialize(d)?;
        Ok(Pending {
            seq,
            event,
            class: None,
        })
    }
}

/// Events waiting for the watermark.
#[derive(Debug)]
pub(super) struct Reorder {
    /// Sorted events of the slot the release point has reached, in
    /// descending order so the next is popped off the end: the slot's own
    /// vector, sorted in place, with no copy into a queue. Every one is in
    /// a slot below `next`.
    ready: Vec<Pending>,
    /// Events that arrived after their slot was sorted.
    heap: BinaryHeap<Reverse<Pending>>,
    /// Unsorted events of slots `next`, `next + 1`, … (slot number: `ts`
    /// div `SLOT_MS`), fewer than [`NEAR`] of them: an event's slot is
    /// found by subtraction, where a map's search cost a fifth of the
    /// engine's instructions.
    near: VecDeque<Vec<Pending>>,
    /// Unsorted events of slots beyond the ring when they arrived, by slot
    /// number, all at or above `next`. A slot may have events both here
    /// and in `near` (the ring moved on since); sorting it takes both.
    far: BTreeMap<i64, Vec<Pending>>,
    /// The lowest slot number not yet sorted into `ready`.
    next: i64,
    /// Events in `near` and `far`.
    in_slots: usize,
}

impl Default for Reorder {
    fn default() -> Self {
        Reorder {
            ready: Vec::new(),
            heap: BinaryHeap::new(),
            near: VecDeque::new(),
            far: BTreeMap::new(),
            next: i64::MIN,
            in_slots: 0,
        }
    }
}

impl Reorder {
    /// Events waiting.
    pub fn len(&self) -> usize {
        self.ready.len() + self.heap.len() + self.in_slots
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an event.
    pub fn push(&mut self, p: Pending) {
        let slot = p.event.ts.0.div_euclid(SLOT_MS);
        let base = slot.saturating_sub(NEAR as i64 / 2);
        if self.in_slots == 0 && base > self.next {
            // Nothing waits in the ring: it moves to this event, leaving
            // room below for the events before it in time that may come
            // next (the first event, or the first after a gap).
            self.near.clear();
            self.next = base;
        }
        if slot < self.next {
            self.heap.push(Reverse(p));
            return;
        }
        self.in_slots += 1;
        match slot.checked_sub(self.next).map(usize::try_from) {
            Some(Ok(i)) if i < NEAR => {
                if self.near.len() <= i {
                    self.near.resize_with(i + 1, Vec::new);
                }
                self.near[i].push(p);
            }
            _ => self.far.entry(slot).or_default().push(p),
        }
    }

    /// Sorts the next slot with events into `ready` if `ready` is empty.
    fn fill(&mut self) {
        if !self.ready.is_empty() {
            return;
        }
        while self.in_slots > 0 {
            // The ring's first slot is `next`, at or below every slot in
            // `far`; with the ring empty, the next slot is far's first.
            let slot = if self.near.is_empty() {
                match self.far.first_key_value() {
                    Some((&slot, _)) => slot,
                    None => return,
                }
            } else {
                self.next
            };
            let mut events = self.near.pop_front().unwrap_or_default();
            if let Some(more) = self.far.first_entry().filter(|e| *e.key() == slot) {
                events.append(&mut more.remove());
            }
            self.next = slot.saturating_add(1);
            if events.is_empty() {
                continue;
            }
            self.in_slots -= events.len();
            events.sort_unstable_by_key(|p| Reverse(p.key()));
            self.ready = events;
            return;
        }
    }

    /// The smallest key waiting.
    pub fn peek_key(&mut self) -> Option<Key> {
        self.fill();
        match (self.ready.last(), self.heap.peek()) {
            (Some(r), Some(h)) => Some(r.key().min(h.0.key())),
            (Some(r), None) => Some(r.key()),
            (None, Some(h)) => Some(h.0.key()),
            (None, None) => None,
        }
    }

    /// Removes the event with the smallest key.
    pub fn pop(&mut self) -> Option<Pending> {
        self.fill();
        let from_heap = match (self.ready.last(), self.heap.peek()) {
            (Some(r), Some(h)) => h.0.key() < r.key(),
            (None, Some(_)) => true,
            _ => false,
        };
        if from_heap {
            self.heap.pop().map(|r| r.0)
        } else {
            self.ready.pop()
        }
    }

    /// The event `n` places behind the next in the sorted slots, if it is
    /// there. For prefetching only: an event from the heap may come first.
    pub fn ahead(&self, n: usize) -> Option<&Pending> {
        let i = self.ready.len().checked_sub(n + 1)?;
        self.ready.get(i)
    }

    /// Every buffered event with its arrival number, in no order.
    pub fn pending(&self) -> impl Iterator<Item = &Pending> {
        self.ready
            .iter()
            .chain(self.heap.iter().map(|r| &r.0))
            .chain(self.near.iter().flatten())
            .chain(self.far.values().flatten())
    }

    /// Keeps only the events `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Event) -> bool) {
        self.ready.retain(|p| keep(&p.event));
        self.heap.retain(|p| keep(&p.0.event));
        for events in &mut self.near {
            events.retain(|p| keep(&p.event));
        }
        self.far.retain(|_, events| {
            events.retain(|p| keep(&p.event));
            !events.is_empty()
        });
        self.in_slots = self
            .near
            .iter()
            .chain(self.far.values())
            .map(Vec::len)
            .sum();
    }
}

impl Serialize for Reorder {
    /// All waiting events as one sequence, in no particular order.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The length up front: postcard cannot write a sequence without.
        let mut seq = s.serialize_seq(Some(self.len()))?;
        let all = self.ready.iter().chain(self.heap.iter().map(|r| &r.0));
        let waiting = self
            .near
            .iter()
            .flatten()
            .chain(self.far.values().flatten());
        for p in all.chain(waiting) {
            seq.serialize_element(p)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Reorder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let all: Vec<Pending> = Vec::deserialize(d)?;
        let mut r = Reorder::default();
        for p in all {
            r.push(p);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Platform;
    use crate::event::EventKind;
    use proptest::prelude::*;

    fn pending(ts: i64, seq: u64) -> Pending {
        Pending {
            seq,
            event: Event {
                ts: Millis(ts),
                kind: EventKind::Activity,
                device: None,
                account: None,
                ip: None,
                platform: Platform::Unknown,
            },
            class: None,
        }
    }

    #[test]
    fn releases_in_key_order_whatever_the_arrival_order() {
        let mut r = Reorder::default();
        let ts = [5, 1, 9, 9, 3, 12, 2, 15, 14, 20];
        for (seq, &t) in ts.iter().enumerate() {
            r.push(pending(t, seq as u64));
        }
        assert_eq!(r.len(), ts.len());
        let mut out = Vec::new();
        while let Some(k) = r.peek_key() {
            let p = r.pop().map(|p| p.key());
            assert_eq!(p, Some(k));
            out.push(k);
        }
        let mut sorted = out.clone();
        sorted.sort();
        assert_eq!(out, sorted);
        assert!(r.is_empty());
    }

    #[test]
    fn orders_across_the_calendar_the_heap_and_gaps() {
        let mut r = Reorder::default();
        // Far ahead (heap), a gap, out-of-order within a slot, and one that
        // arrives after its slot was sorted.
        let ts = [
            10_000, 9_500, 10_400, 99_000_000, 12_345, -5, 11_000, 10_001,
        ];
        for (seq, &t) in ts.iter().enumerate() {
            r.push(pending(t, seq as u64));
        }
        assert_eq!(r.pop().map(|p| p.key().0.0), Some(-5));
        assert_eq!(r.pop().map(|p| p.key().0.0), Some(9_500));
        r.push(pending(9_900, 100));
        r.push(pending(i64::MAX, 101));
        r.push(pending(i64::MIN, 102));
        let keys: Vec<i64> = std::iter::from_fn(|| r.pop())
            .map(|p| p.key().0.0)
            .collect();
        assert_eq!(
            keys,
            [
                i64::MIN,
                9_900,
                10_000,
                10_001,
                10_400,
                11_000,
                12_345,
                99_000_000,
                i64::MAX
            ]
        );
        assert!(r.is_empty());
    }

    const KINDS: [EventKind; 3] = [EventKind::Activity, EventKind::Erase, EventKind::Login];

    proptest::proptest! {
        /// Whatever the arrival order, the gaps and the interleaving of
        /// pushes and pops, events come out as from one priority queue.
        #[test]
        fn releases_as_a_priority_queue(
            ops in proptest::collection::vec(
                proptest::prop_oneof![
                    6 => ((-3_000_000i64..3_000_000), 0..KINDS.len()).prop_map(Some),
                    1 => (proptest::prelude::any::<i64>(), 0..KINDS.len()).prop_map(Some),
                    3 => proptest::strategy::Just(None),
                ],
                0..400,
            )
        ) {
            let mut r = Reorder::default();
            let mut model = std::collections::BTreeSet::new();
            for (seq, op) in ops.into_iter().enumerate() {
                match op {
                    Some((t, k)) => {
                        let mut p = pending(t, seq as u64);
                        // Equal `ts` sort by kind: privacy first.
                        p.event.kind = KINDS[k];
                        r.push(p);
                        model.insert((Millis(t), KINDS[k].priority(), seq as u64));
                    }
                    None => {
                        prop_assert_eq!(r.peek_key(), model.first().copied());
                        prop_assert_eq!(r.pop().map(|p| p.key()), model.pop_first());
                    }
                }
                prop_assert_eq!(r.len(), model.len());
            }
            let rest: Vec<Key> = std::iter::from_fn(|| r.pop()).map(|p| p.key()).collect();
            prop_assert_eq!(rest, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn round_trips_through_serde() {
        let mut r = Reorder::default();
        for (seq, t) in [4, 2, 8, 1].into_iter().enumerate() {
            r.push(pending(t, seq as u64));
        }
        let bytes = postcard::to_stdvec(&r).expect("serializes");
        let mut back: Reorder = postcard::from_bytes(&bytes).expect("deserializes");
        let keys: Vec<i64> = std::iter::from_fn(|| back.pop())
            .map(|p| p.key().0.0)
            .collect();
        assert_eq!(keys, [1, 2, 4, 8]);
    }
}
