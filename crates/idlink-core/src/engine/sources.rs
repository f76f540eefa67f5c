//! Watermark sources: the inputs (files, Kafka partitions) whose greatest
//! `ts` the watermark follows, and when an idle one may be left out.
//!
//! A source that is caught up with its input and quiet is *idle*: it does
//! not hold the watermark back, as in Flink, or one sparse partition would
//! hold every other for ever. Idleness is a guess made from wall-clock
//! quiet, and its weak point is a *resumption*. When input resumes on one
//! source while others are idle (a backlog written to every partition at
//! once after a pause, read by several routers, one of them first), the
//! others' first records may still be on their way. Left out, those
//! sources would let the resumed one run the watermark hours past them,
//! and their records would be late.
//!
//! So a resumption puts every other idle source on *hold*: it counts as
//! an active source again until it has been confirmed idle twice since.
//! A source of device events is held at the greatest `ts` it has read (as
//! if it had never been idle: its backlog may start anywhere after it),
//! or at the resumed source's `ts` if that is earlier. A source of
//! privacy requests is held at the resumed source's `ts` only: requests
//! are never late (one behind the watermark is applied at once), and a
//! sparse privacy partition held at its last request, maybe a day old,
//! would stop the watermark at every resumption of another. Whoever feeds the engine
//! sends a confirmation only when a look at the partition's end, taken
//! after its previous confirmation was delivered, finds it caught up (see
//! the services' `confirm_idle`); the second confirmation after a
//! resumption therefore rests on a look taken after the resumption was
//! seen. A source that resumes itself while held is active again and
//! holds the watermark as any active source does.

use crate::time::Millis;

/// One source: its greatest `ts` and whether it holds the watermark back.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Source {
    /// Caller's id of the source.
    pub(super) id: u32,
    /// Greatest `ts` seen from it.
    pub(super) max_ts: Millis,
    /// Caught up with its input: does not hold the watermark back, unless
    /// held by a resumption.
    pub(super) idle: bool,
    /// Holds of resumptions since it went idle.
    #[serde(deserialize_with = "crate::format::added_source_state")]
    holds: Holds,
    /// Its last event was a privacy request: a partition of requests,
    /// held more lightly.
    #[serde(deserialize_with = "crate::format::added_source_state")]
    requests: bool,
}

/// The resumptions an idle source still answers for: the earliest resumed
/// `ts` that awaits one more confirmation, and the earliest that awaits
/// two. Resumptions that await the same count merge (the earliest `ts`
/// binds), so two slots hold any number of them.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Holds {
    /// Awaits one more confirmation (`Millis::MAX`: none).
    one: Millis,
    /// Awaits two more confirmations (`Millis::MAX`: none).
    two: Millis,
}

impl Default for Holds {
    fn default() -> Self {
        Holds {
            one: Millis::MAX,
            two: Millis::MAX,
        }
    }
}

impl Holds {
    /// The earliest `ts` held, if any.
    fn bound(self) -> Option<Millis> {
        Some(self.one.min(self.two)).filter(|&b| b != Millis::MAX)
    }

    /// A resumption at `ts`: it awaits two confirmations.
    fn add(&mut self, ts: Millis) {
        self.two = self.two.min(ts);
    }

    /// One more confirmation: the holds awaiting one are answered, those
    /// awaiting two now await one.
    fn confirm(&mut self) {
        self.one = self.two;
        self.two = Millis::MAX;
    }
}

impl Source {
    fn new(id: u32, max_ts: Millis, idle: bool) -> Source {
        Source {
            id,
            max_ts,
            idle,
            holds: Holds::default(),
            requests: false,
        }
    }

    /// Where a resumption at `ts` elsewhere holds this idle source.
    fn hold_for(&self, ts: Millis) -> Millis {
        if self.requests {
            ts
        } else {
            ts.min(self.max_ts)
        }
    }

