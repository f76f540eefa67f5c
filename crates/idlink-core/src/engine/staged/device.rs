//! The device stage: the engine, keyed by device, with its bucket side
//! remote.
//!
//! In a device stage the engine sends each in-order sighting to the bucket
//! stage instead of its own co-location state, takes the evidence of a
//! closed day from the bucket stage's messages, and stops releasing events
//! at a day boundary until every bucket partition has closed the day. The
//! account cap is the account stage's to apply: this stage leaves out of a
//! device's line the links the account stage says are not shown.

use super::{
    AccountPart, Offer, PrivacyCopy, Progress, Sent, Shown, Sighting, StageInput, ToBuckets,
    ToDevices, bucket_partition,
};
use crate::addr::{AddressClassifier, Bucket};
use crate::config::Config;
use crate::engine::early::covers;
use crate::engine::intern::NONE;
use crate::engine::snapshot::read_versioned;
use crate::engine::{Engine, colocation};
use crate::event::{Event, EventKind};
use crate::time::Millis;
use rustc_hash::{FxHashMap, FxHashSet};

/// What the engine needs as a device stage. Stored with the engine in a
/// device partition's snapshot, except the outboxes, which are empty
/// whenever a snapshot is taken.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DeviceSide {
    /// This partition.
    partition: u32,
    /// How many bucket partitions answer each day close.
    bucket_partitions: u32,
    /// Messages for the bucket stage, in order.
    #[serde(skip)]
    out: Vec<ToBuckets>,
    /// Account lines' parts for the account stage.
    #[serde(skip)]
    parts: Vec<AccountPart>,
    /// Numbered messages sent to each bucket partition.
    sent: Vec<u64>,
    /// Numbered messages taken from each bucket partition.
    received: Vec<u64>,
    /// The last offset taken from each input partition.
    offsets: FxHashMap<u32, i64>,
    /// Records read and not taken whose sign-in is previewed (`source`,
    /// `offset`): see [`Engine::preview`]. Not stored: a restored
    /// partition has no previews, and its caller reads those records
    /// again.
    #[serde(skip)]
    previewed: FxHashSet<(u32, i64)>,
    /// Erasures read and not taken (`source`, `offset`, the request),
    /// offered for a preview: a sign-in read after one that covers it
    /// (`early::covers`) is not previewed; every other sign-in is. Not
    /// stored, like `previewed`.
    #[serde(skip)]
    held: Vec<((u32, i64), Event)>,
    /// Stopped before the first event of a later day, at this time.
    stalled: Option<Millis>,
    /// Where the stopped release was going.
    release_to: Millis,
    /// Every sighting before this time has been sent.
    released_to: Millis,
    /// Bucket partitions that have closed the current day, the first
    /// event after it, and their offers.
    closes: u32,
    close_now: Millis,
    closing: Vec<Offer>,
    /// A flush stopped at a day boundary: the watermark it ends with.
    flushing: Option<Millis>,
    /// Flushes requested; answers received for the latest, and offers.
    /// Until every bucket partition has answered, the partition waits.
    flushes: u64,
    /// The round the flush under way completes.
    round: u64,
    awaiting_so_far: bool,
    so_far_answers: u32,
    so_far: Vec<Offer>,
    /// The input ended.
    finished: bool,
    /// The last progress sent.
    #[serde(skip)]
    reported: Option<Progress>,
    /// Links the account stage does not show: device → accounts.
    hidden: FxHashMap<Box<str>, Vec<Box<str>>>,
}

impl DeviceSide {
    /// Whether account `account` shows device `device`.
    pub(crate) fn shows(&self, account: &str, device: &str) -> bool {
        self.hidden
            .get(device)
            .is_none_or(|v| !v.iter().any(|a| &**a == account))
    }
}

impl Engine {
    /// Partition `partition` of a device stage whose days close when all
    /// `bucket_partitions` bucket partitions have closed them.
    pub fn device_stage(
        config: &Config,
        classifier: AddressClassifier,
        partition: u32,
        bucket_partitions: u32,
    ) -> Self {
        let mut e = Engine::new(config, classifier);
        e.stage = Some(Box::new(DeviceSide {
            partition,
            bucket_partitions: bucket_partitions.max(1),
            sent: vec![0; bucket_partitions.max(1) as usize],
            received: vec![0; bucket_partitions.max(1) as usize],
            release_to: Millis::MIN,
            released_to: Millis::MIN,
            ..DeviceSide::default()
        }));
        e
    }