    /// The `ts` this source holds the watermark at: its greatest when
    /// active, its earliest hold when idle and held, none when idle.
    fn bound(&self) -> Option<Millis> {
        if self.idle {
            self.holds.bound()
        } else {
            Some(self.max_ts)
        }
    }
}

/// Every source feeding one engine's watermark, serialized as the plain
/// list.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(super) struct Sources(Vec<Source>);

impl From<Vec<Source>> for Sources {
    fn from(v: Vec<Source>) -> Self {
        Sources(v)
    }
}

impl Sources {
    /// Registers source `id`, active with nothing read yet, unless known.
    pub(super) fn add(&mut self, id: u32) {
        if !self.0.iter().any(|s| s.id == id) {
            self.0.push(Source::new(id, Millis::MIN, false));
        }
    }

    /// Unregisters source `id`.
    pub(super) fn remove(&mut self, id: u32) {
        self.0.retain(|s| s.id != id);
    }

    /// Source `id` carried an event at `ts`, a privacy request or not.
    pub(super) fn saw_event(&mut self, id: u32, ts: Millis, request: bool) {
        self.see(id, ts, Some(request));
    }

    /// Source `id` has read up to `ts` (an event, or a router's word that
    /// it got that far): it is active. If it was idle, or unknown, that is
    /// a resumption, and every other idle source is held.
    pub(super) fn saw(&mut self, id: u32, ts: Millis) {
        self.see(id, ts, None);
    }