    /// A device stage's partition, if this engine is one.
    pub fn stage_partition(&self) -> Option<u32> {
        self.stage.as_ref().map(|s| s.partition)
    }

    /// Shows the sign-in of a record read but not taken, while this
    /// partition waits for the bucket stage and takes no input: published
    /// with the next changes, as a buffered sign-in is. The caller offers
    /// every record it has read and not taken, once each, in the order
    /// read, privacy requests included: an erasure holds back the
    /// sign-ins read after it that it covers (their device or account, at
    /// or before its `ts`) until it is taken, and any other sign-in shows.
    /// Each record must be taken later ([`Engine::take_input`]) or dropped
    /// ([`Engine::forget_preview`]), in the order read. State is untouched
    /// (an id new to this partition gets its slot, as a buffered
    /// sign-in's does): the graph the partition ends with is the same
    /// whether it previewed or not. Returns whether the record's sign-in
    /// was previewed.
    pub fn preview(&mut self, input: &StageInput) -> bool {
        let StageInput::Event {
            source,
            offset,
            event,
        } = input
        else {
            return false;
        };
        let Some(stage) = self.stage.as_deref_mut() else {
            return false;
        };
        let key = (*source, *offset);
        let taken = stage
            .offsets
            .get(source)
            .is_some_and(|last| *offset <= *last);
        if taken {
            return false;
        }
        if event.kind == EventKind::Erase {
            if !stage.held.iter().any(|(k, _)| *k == key) {
                stage.held.push((key, event.clone()));
            }
            return false;
        }
        if !event.is_sign_in()
            || stage.previewed.contains(&key)
            || stage.held.iter().any(|(_, erase)| covers(erase, event))
        {
            return false;
        }
        if !self.register_early_as(event, true) {
            return false;
        }
        if let Some(stage) = self.stage.as_deref_mut() {
            stage.previewed.insert(key);
        }
        true
    }

    /// A record read will not be taken (its writer was fenced): its
    /// preview, if any, leaves the overlay.
    pub fn forget_preview(&mut self, input: &StageInput) {
        if let StageInput::Event {
            source,
            offset,
            event,
        } = input
            && self.take_preview(*source, *offset)
        {
            self.unpreview(event);
        }
    }

    /// Whether record `offset` of `source` was previewed; forgets it, and
    /// the erasure it is, if one was held for the previews.
    fn take_preview(&mut self, source: u32, offset: i64) -> bool {
        let Some(s) = self.stage.as_deref_mut() else {
            return false;
        };
        if let Some(i) = s.held.iter().position(|(k, _)| *k == (source, offset)) {
            s.held.remove(i);
        }
        !s.previewed.is_empty() && s.previewed.remove(&(source, offset))
    }

    /// Takes the next record of this device partition's input stream
    /// (dropping one already taken).
    pub fn take_input(&mut self, input: StageInput) {
        match input {
            StageInput::Event {
                source,
                offset,
                event,
            } => {
                // Taken first, then unpreviewed: a sign-in buffered now
                // replaces its preview without a change in view.
                let previewed = self.take_preview(source, offset).then(|| event.clone());
                let fresh = match self.stage.as_deref_mut() {
                    Some(stage) => {
                        let last = stage.offsets.entry(source).or_insert(-1);
                        let fresh = offset > *last;
                        *last = (*last).max(offset);
                        fresh
                    }
                    None => true,
                };
                if fresh {
                    self.ingest(source, event);
                }
                if let Some(ev) = previewed {
                    self.unpreview(&ev);
                }
            }
            StageInput::Watermark { source, ts, idle } => {
                if idle {
                    self.sources.caught_up(source, ts);
                    self.advance();
                } else {
                    self.observe(source, ts);
                }
            }
            StageInput::Flush { n } => {
                // Requests of a round reach the partitions from several
                // owners, and one of a later round may arrive first: it
                // stands for the ones before it, and they are dropped.
                if let Some(stage) = self.stage.as_deref_mut()
                    && n > stage.flushes
                {
                    stage.round = n;
                    self.flush();
                }
            }
            StageInput::Finish => self.finish(),
            StageInput::Republish { .. } => {}
        }
    }

    /// Whether every watermark source is caught up and quiet, and none
    /// answers for a resumption: all input has been read.
    pub fn sources_idle(&self) -> bool {
        self.sources.settled()
    }

    /// Flushes this device partition has completed (the next request is
    /// one more).
    pub fn flushes(&self) -> u64 {
        self.stage.as_deref().map_or(0, |s| s.flushes)
    }

    /// Notes that `source` has reached `ts` without an event for this
    /// partition: every device partition follows every input partition,
    /// so all of them agree on the watermark.
    pub fn observe(&mut self, source: u32, ts: Millis) {
        self.sources.saw(source, ts);
        self.advance();
    }

    /// Takes the messages for the bucket stage, addressed and numbered:
    /// `(bucket partition, message)`, ending with this partition's
    /// progress (to every bucket partition) if it changed.
    pub fn take_for_buckets(&mut self) -> Vec<(u32, Sent<ToBuckets>)> {
        let progress = self.progress();
        let Some(stage) = self.stage.as_deref_mut() else {
            return Vec::new();
        };
        if let Some(p) = progress
            && stage.reported != Some(p)
        {
            stage.reported = Some(p);
            stage.out.push(ToBuckets::Progress(p));
        }
        let from = stage.partition;
        let n = stage.bucket_partitions;
        let mut out = Vec::with_capacity(stage.out.len());
        for msg in std::mem::take(&mut stage.out) {
            match msg {
                ToBuckets::Sighting(ref x) => {
                    let to = bucket_partition(x.bucket, n);
                    let seq = next_seq(&mut stage.sent, to);
                    out.push((to, Sent { from, seq, msg }));
                }
                ToBuckets::Privacy(_) => {
                    for to in 0..n {
                        let seq = next_seq(&mut stage.sent, to);
                        out.push((
                            to,
                            Sent {
                                from,
                                seq,
                                msg: msg.clone(),
                            },
                        ));
                    }
                }
                ToBuckets::Progress(_) => {
                    for to in 0..n {
                        out.push((
                            to,
                            Sent {
                                from,
                                seq: 0,
                                msg: msg.clone(),
                            },
                        ));
                    }
                }
            }
        }
        out
    }

    /// Takes the account-line parts for the account stage (filled by
    /// [`Engine::take_changes`]).
    pub fn take_account_parts(&mut self) -> Vec<AccountPart> {
        self.stage
            .as_deref_mut()
            .map(|s| std::mem::take(&mut s.parts))
            .unwrap_or_default()
    }

    /// Takes the privacy requests applied here, for the account stage's
    /// acknowledgement: `(account partition, message)`.
    pub fn take_applied(&mut self) -> Vec<(u32, super::ToAccounts)> {
        let Some((from, n)) = self
            .stage
            .as_deref()
            .map(|s| (s.partition, s.bucket_partitions))
        else {
            return Vec::new();
        };
        self.take_privacy_acks()
            .into_iter()
            .filter_map(|a| {
                let kind = match a.kind {
                    "erase" => crate::event::EventKind::Erase,
                    "opt_out" => crate::event::EventKind::OptOut,
                    "opt_in" => crate::event::EventKind::OptIn,
                    _ => return None,
                };
                let to = super::partition_of(a.id_hash.as_bytes(), n);
                Some((
                    to,
                    super::ToAccounts::Applied(super::Applied {
                        ts: a.ts,
                        kind,
                        device: a.subject == "device",
                        id_hash: a.id_hash,
                        by: (0, from),
                        removed: a.removed,
                    }),
                ))
            })
            .collect()
    }

    /// Takes a message from a bucket partition (one already taken, sent
    /// again by a restored sender, is dropped).
    pub fn deliver(&mut self, sent: Sent<ToDevices>) {
        let Some(stage) = self.stage.as_deref_mut() else {
            return;
        };
        let Some(last) = stage.received.get_mut(sent.from as usize) else {
            return;
        };
        if sent.seq <= *last {
            return;
        }
        *last = sent.seq;
        match sent.msg {
            ToDevices::Closed { now, offers, .. } => {
                stage.closes += 1;
                stage.close_now = if stage.closes == 1 {
                    now
                } else {
                    stage.close_now.min(now)
                };
                stage.closing.extend(offers);
                if stage.closes == stage.bucket_partitions {
                    stage.closes = 0;
                    self.day_closed();
                }
            }
            ToDevices::SoFar {
                flushes, offers, ..
            } => {
                if flushes != stage.flushes {
                    return;
                }
                stage.so_far_answers += 1;
                stage.so_far.extend(offers);
                if stage.so_far_answers == stage.bucket_partitions {
                    stage.so_far_answers = 0;
                    stage.awaiting_so_far = false;
                    if self.current_day != i32::MIN {
                        let day = self.current_day;
                        self.close_provisionally(day);
                    }
                }
            }
        }
    }