    /// [`Sources::saw`], noting what the source carried when known (one
    /// scan: this runs for every event).
    fn see(&mut self, id: u32, ts: Millis, request: Option<bool>) {
        let resumed = match self.0.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.max_ts = s.max_ts.max(ts);
                s.requests = request.unwrap_or(s.requests);
                let was_idle = s.idle;
                s.idle = false;
                s.holds = Holds::default();
                was_idle
            }
            None => {
                let mut s = Source::new(id, ts, false);
                s.requests = request.unwrap_or(false);
                self.0.push(s);
                true
            }
        };
        if resumed {
            for s in self.0.iter_mut().filter(|s| s.idle && s.id != id) {
                let at = s.hold_for(ts);
                s.holds.add(at);
            }
        }
    }

    /// Source `id`, having read up to `ts`, is caught up and quiet. The
    /// first time since it was active it becomes idle; each time after, it
    /// is a confirmation that answers its holds one step. Registers an
    /// unknown source as idle.
    pub(super) fn caught_up(&mut self, id: u32, ts: Millis) {
        match self.0.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.max_ts = s.max_ts.max(ts);
                if s.idle {
                    s.holds.confirm();
                } else {
                    s.idle = true;
                    s.holds = Holds::default();
                }
            }
            None => self.0.push(Source::new(id, ts, true)),
        }
    }

    /// Source `id` holds the watermark back again, without a resumption
    /// (partitions newly assigned, all active at once).
    pub(super) fn activate(&mut self, id: u32) {
        if let Some(s) = self.0.iter_mut().find(|s| s.id == id) {
            s.idle = false;
            s.holds = Holds::default();
        }
    }

    /// How many sources are idle.
    pub(super) fn idle(&self) -> usize {
        self.0.iter().filter(|s| s.idle).count()
    }

    /// The greatest `ts` any source has read.
    pub(super) fn max(&self) -> Option<Millis> {
        self.0.iter().map(|s| s.max_ts).max()
    }

    /// The time the watermark may reach before the allowed lateness: the
    /// least `ts` over active and held sources; when every source is idle
    /// and free, the greatest `ts` read.
    pub(super) fn low(&self) -> Option<Millis> {
        self.0.iter().filter_map(Source::bound).min().or(self.max())
    }

    /// Whether every source is idle and answers for no resumption: all
    /// input has been read.
    pub(super) fn settled(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|s| s.idle && s.holds.bound().is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(n: u32) -> Sources {
        let mut s = Sources::default();
        for id in 0..n {
            s.add(id);
        }
        s
    }

    #[test]
    fn an_idle_source_is_left_out_until_another_resumes() {
        let mut s = sources(2);
        s.saw(0, Millis(100));
        s.saw(1, Millis(50));
        assert_eq!(s.low(), Some(Millis(50)));
        s.caught_up(1, Millis(50));
        assert_eq!(s.low(), Some(Millis(100)), "idle: left out");
        s.caught_up(0, Millis(100));
        assert!(s.settled());
        assert_eq!(s.low(), Some(Millis(100)), "all idle: the greatest");
        // Source 0 resumes with a backlog: source 1 is held where it was.
        s.saw(0, Millis(1_000));
        s.saw(0, Millis(9_000));
        assert_eq!(s.low(), Some(Millis(50)));
        s.caught_up(1, Millis(50));
        assert_eq!(s.low(), Some(Millis(50)), "one confirmation is not enough");
        s.caught_up(1, Millis(50));
        assert_eq!(s.low(), Some(Millis(9_000)), "confirmed twice: left out");
    }

    #[test]
    fn a_partition_of_requests_is_held_at_the_resumption_only() {
        let mut s = sources(2);
        s.saw_event(1, Millis(50), true);
        s.saw_event(0, Millis(100), false);
        s.caught_up(0, Millis(100));
        s.caught_up(1, Millis(50));
        s.saw_event(0, Millis(1_000), false);
        s.saw_event(0, Millis(1_500), false);
        assert_eq!(s.low(), Some(Millis(1_000)), "not at its last request");
        // A source of device events is held where it was.
        s.caught_up(0, Millis(1_500));
        s.saw_event(1, Millis(2_000), true);
        s.caught_up(1, Millis(2_000));
        assert_eq!(s.low(), Some(Millis(1_500)));
    }

    #[test]
    fn a_held_source_that_resumes_holds_as_any_active_one() {
        let mut s = sources(2);
        s.caught_up(0, Millis(10));
        s.caught_up(1, Millis(10));
        s.saw(0, Millis(1_000));
        assert_eq!(s.low(), Some(Millis(10)), "held where it was");
        s.saw(1, Millis(900));
        assert_eq!(s.low(), Some(Millis(900)));
        s.saw(1, Millis(5_000));
        s.saw(0, Millis(6_000));
        assert_eq!(s.low(), Some(Millis(5_000)));
    }

    #[test]
    fn resumptions_awaiting_the_same_count_merge_at_the_earliest() {
        let mut s = sources(3);
        for id in 0..3 {
            s.saw_event(id, Millis(0), true);
            s.caught_up(id, Millis(0));
        }
        s.saw(0, Millis(500));
        s.caught_up(2, Millis(0));
        // Source 2 awaits one more for 500; source 1 resumes at 300, so
        // source 2 now also awaits two for 300.
        s.saw(1, Millis(300));
        assert_eq!(s.low(), Some(Millis(300)));
        s.caught_up(2, Millis(0));
        assert_eq!(s.low(), Some(Millis(300)), "300 awaits one more");
        s.caught_up(2, Millis(0));
        assert_eq!(s.low(), Some(Millis(300)), "source 1 is active at 300");
        s.caught_up(1, Millis(300));
        s.caught_up(0, Millis(500));
        assert!(s.settled());
    }

    #[test]
    fn going_idle_or_reassignment_holds_nothing() {
        let mut s = sources(2);
        s.saw(0, Millis(100));
        s.saw(1, Millis(200));
        s.caught_up(0, Millis(100));
        assert_eq!(s.low(), Some(Millis(200)));
        s.activate(0);
        assert_eq!(s.low(), Some(Millis(100)));
        s.caught_up(0, Millis(100));
        s.caught_up(1, Millis(200));
        s.activate(0);
        s.activate(1);
        assert_eq!(s.low(), Some(Millis(100)), "all active: no resumption");
    }
}