    /// Takes the account stage's word on whether an account shows a device.
    pub fn deliver_shown(&mut self, msg: Shown) {
        let Some(stage) = self.stage.as_deref_mut() else {
            return;
        };
        let list = stage.hidden.entry(msg.device.clone()).or_default();
        list.retain(|a| *a != msg.account);
        if !msg.shown {
            list.push(msg.account);
        } else if list.is_empty() {
            stage.hidden.remove(&msg.device);
        }
        if let Some(d) = self.devices.find(&msg.device) {
            self.mark_device(d);
        }
    }

    /// Every bucket partition has closed the current day: decide it, move
    /// to the next, and go on releasing.
    fn day_closed(&mut self) {
        let Some(stage) = self.stage.as_deref_mut() else {
            return;
        };
        let now = stage.close_now;
        // A partition that had nothing of the new day yet has nothing to
        // resume: its release is complete.
        let resume = stage.stalled.take().map(|_| stage.release_to);
        if self.current_day != i32::MIN {
            let day = self.current_day;
            self.close_day(day, now);
        }
        if now != Millis::MAX {
            self.current_day = now.day() as i32;
            if let Some(to) = resume {
                self.release(to);
                self.end_flush();
            }
        }
    }

    /// Whether release must stop before an event of `day`: in a device
    /// stage, until every bucket partition has closed the current day.
    pub(in crate::engine) fn stop_before(&mut self, day: i32, ts: Millis, to: Millis) -> bool {
        let current = self.current_day;
        let Some(stage) = self.stage.as_deref_mut() else {
            return false;
        };
        if day <= current {
            return false;
        }
        stage.stalled = Some(ts);
        stage.release_to = to;
        stage.released_to = stage.released_to.max(ts);
        true
    }

    /// Notes a completed release up to `wm`.
    pub(in crate::engine) fn released(&mut self, wm: Millis) {
        if let Some(stage) = self.stage.as_deref_mut()
            && stage.stalled.is_none()
        {
            stage.released_to = stage.released_to.max(wm);
        }
    }

    /// Sends an in-order sighting to the bucket stage, if this is a device
    /// stage; returns whether it did.
    pub(in crate::engine) fn send_sighting(
        &mut self,
        b: Bucket,
        s: &colocation::Seen,
        kind_priority: u8,
    ) -> bool {
        let Some(stage) = self.stage.as_deref_mut() else {
            return false;
        };
        stage.out.push(ToBuckets::Sighting(Sighting {
            bucket: b,
            device: self.devices.id(s.device).into(),
            account: (s.account != NONE).then(|| self.accounts.id(s.account).into()),
            ts: s.ts,
            priority: kind_priority,
            bot: s.bot,
            signed_in: s.signed_in,
            platform: s.platform,
        }));
        true
    }

    /// Forwards a privacy request just applied to the bucket stage.
    pub(in crate::engine) fn forward_privacy(&mut self, ev: &Event, late: bool) {
        let wm = self.watermark;
        if let Some(stage) = self.stage.as_deref_mut() {
            stage.out.push(ToBuckets::Privacy(PrivacyCopy {
                event: ev.clone(),
                late,
                released_to: stage.released_to.max(wm),
            }));
        }
    }

    /// Flush in a device stage: release everything (across day closes,
    /// which wait for the bucket stage), then ask the bucket stage what the
    /// open day offers so far.
    pub(in crate::engine) fn staged_flush(&mut self, max: Millis) -> bool {
        let Some(stage) = self.stage.as_deref_mut() else {
            return false;
        };
        if max != Millis::MIN && max >= self.watermark {
            stage.flushing = Some(max);
            self.release(max.saturating_add(1));
        } else {
            stage.flushing = Some(Millis::MIN);
        }
        self.end_flush();
        true
    }

    /// Ends a flush once its release is complete.
    fn end_flush(&mut self) {
        let Some(stage) = self.stage.as_deref_mut() else {
            return;
        };
        if stage.stalled.is_some() {
            return;
        }
        let Some(max) = stage.flushing.take() else {
            return;
        };
        if max != Millis::MIN {
            self.watermark = max;
        }
        stage.flushes = stage.round.max(stage.flushes + 1);
        stage.awaiting_so_far = true;
        stage.so_far_answers = 0;
        stage.so_far.clear();
    }

    /// End of input in a device stage: release everything, then the
    /// bucket stage closes the last day for good.
    pub(in crate::engine) fn staged_finish(&mut self) -> bool {
        if self.stage.is_none() {
            return false;
        }
        if self.watermark < Millis::MAX {
            self.release(Millis::MAX);
        }
        if let Some(stage) = self.stage.as_deref_mut() {
            stage.finished = true;
        }
        true
    }

    /// Offers received for a (provisional or real) close, resolved to
    /// slots; accounts this partition has not seen yet are interned.
    pub(in crate::engine) fn staged_offers(
        &mut self,
        provisional: bool,
    ) -> Option<colocation::Offers> {
        let stage = self.stage.as_deref_mut()?;
        let offers = if provisional {
            std::mem::take(&mut stage.so_far)
        } else {
            std::mem::take(&mut stage.closing)
        };
        let mut out = Vec::with_capacity(offers.len());
        for o in offers {
            let Some(d) = self.devices.find(&o.device) else {
                continue;
            };
            let (a, _) = self.accounts.intern(&o.account, Default::default);
            let mut e = o.evidence;
            e.account = a;
            out.push((d, e));
        }
        Some(out)
    }

    /// Adds the account-line parts of the changed accounts.
    pub(in crate::engine) fn staged_parts(&mut self, changed: &[u32], removed: &[Box<str>]) {
        let Some(partition) = self.stage_partition() else {
            return;
        };
        let mut parts: Vec<AccountPart> = removed
            .iter()
            .filter(|id| {
                self.accounts
                    .find(&**id)
                    .is_none_or(|a| !changed.contains(&a))
            })
            .map(|id| AccountPart {
                account: id.clone(),
                partition,
                entries: Vec::new(),
            })
            .collect();
        for &a in changed {
            parts.push(AccountPart {
                account: self.accounts.id(a).into(),
                partition,
                entries: self.account_entries(a).into_iter().map(|e| e.1).collect(),
            });
        }
        if let Some(stage) = self.stage.as_deref_mut() {
            stage.parts.extend(parts);
        }
    }

    /// Whether this device partition waits for the bucket stage (a day
    /// close or a flush's answer). While it waits, its caller hands it
    /// only the bucket stage's messages, never new input: where those
    /// messages fall in its input is then fixed by the input alone, so the
    /// partition is a function of its input streams, and replaying them
    /// after a restore gives the same messages again.
    pub fn waiting_for_buckets(&self) -> bool {
        self.stage
            .as_deref()
            .is_some_and(|s| s.awaiting_so_far || self.day_ended(s))
    }

    /// Whether everything of the current day has been released.
    fn day_ended(&self, stage: &DeviceSide) -> bool {
        // (Before the first day, "all of it" is everything before the
        // watermark: nothing.)
        let end = if self.current_day == i32::MIN {
            Millis::MIN.0 + 1
        } else {
            (i64::from(self.current_day) + 1).saturating_mul(crate::time::DAY_MS)
        };
        stage.stalled.is_some() || stage.released_to.0 >= end
    }

    /// This partition's progress, if it is a device stage.
    fn progress(&self) -> Option<Progress> {
        let stage = self.stage.as_deref()?;
        Some(Progress {
            day: self.current_day,
            upto: stage.stalled.unwrap_or(stage.released_to),
            next: stage.stalled,
            ended: self.day_ended(stage),
            flushes: stage.flushes,
            finished: stage.finished && stage.stalled.is_none(),
        })
    }
}

/// The next number for a message to `to`.
fn next_seq(sent: &mut [u64], to: u32) -> u64 {
    match sent.get_mut(to as usize) {
        Some(s) => {
            *s += 1;
            *s
        }
        None => 0,
    }
}

/// Bumped whenever a device partition's snapshot layout changes, with
/// what each layout still read lacks. 4 added the watermark sources'
/// holds and kind, 3 the phone platform.
const STAGE_VERSIONS: &[(u32, u8)] = &[
    (4, 0),
    (3, crate::format::SOURCE_STATE),
    (2, crate::format::SOURCE_STATE | crate::format::PLATFORM),
];

impl Engine {
    /// A device partition's snapshot: the engine's state and the stage's
    /// (take the outgoing messages first: they are not in it).
    pub fn stage_snapshot(&mut self) -> Vec<u8> {
        self.purge_pending();
        postcard::to_stdvec(&(STAGE_VERSIONS[0].0, &*self, self.stage.as_deref()))
            .unwrap_or_default()
    }

    /// A device partition from its snapshot and the current config.
    pub fn restore_stage(
        config: &Config,
        classifier: AddressClassifier,
        bytes: &[u8],
    ) -> Result<Engine, crate::engine::SnapshotError> {
        let (mut e, stage): (Engine, Option<DeviceSide>) = read_versioned(bytes, STAGE_VERSIONS)?;
        e.adopt(config, classifier);
        e.stage = stage.map(Box::new);
        e.track_changes();
        Ok(e)
    }
}
