//! `idlink run`, partitioned: every instance of the group does a share of
//! the work (ARCHITECTURE.md, "Partitioned scale-out").
//!
//! The group consumes the two input topics and five internal topics of
//! `kafka.stage_partitions` partitions each. The range assignor gives one
//! member partition `j` of every internal topic together: that member runs
//! stage task `j`, the device, bucket and account partitions `j` of the
//! staged engine (`idlink_core::engine::staged`). Input partitions are
//! routed by whoever holds them: decoded (bad records become dead
//! letters) and sent, with their input offsets, to the device partition of
//! their device (privacy requests to all), followed by how far each input
//! partition has got (watermark records).
//!
//! **Nothing is lost or counted twice.** A stage partition is a function
//! of its input streams, and every message it sends is numbered; a task
//! snapshots its three partitions with the offsets it has taken, and one
//! that restarts (a crash, a rebalance) reads its streams again from
//! there, sending again what it had sent, which the receivers drop by
//! number (a router's repeats by input offset). Input offsets are committed
//! only after what they produced is acknowledged.
//!
//! **Stale owners are fenced per task.** A task's new owner claims a new
//! epoch for it with a snapshot before it processes anything, and an owner
//! looks for newer claims before it publishes; its numbered messages would
//! be dropped as repeats anyway, since it computes exactly what the new
//! owner computes.

use super::config::ServiceConfig;
use super::kafka::{LOOK_EVERY, PartitionState, ProducerHealth, ServiceContext, consumer_config};
use super::outbox::{Outbox, Outgoing, Written, dead_letter, decode, source, wall_clock};
use super::purge::Purger;
use super::snapshots::Snapshots;
use super::telemetry::{BatchOutput, InputStamp, Telemetry};
use crate::settings::Settings;
use anyhow::{Context, Result};
use futures::future::try_join_all;
use idlink_core::engine::staged::{
    self, AccountStage, BucketStage, Sent, Shown, StageInput, ToAccounts, ToBuckets, ToDevices,
    partition_of,
};
use idlink_core::{Decoder, Engine, Millis};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// The internal topics, in the order of a task's positions.
const DEVICE_EVENTS: usize = 0;
const EVIDENCE: usize = 1;
const SHOWN: usize = 2;
const SIGHTINGS: usize = 3;
const LINKS: usize = 4;
const SUFFIXES: [&str; 5] = ["device-events", "evidence", "shown", "sightings", "links"];

/// Longest time between two looks for newer claims before publishing.
const FENCE_CHECK: Duration = Duration::from_millis(500);

/// Queued input above which a task's device-events partition is paused.
const QUEUE_HIGH: usize = 100_000;

/// Most messages in one record of the sightings topic (a sighting is
/// about 60 bytes encoded, so a record stays far below the brokers'
/// message size limit). A device partition sends each bucket partition
/// one record per publish, so a burst of releases costs the brokers and
/// the bucket stage a few records, not one per sighting.
const SIGHTINGS_PER_RECORD: usize = 1_000;

/// Who wrote a record of an internal topic: the stage task whose owner
/// wrote it and the epoch that owner claimed the task at. It is the key of
/// every record a task's owner writes; routed input has no key.
type Tag = (u32, u64);

/// Per internal topic, the newest epoch taken from each sending task.
type Epochs = [BTreeMap<u32, u64>; 5];

/// A record of a stream that the device partition takes in its own time.
struct Queued<T> {
    /// Its offset: where a restore resumes if it is not taken yet.
    offset: i64,
    /// Who wrote it (routed input: nobody).
    tag: Option<Tag>,
    /// The message; `None`: a new owner's claim.
    msg: Option<T>,
    /// A routed event's input record timestamp.
    ts: Option<i64>,
}

impl<T> Queued<T> {
    /// A record with no input timestamp.
    fn new(offset: i64, tag: Option<Tag>, msg: Option<T>) -> Self {
        Queued {
            offset,
            tag,
            msg,
            ts: None,
        }
    }
}

/// One stage task: partition `j` of each stage, and where it is in each of
/// its five streams.
struct Task {
    /// The device partition.
    de: Engine,
    /// The bucket partition.
    be: BucketStage,
    /// The account partition.
    acc: AccountStage,
    /// Device-events records read and not yet taken (taken only while the
    /// device partition does not wait).
    inputs: VecDeque<Queued<StageInput>>,
    /// How many records at the front of `inputs` have been offered for a
    /// preview while the device partition waited (their sign-ins shown
    /// before they are taken: `Engine::preview`).
    previewed: usize,
    /// Evidence records read and not yet taken (taken only while it
    /// waits).
    evidence: VecDeque<Queued<Sent<ToDevices>>>,
    /// Input timestamps of the routed events taken since the last
    /// publish: their effects are published with it (the latency
    /// histograms).
    taken_ts: Vec<InputStamp>,
    /// Next offset to read, per internal topic; -1: the partition's first
    /// record, whatever its offset (a task that starts empty).
    read: [i64; 5],
    /// This task's snapshots and epoch.
    store: Snapshots,
    /// The newest epoch taken from each sending task, per internal topic
    /// (as of the positions). A record of an older epoch landed after the
    /// sender's new owner claimed it (every new owner first writes a claim
    /// to every partition it sends to): its old owner was frozen past its
    /// session timeout and woke, and the record is dropped. Taking the
    /// same stream again from the same position drops the same records.
    epochs: Epochs,
    /// Output keys written since this instance last made sure it owned
    /// the task: should it find it does not, those records may have landed
    /// after the new owner's, and it asks the new owner to write them again
    /// ([`StageInput::Republish`]).
    written: Written,
    /// Something changed since the last snapshot.
    dirty: bool,
    /// When it last took a device event.
    last_input: Instant,
    /// A flush was requested since the last device event.
    flush_asked: bool,
    /// Its device-events partition is paused (backpressure).
    paused: bool,
    /// Since when its device partition waits for the bucket stage.
    waiting_since: Option<Instant>,
    /// Waits ended since the last publish, in seconds: the telemetry's
    /// (where sign-ins queue: nothing is taken while it waits).
    waits: Vec<f64>,
}

impl Task {
    /// Next offset to take per internal topic: where a restore resumes.
    fn positions(&self) -> [i64; 5] {
        let mut p = self.read;
        if let Some(q) = self.inputs.front() {
            p[DEVICE_EVENTS] = q.offset;
        }
        if let Some(q) = self.evidence.front() {
            p[EVIDENCE] = q.offset;
        }
        p
    }

    /// Lets the device partition take what it may: the bucket stage's
    /// messages while it waits for them, input while it does not.
    fn drive(&mut self) {
        loop {
            let waiting = self.de.waiting_for_buckets();
            match (waiting, self.waiting_since) {
                (true, None) => self.waiting_since = Some(Instant::now()),
                (false, Some(since)) => {
                    self.waits.push(since.elapsed().as_secs_f64());
                    self.waiting_since = None;
                }
                _ => {}
            }
            if waiting {
                let Some(q) = self.evidence.pop_front() else {
                    self.preview();
                    return;
                };
                self.dirty = true;
                if let Some(msg) = q.msg.filter(|_| admit(&mut self.epochs[EVIDENCE], q.tag)) {
                    self.de.deliver(msg);
                }
            } else {
                let Some(q) = self.inputs.pop_front() else {
                    return;
                };
                self.previewed = self.previewed.saturating_sub(1);
                self.dirty |= !q.msg.as_ref().is_some_and(is_idle_confirmation);
                let admitted = admit(&mut self.epochs[DEVICE_EVENTS], q.tag);
                let Some(input) = q.msg else {
                    continue;
                };
                if !admitted {
                    self.de.forget_preview(&input);
                    continue;
                }
                match &input {
                    StageInput::Event { event, .. } => {
                        self.last_input = Instant::now();
                        self.flush_asked = false;
                        self.taken_ts.extend(q.ts.map(|ts_ms| InputStamp {
                            ts_ms,
                            sign_in: event.is_sign_in(),
                        }));
                    }
                    // Whoever asked, this partition has flushed since its
                    // last event: it need not ask for another round.
                    StageInput::Flush { n } if *n > self.de.flushes() => {
                        self.flush_asked = true;
                    }
                    _ => {}
                }
                self.de.take_input(input);
            }
        }
    }

    /// While the device partition waits for the bucket stage, shows the
    /// sign-ins read meanwhile (published with the next batch, which ends
    /// their latency), except those an erasure read before them covers
    /// (`Engine::preview`, which is offered every record once).
    fn preview(&mut self) {
        while let Some(q) = self.inputs.get_mut(self.previewed) {
            if let Some(input) = &q.msg
                && self.de.preview(input)
            {
                self.taken_ts.extend(q.ts.take().map(|ts_ms| InputStamp {
                    ts_ms,
                    sign_in: true,
                }));
            }
            self.previewed += 1;
        }
    }
}

/// Header of a routed event: its input record's timestamp (ms), for the
/// ingest-to-publish latency. (Not the internal record's own timestamp,
/// which decides its retention.)
const INGESTED: &str = "ingested-ms";

/// The input record's timestamp a routed event carries.
fn ingested(m: &impl Message) -> Option<i64> {
    m.headers()?
        .iter()
        .find(|h| h.key == INGESTED)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// The key of a record task `j`'s owner writes at `epoch`.
fn tag_key(j: u32, epoch: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(12);
    key.extend(j.to_be_bytes());
    key.extend(epoch.to_be_bytes());
    key
}

/// The tag in an internal record's key (routed input has none).
fn read_tag(key: &[u8]) -> Option<Tag> {
    let (j, e) = key.split_at_checked(4)?;
    Some((
        u32::from_be_bytes(j.try_into().ok()?),
        u64::from_be_bytes(e.try_into().ok()?),
    ))
}

/// Whether a record tagged `tag` is taken, given the newest epoch taken
/// from each sender (which it updates): not if its sender has been claimed
/// at a newer epoch since.
fn admit(newest: &mut BTreeMap<u32, u64>, tag: Option<Tag>) -> bool {
    let Some((from, epoch)) = tag else {
        return true;
    };
    let seen = newest.entry(from).or_insert(epoch);
    if epoch < *seen {
        return false;
    }
    *seen = epoch;
    true
}

/// Whether a device partition's input record is an idle mark or
/// confirmation. Sent every few seconds for as long as a partition is
/// idle, they alone must not snapshot an idle task again and again. They
/// change only the sources' idleness and holds (`sources.rs` in the
/// core), and a restart reads them again after the task's last snapshot,
/// which rebuilds the same state.
fn is_idle_confirmation(x: &StageInput) -> bool {
    matches!(x, StageInput::Watermark { idle: true, .. })
}

/// A routed input partition.
struct Route {
    /// Its watermark source id.
    source: u32,
    /// Greatest `ts` read.
    max_ts: Millis,
    /// `max_ts` moved since the last watermark record.
    moved: bool,
    /// When it last delivered a record (or was assigned).
    last_seen: Instant,
    /// Marked idle and not heard from since.
    idle: bool,
    /// An idle mark or confirmation was sent and is not yet known to be
    /// delivered.
    undelivered: bool,
    /// The statistics report the next idle confirmation must rest on, at
    /// least: two after the one current when the last was delivered.
    confirm_from: u64,
    /// Next offset to commit once the batch is acknowledged.
    commit: Option<i64>,
}

/// The partitioned service's state.
pub struct Partitioned {
    /// Service settings.
    cfg: ServiceConfig,
    /// Engine config and classifier, to build and restore partitions.
    settings: Settings,
    /// Input validation.
    decoder: Decoder,
    /// The group consumer of the input and internal topics.
    consumer: Arc<StreamConsumer<ServiceContext>>,
    /// Producer and unacknowledged records.
    outbox: Outbox,
    /// The stage tasks' snapshot producer, shared by their stores.
    snapshot_producer: FutureProducer,
    /// Deletes the internal records below the tasks' acknowledged
    /// snapshots.
    purger: Purger,
    /// Metrics and readiness.
    telemetry: Arc<Telemetry>,
    /// Assignment and lag, from librdkafka callbacks.
    partitions: Arc<PartitionState>,
    /// The internal topics' names.
    internal: [String; 5],
    /// Partitions of each stage.
    n: u32,
    /// Every input partition's watermark source: each device partition
    /// waits for all of them.
    sources: Vec<u32>,
    /// Stage tasks held, by partition.
    tasks: BTreeMap<u32, Task>,
    /// Input partitions held.
    routes: BTreeMap<(String, i32), Route>,
    /// Assignment generation acted on.
    generation: u64,
    /// Messages handled since the last publish.
    batch_len: usize,
    /// When the open batch started.
    batch_started: Instant,
    /// When newer claims were last looked for.
    last_fence_check: Instant,
    /// The published batch whose acknowledgements are still awaited: the
    /// loop reads the next batch meanwhile, and settles it before it
    /// publishes again (one batch in flight).
    unsettled: Option<Unsettled>,
    /// The wall clock for input validation's future-skew check, read when
    /// a batch starts or the loop wakes without a message, not per record.
    wall_now: Millis,
}

/// What waits for a published batch's acknowledgements: then its input
/// offsets are committed and its output observed.
#[derive(Default)]
struct Unsettled {
    /// Routed input offsets to commit.
    commits: Vec<(String, i32, i64)>,
    /// What it wrote, for the telemetry.
    output: BatchOutput,
}

impl Partitioned {
    /// Creates the clients and the topics.
    pub async fn start(
        settings: &Settings,
        cfg: ServiceConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Partitioned> {
        let k = &cfg.kafka;
        let internal: [String; 5] = SUFFIXES.map(|s| format!("{}-{s}", k.internal_topic_prefix));
        let (events, privacy) = super::kafka::ensure_topics(k, &internal).await?;
        let partitions = Arc::new(PartitionState::default());
        let context = ServiceContext {
            telemetry: telemetry.clone(),
            partitions: partitions.clone(),
        };
        let mut cc = consumer_config(k);
        // Partition j of every internal topic goes to one member.
        cc.set("partition.assignment.strategy", "range");
        // The stages answer each other (a day closes in a round trip
        // through two internal topics): a fetch must not sit idle for
        // librdkafka's default 500 ms waiting for more data.
        if !k.consumer.contains_key("fetch.wait.max.ms") {
            cc.set("fetch.wait.max.ms", "10");
        }
        let consumer: StreamConsumer<ServiceContext> = cc
            .create_with_context(context)
            .context("creating the consumer")?;
        let producer: FutureProducer<ProducerHealth> = super::kafka::output_producer_config(k)
            .create_with_context(ProducerHealth {
                telemetry: telemetry.clone(),
                partitions: partitions.clone(),
            })
            .context("creating the producer")?;
        let snapshot_producer = Snapshots::producer(k)?;
        let purger = Purger::new(k, telemetry.clone())?;
        let sources = (0..events as i32)
            .map(|p| source(0, p))
            .chain((0..privacy as i32).map(|p| source(1, p)))
            .collect();
        Ok(Partitioned {
            decoder: Decoder::new(&settings.core.input),
            settings: settings.clone(),
            n: k.stage_partitions as u32,
            cfg,
            consumer: Arc::new(consumer),
            outbox: Outbox::new(producer),
            snapshot_producer,
            purger,
            telemetry,
            partitions,
            internal,
            sources,
            tasks: BTreeMap::new(),
            routes: BTreeMap::new(),
            generation: 0,
            batch_len: 0,
            batch_started: Instant::now(),
            unsettled: None,
            wall_now: wall_clock(),
            last_fence_check: Instant::now(),
        })
    }

    /// Runs until shutdown. The caller drops `self` (see
    /// [`super::kafka::leave_group`]).
    pub async fn run(&mut self, mut shutdown: broadcast::Receiver<()>) -> Result<()> {
        let k = self.cfg.kafka.clone();
        let mut topics: Vec<&str> = vec![&k.events_topic, &k.privacy_topic];
        topics.extend(self.internal.iter().map(String::as_str));
        self.consumer.subscribe(&topics).context("subscribing")?;
        let rt = self.cfg.service.clone();
        let batch_max = Duration::from_millis(rt.batch_max_ms);
        let snapshot_every = Duration::from_secs(rt.snapshot_interval_seconds);
        let mut last_snapshot = Instant::now();
        let mut last_look = Instant::now();
        // Its own handle: a message borrowed from it (not copied out) is
        // handled while `self` changes.
        let consumer = self.consumer.clone();
        loop {
            self.follow_assignment().await?;
            self.update_readiness();
            let wait = if self.batch_len > 0 {
                batch_max.saturating_sub(self.batch_started.elapsed())
            } else {
                batch_max
            };
            let next = tokio::select! {
                _ = shutdown.recv() => break,
                r = tokio::time::timeout(wait.max(Duration::from_millis(1)), consumer.recv()) => r,
            };
            match next {
                Ok(Ok(m)) => {
                    // A rebalance runs inside the poll that returns the first
                    // message of its partitions: act on it first.
                    self.follow_assignment().await?;
                    self.handle(&m)?;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => self.wall_now = wall_clock(),
            }
            if last_look.elapsed() >= LOOK_EVERY {
                last_look = Instant::now();
                // One copy of the lag statistics for both looks.
                let lag = self.partitions.lag_now();
                self.mark_idle_routes(&lag);
                self.request_flushes(&lag)?;
            }
            if self.batch_len >= rt.batch_max_messages || self.batch_started.elapsed() >= batch_max
            {
                self.publish().await?;
            }
            if last_snapshot.elapsed() >= snapshot_every {
                self.checkpoint().await?;
                last_snapshot = Instant::now();
            }
        }
        tracing::info!("shutting down: publishing, snapshotting, committing");
        self.telemetry.set_ready(false, "shutting down");
        // Step by step, each logged: a stop that runs out its deadline
        // says which wait it was in.
        self.publish().await?;
        self.settle().await?;
        tracing::info!("shutting down: output acknowledged");
        self.checkpoint().await?;
        tracing::info!("shutting down: tasks snapshotted, offsets committed");
        self.purger.finish(Duration::from_secs(5)).await;
        tracing::info!("shut down");
        Ok(())
    }

    /// Acts on a new assignment: restores the tasks it adds, drops the
    /// ones it takes away, and starts routing the input partitions it adds.
    async fn follow_assignment(&mut self) -> Result<()> {
        let Some(a) = self.partitions.assignment_since(self.generation) else {
            return Ok(());
        };
        self.generation = a.generation;
        if a.revoked {
            return Ok(());
        }
        // What this instance wrote is acknowledged before it asks anyone
        // to write records again or claims a task anew.
        self.settle().await?;
        let k = self.cfg.kafka.clone();
        let held: BTreeSet<u32> = a
            .partitions
            .iter()
            .filter(|(t, _)| *t == self.internal[DEVICE_EVENTS])
            .map(|(_, p)| *p as u32)
            .collect();
        for j in self.tasks.keys().copied().collect::<Vec<_>>() {
            if held.contains(&j) {
                continue;
            }
            tracing::info!(task = j, "stage task revoked: dropping its state");
            if let Some(mut t) = self.tasks.remove(&j)
                && superseded(&mut t.store).await
            {
                // Claimed by another instance before this one heard of the
                // rebalance: it was frozen, and may have written late.
                self.ask_republish(j, t.written)?;
            }
        }
        for &j in &held {
            let stale = match self.tasks.get_mut(&j) {
                Some(t) => superseded(&mut t.store).await,
                None => true,
            };
            if stale {
                // Held again after another instance held it: what this one
                // wrote before may have landed after the other's records.
                if let Some(t) = self.tasks.remove(&j) {
                    self.ask_republish(j, t.written)?;
                }
                self.restore(j).await?;
            }
        }
        let inputs: Vec<(String, i32)> = a
            .partitions
            .iter()
            .filter(|(t, _)| *t == k.events_topic || *t == k.privacy_topic)
            .cloned()
            .collect();
        self.routes.retain(|tp, _| inputs.contains(tp));
        // A rebalance paused every partition: none has been quiet since.
        for r in self.routes.values_mut() {
            r.last_seen = Instant::now();
        }
        for (t, p) in inputs {
            let topic_index = u32::from(t != k.events_topic);
            self.routes.entry((t, p)).or_insert(Route {
                source: source(topic_index, p),
                max_ts: Millis::MIN,
                moved: false,
                last_seen: Instant::now(),
                idle: false,
                undelivered: false,
                confirm_from: 0,
                commit: None,
            });
        }
        Ok(())
    }

    /// Restores task `j` from its newest snapshot (or starts it empty),
    /// claims a new epoch for it with a snapshot, and seeks its streams.
    async fn restore(&mut self, j: u32) -> Result<()> {
        let s = &self.settings;
        let mut kafka = self.cfg.kafka.clone();
        kafka.group_id = format!("{}#stage-{j}", kafka.group_id);
        let mut store =
            Snapshots::with_producer(&kafka, &self.cfg.service, self.snapshot_producer.clone())?;
        let started = Instant::now();
        // Claimed before the state is read, so that the previous owner
        // either sees the claim or has its last snapshot read here
        // (`purge.rs`).
        store.claim_ahead().await?;
        let (de, be, acc, epochs, read) = match store.load(&self.telemetry).await? {
            Some((bytes, manifest)) => {
                let (d, b, a, epochs): (Vec<u8>, Vec<u8>, Vec<u8>, Epochs) =
                    staged::decode(&bytes).context("a stage snapshot does not decode")?;
                let de = Engine::restore_stage(&s.core, s.classifier.clone(), &d)
                    .context("restoring a device partition")?;
                let be =
                    BucketStage::restore(&s.core, &b).context("restoring a bucket partition")?;
                let acc = AccountStage::restore(s.core.linking.max_devices_per_account, &a)
                    .context("restoring an account partition")?;
                let mut read = [0i64; 5];
                for (i, name) in self.internal.iter().enumerate() {
                    read[i] = manifest
                        .positions
                        .get(&format!("{name}/{j}"))
                        .copied()
                        .unwrap_or(0);
                }
                (de, be, acc, epochs, read)
            }
            None => {
                let mut de = Engine::device_stage(&s.core, s.classifier.clone(), j, self.n);
                for &src in &self.sources {
                    de.add_source(src);
                }
                de.track_changes();
                let be = BucketStage::new(&s.core, j, self.n);
                let acc = AccountStage::new(s.core.linking.max_devices_per_account, self.n);
                (de, be, acc, Epochs::default(), [-1; 5])
            }
        };
        let epoch = store.claim();
        let mut task = Task {
            de,
            be,
            acc,
            inputs: VecDeque::new(),
            previewed: 0,
            evidence: VecDeque::new(),
            taken_ts: Vec::new(),
            read,
            store,
            epochs,
            written: Written::default(),
            dirty: true,
            last_input: Instant::now(),
            flush_asked: false,
            waiting_since: None,
            waits: Vec::new(),
            paused: false,
        };
        save(&mut task, &self.internal, j).await?;
        // The claim, in every stream this task writes to, ahead of its
        // first record: from here on a record of an older epoch is stale.
        let key = tag_key(j, epoch);
        let mut claims = Vec::new();
        for t in [DEVICE_EVENTS, EVIDENCE, SHOWN, SIGHTINGS, LINKS] {
            claims.extend((0..self.n).map(|p| (t, p)));
        }
        for (t, p) in claims {
            let out = Outgoing::internal(&self.internal[t], p, Vec::new()).keyed(key.clone());
            self.outbox.send(out)?;
        }
        for (i, name) in self.internal.iter().enumerate() {
            seek(&self.consumer, name, j as i32, task.read[i]).await;
        }
        tracing::info!(
            task = j,
            epoch,
            devices = task.de.device_count(),
            seconds = started.elapsed().as_secs_f64(),
            "stage task restored"
        );
        self.tasks.insert(j, task);
        Ok(())
    }

    fn update_readiness(&self) {
        let down = self.partitions.brokers_down.load(Ordering::Relaxed);
        let idle = self.tasks.is_empty() && self.routes.is_empty();
        let why = if down {
            "brokers unreachable"
        } else if idle {
            "no partitions assigned"
        } else {
            "restored and assigned"
        };
        self.telemetry.set_ready(!down && !idle, why);
    }

    /// Handles one record of any subscribed topic.
    fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<()> {
        let topic = m.topic();
        let k = &self.cfg.kafka;
        if topic == k.events_topic || topic == k.privacy_topic {
            return self.route(m);
        }
        let Some(t) = self.internal.iter().position(|x| x == topic) else {
            return Ok(());
        };
        let j = m.partition() as u32;
        let Some(task) = self.tasks.get_mut(&j) else {
            self.telemetry.skipped(topic);
            return Ok(());
        };
        let offset = m.offset();
        if offset < task.read[t] {
            // Delivered again after a seek or a rejoin: already taken.
            return Ok(());
        }
        if task.read[t] >= 0 && offset > task.read[t] {
            // Fetched from an older position before the seek took hold:
            // go back to where the task is, never skip records.
            let at = Offset::Offset(task.read[t]);
            if let Err(e) = self
                .consumer
                .seek(topic, j as i32, at, Duration::from_secs(10))
            {
                tracing::warn!(topic, partition = j, error = %e, "seeking back failed");
            }
            return Ok(());
        }
        task.read[t] = offset + 1;
        self.batch_len += 1;
        let tag = m.key().and_then(read_tag);
        // Only routed events carry an input timestamp.
        let queued = |msg| Queued {
            ts: ingested(m),
            ..Queued::new(offset, tag, msg)
        };
        let payload = m.payload().unwrap_or_default();
        // A claim (no payload) is only a tag. The queued streams admit a
        // record when they take it; the others, now.
        let claim = payload.is_empty();
        let decoded = match t {
            DEVICE_EVENTS if claim => {
                task.dirty = true;
                task.inputs.push_back(queued(None));
                Ok(())
            }
            DEVICE_EVENTS => staged::decode::<StageInput>(payload).map(|x| match x {
                // Not part of the computation: acted on as read.
                StageInput::Republish { devices, accounts } => {
                    task.de.republish(&devices, &[]);
                    task.acc.republish(&accounts);
                }
                x => {
                    task.dirty |= !is_idle_confirmation(&x);
                    task.inputs.push_back(queued(Some(x)));
                }
            }),
            EVIDENCE if claim => {
                task.evidence.push_back(Queued::new(offset, tag, None));
                Ok(())
            }
            EVIDENCE => staged::decode::<Sent<ToDevices>>(payload).map(|x| {
                task.evidence.push_back(Queued::new(offset, tag, Some(x)));
            }),
            _ if !admit(&mut task.epochs[t], tag) || claim => Ok(()),
            SHOWN => staged::decode::<Shown>(payload).map(|x| task.de.deliver_shown(x)),
            SIGHTINGS => staged::decode_batch::<Sent<ToBuckets>>(payload)
                .map(|batch| batch.into_iter().for_each(|x| task.be.receive(x))),
            _ => staged::decode::<ToAccounts>(payload).map(|x| task.acc.receive(x)),
        };
        if t != DEVICE_EVENTS || decoded.is_err() {
            task.dirty = true;
        }
        if let Err(e) = decoded {
            // Only idlink writes these topics: a record it cannot read is
            // a bug or a foreign writer, never input to reject.
            tracing::error!(topic, partition = j, offset, error = %e, "internal record skipped");
        }
        task.drive();
        let (queued, paused) = (task.inputs.len(), task.paused);
        if queued > QUEUE_HIGH && !paused {
            self.pause(j, true)?;
        } else if queued < QUEUE_HIGH / 4 && paused {
            self.pause(j, false)?;
        }
        Ok(())
    }

    /// Pauses or resumes task `j`'s device-events partition.
    fn pause(&mut self, j: u32, pause: bool) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.internal[DEVICE_EVENTS], j as i32);
        if pause {
            self.consumer.pause(&tpl)?;
        } else {
            self.consumer.resume(&tpl)?;
        }
        if let Some(t) = self.tasks.get_mut(&j) {
            t.paused = pause;
        }
        Ok(())
    }

    /// Routes one input record: to its device's partition (a privacy
    /// request to every partition), or to the dead letters.
    fn route(&mut self, m: &BorrowedMessage<'_>) -> Result<()> {
        let topic = m.topic();
        let (partition, offset) = (m.partition(), m.offset());
        // A handful of routes: a scan finds one without building a key.
        let Some(r) = self
            .routes
            .iter_mut()
            .find(|((t, p), _)| t == topic && *p == partition)
            .map(|(_, r)| r)
        else {
            self.telemetry.skipped(topic);
            return Ok(());
        };
        r.last_seen = Instant::now();
        if r.idle {
            // Active again: every device partition must hear it.
            r.idle = false;
            r.moved = true;
        }
        r.commit = Some(offset + 1);
        let src = r.source;
        self.batch_len += 1;
        let privacy = topic == self.cfg.kafka.privacy_topic;
        match decode(&self.decoder, m, topic, privacy, self.wall_now) {
            Ok(ev) => {
                self.telemetry.accepted(topic);
                if ev.ts > r.max_ts {
                    r.max_ts = ev.ts;
                    r.moved = true;
                }
                let to: Vec<u32> = match (&ev.device, ev.kind.is_privacy()) {
                    (Some(d), false) => vec![partition_of(d.text().as_bytes(), self.n)],
                    _ => (0..self.n).collect(),
                };
                let record = staged::encode(&StageInput::Event {
                    source: src,
                    offset,
                    event: ev,
                });
                let ingested = m.timestamp().to_millis().map(|t| t.to_string());
                for j in to {
                    let mut out =
                        Outgoing::internal(&self.internal[DEVICE_EVENTS], j, record.clone());
                    if let Some(t) = &ingested {
                        out = out.with_header(INGESTED, t);
                    }
                    self.outbox.send(out)?;
                }
            }
            Err(rej) => {
                self.telemetry
                    .rejected(topic, partition, offset, rej.reason);
                let out = dead_letter(&self.cfg.kafka.dead_letters_topic, m, &rej);
                self.outbox.send(out)?;
            }
        }
        Ok(())
    }

    /// Marks routed partitions idle once they are at their end and have
    /// been silent for `source_idle_seconds` (`privacy_source_idle_ms` for
    /// the privacy topic's).
    fn mark_idle_routes(&mut self, lag: &HashMap<(String, i32), i64>) {
        let rt = &self.cfg.service;
        let events = Duration::from_secs(rt.source_idle_seconds);
        let privacy = Duration::from_millis(rt.privacy_source_idle_ms);
        for (tp, r) in &mut self.routes {
            let quiet = if tp.0 == self.cfg.kafka.privacy_topic {
                privacy
            } else {
                events
            };
            if !r.idle && lag.get(tp) == Some(&0) && r.last_seen.elapsed() >= quiet {
                r.idle = true;
                r.moved = true;
                tracing::debug!(topic = %tp.0, partition = tp.1, "input partition idle");
            }
        }
    }

    /// Confirms routed partitions that stay idle. After a resumption on
    /// another input partition, a device partition holds an idle source
    /// until it is confirmed twice (`sources.rs` in the core). Called once
    /// the batch before is delivered: a mark or confirmation sent before
    /// is delivered now, and the next confirmation rests on a statistics
    /// report emitted a whole interval after that, which sees any record
    /// appended before it. So the second confirmation a device partition
    /// reads after a resumption rests on a look at the partition's end
    /// taken after the resumption was written.
    fn confirm_idle_routes(&mut self) {
        let report = self.partitions.report();
        for (tp, r) in &mut self.routes {
            if !r.idle || r.moved {
                continue;
            }
            if r.undelivered {
                r.undelivered = false;
                r.confirm_from = report + 2;
            } else if self.partitions.at_end_since(tp, r.confirm_from) {
                r.moved = true;
            }
        }
    }

    /// Asks for a flush round once a task's device partition has taken
    /// every input and every source is idle: a numbered request in every
    /// device partition's input stream (the bucket stage answers a round
    /// once all of them have flushed, so that the open day counts
    /// everything they hold). Repeats of a round, from several owners,
    /// are dropped by number.
    fn request_flushes(&mut self, lag: &HashMap<(String, i32), i64>) -> Result<()> {
        let quiet = Duration::from_millis(self.cfg.service.idle_flush_ms);
        let routed = &self.internal[DEVICE_EVENTS];
        for (&j, t) in &mut self.tasks {
            let at_end = lag.get(&(routed.clone(), j as i32)) == Some(&0);
            if !t.flush_asked
                && at_end
                && t.inputs.is_empty()
                && !t.de.waiting_for_buckets()
                && t.de.sources_idle()
                && t.last_input.elapsed() >= quiet
            {
                let n = t.de.flushes() + 1;
                let record = staged::encode(&StageInput::Flush { n });
                for p in 0..self.n {
                    let out = Outgoing::internal(routed, p, record.clone())
                        .keyed(tag_key(j, t.store.epoch()));
                    self.outbox.send(out)?;
                }
                t.flush_asked = true;
                tracing::debug!(task = j, flush = n, "caught up: flushing");
            }
        }
        Ok(())
    }

    /// Publishes everything the routes and tasks produced, after the
    /// previous batch is acknowledged (see [`Partitioned::settle`]); this
    /// batch is settled before the next, or by a checkpoint.
    async fn publish(&mut self) -> Result<()> {
        // First the batch before: a fence check must find everything
        // written before it acknowledged (see `drop_fenced_tasks`).
        self.settle().await?;
        if self.last_fence_check.elapsed() >= FENCE_CHECK {
            self.drop_fenced_tasks(true).await?;
        }
        let k = self.cfg.kafka.clone();
        self.confirm_idle_routes();
        let idle = self.routes.values().filter(|r| r.idle).count();
        self.telemetry.idle_inputs(idle);
        for r in self.routes.values_mut().filter(|r| r.moved) {
            r.moved = false;
            r.undelivered = r.idle;
            let record = staged::encode(&StageInput::Watermark {
                source: r.source,
                ts: r.max_ts,
                idle: r.idle,
            });
            for j in 0..self.n {
                let out = Outgoing::internal(&self.internal[DEVICE_EVENTS], j, record.clone());
                self.outbox.send(out)?;
            }
        }
        let (mut nd, mut na, mut nk) = (0u64, 0u64, 0u64);
        for (&j, t) in &mut self.tasks {
            let key = tag_key(j, t.store.epoch());
            let internal = |topic: usize, p: u32, payload: Vec<u8>| {
                Outgoing::internal(&self.internal[topic], p, payload).keyed(key.clone())
            };
            // One record per bucket partition (or per SIGHTINGS_PER_RECORD
            // messages), in order: not one per sighting.
            let mut batches: BTreeMap<u32, Vec<Sent<ToBuckets>>> = BTreeMap::new();
            for (b, msg) in t.de.take_for_buckets() {
                batches.entry(b).or_default().push(msg);
            }
            for (b, batch) in batches {
                for chunk in batch.chunks(SIGHTINGS_PER_RECORD) {
                    self.outbox
                        .send(internal(SIGHTINGS, b, staged::encode_batch(chunk)))?;
                }
            }
            for (key, line) in t.de.take_changes().devices {
                let value = line.as_deref().map(str::as_bytes);
                let out = Outgoing::new(&k.device_links_topic, Some(key.as_bytes()), value, &[]);
                self.outbox.send(out)?;
                t.written.device(key);
                nd += 1;
            }
            for part in t.de.take_account_parts() {
                let a = partition_of(part.account.as_bytes(), self.n);
                let msg = ToAccounts::Part(part);
                self.outbox.send(internal(LINKS, a, staged::encode(&msg)))?;
            }
            let applied = t.de.take_applied().into_iter().chain(t.be.take_applied());
            for (a, msg) in applied {
                self.outbox.send(internal(LINKS, a, staged::encode(&msg)))?;
            }
            for ack in t.acc.take_acks() {
                let value = serde_json::to_string(&ack)?;
                let out = Outgoing::new(
                    &k.privacy_acks_topic,
                    Some(ack.id_hash.as_bytes()),
                    Some(value.as_bytes()),
                    &[],
                );
                self.outbox.send(out)?;
                self.telemetry.privacy_ack(ack.kind);
                nk += 1;
            }
            for (d, msg) in t.be.take_for_devices() {
                self.outbox
                    .send(internal(EVIDENCE, d, staged::encode(&msg)))?;
            }
            for (key, line) in t.acc.take_lines() {
                let value = line.as_deref().map(str::as_bytes);
                let out = Outgoing::new(&k.account_devices_topic, Some(key.as_bytes()), value, &[]);
                self.outbox.send(out)?;
                t.written.account(key);
                na += 1;
            }
            for (d, msg) in t.acc.take_for_devices() {
                self.outbox.send(internal(SHOWN, d, staged::encode(&msg)))?;
            }
        }
        self.telemetry.producer_queue(self.outbox.in_flight());
        let mut batch = Unsettled::default();
        batch.output.published = [nd, na, nk];
        for (&j, t) in &mut self.tasks {
            batch.output.stamps.append(&mut t.taken_ts);
            for wait in t.waits.drain(..) {
                self.telemetry.bucket_wait(j, wait);
            }
        }
        for ((t, p), r) in &mut self.routes {
            if let Some(o) = r.commit.take() {
                batch.commits.push((t.clone(), *p, o));
            }
        }
        self.unsettled = Some(batch);
        self.telemetry.engines(self.tasks.values().map(|t| &t.de));
        self.telemetry.stage_tasks(self.tasks.len());
        self.batch_len = 0;
        self.batch_started = Instant::now();
        self.wall_now = wall_clock();
        Ok(())
    }

    /// Waits until every record published is acknowledged (sending again
    /// what timed out), then commits the settled batch's routed input
    /// offsets and observes its latency.
    async fn settle(&mut self) -> Result<()> {
        loop {
            let again = self.outbox.settle().await?;
            if again.is_empty() {
                break;
            }
            self.resend(again).await?;
        }
        self.telemetry.producer_queue(self.outbox.in_flight());
        let Some(batch) = self.unsettled.take() else {
            return Ok(());
        };
        self.telemetry.settled(&self.cfg.kafka, batch.output);
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &batch.commits {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            // Routed records are numbered by their input offsets: a commit
            // lost only means they are routed again and dropped as repeats.
            tracing::warn!(error = %e, "committing input offsets failed");
        }
        Ok(())
    }

    /// The end of the manifests topic, for the tasks' looks for newer
    /// claims (one lookup for all of them); `None` when it is unanswered.
    fn manifests_end(&self) -> Option<i64> {
        let t = self.tasks.values().next()?;
        match t.store.manifests_end() {
            Ok(end) => Some(end),
            Err(e) => {
                tracing::warn!(error = %e, "looking for newer claims failed");
                None
            }
        }
    }

    /// Drops every task another instance has claimed since this one did,
    /// asking the new owner to write again the output records this one
    /// may have written after the claim; returns whether there was one.
    /// With `verified`, a task found still owned forgets its written keys:
    /// everything written before the look was acknowledged before it, so
    /// before any newer claim.
    async fn drop_fenced_tasks(&mut self, verified: bool) -> Result<bool> {
        self.last_fence_check = Instant::now();
        let mut fenced = false;
        // Unanswered: the next look decides.
        let Some(end) = self.manifests_end() else {
            return Ok(false);
        };
        for j in self.tasks.keys().copied().collect::<Vec<_>>() {
            let Some(t) = self.tasks.get_mut(&j) else {
                continue;
            };
            match t.store.superseded_by(end) {
                Ok(false) => {
                    if verified {
                        t.written = Written::default();
                    }
                }
                Ok(true) => {
                    tracing::warn!(
                        task = j,
                        "fenced: another instance claimed the task; dropping it"
                    );
                    if let Some(t) = self.tasks.remove(&j) {
                        self.ask_republish(j, t.written)?;
                    }
                    fenced = true;
                }
                // Unanswered: the next look decides.
                Err(e) => tracing::warn!(task = j, error = %e, "looking for newer claims failed"),
            }
        }
        Ok(fenced)
    }

    /// Asks task `j`'s owner (whoever it is by the time it reads the
    /// request) to write these output records again
    /// ([`StageInput::Republish`]). The request is not tagged: a fenced
    /// instance's request must not be dropped as stale.
    fn ask_republish(&mut self, j: u32, written: Written) -> Result<()> {
        if written.is_empty() {
            return Ok(());
        }
        let parts = written.into_parts();
        tracing::warn!(
            task = j,
            devices = parts.iter().map(|p| p.0.len()).sum::<usize>(),
            accounts = parts.iter().map(|p| p.1.len()).sum::<usize>(),
            "asking the task's owner to write records again"
        );
        for (devices, accounts) in parts {
            let request = StageInput::Republish { devices, accounts };
            let out =
                Outgoing::internal(&self.internal[DEVICE_EVENTS], j, staged::encode(&request));
            self.outbox.send(out)?;
        }
        Ok(())
    }

    /// Records whose delivery timed out. If this instance still holds all
    /// its tasks they are sent again. If it lost one meanwhile (it was
    /// paused past its session timeout: a zombie), its records may now
    /// land after the new owner's, so only routed input goes again
    /// (numbered by input offset: harmless whoever sends it); everything
    /// else is dropped, and the tasks it still holds are restored from
    /// their snapshots so that they compute what was dropped again.
    async fn resend(&mut self, again: Vec<Outgoing>) -> Result<()> {
        let fenced = self.drop_fenced_tasks(false).await?;
        let routed = &self.internal[DEVICE_EVENTS];
        let total = again.len();
        let mut sent = 0;
        for out in again {
            if !fenced || out.topic == *routed {
                self.outbox.send(out)?;
                sent += 1;
            }
        }
        tracing::warn!(
            records = total,
            sent_again = sent,
            fenced,
            "deliveries timed out"
        );
        if fenced {
            for j in self.tasks.keys().copied().collect::<Vec<_>>() {
                self.restore(j).await?;
            }
        }
        Ok(())
    }

    /// Publishes, then snapshots every task that changed with the offsets
    /// it has taken, and commits those offsets.
    async fn checkpoint(&mut self) -> Result<()> {
        self.publish().await?;
        self.settle().await?;
        let started = Instant::now();
        // Every changed task at once: one after another, each waited out
        // its acknowledgements while the loop stood still. Snapshotting
        // runs pending privacy purges, which may change what is
        // published: publish it with the next batch.
        let internal = &self.internal;
        let saves = self
            .tasks
            .iter_mut()
            .filter(|(_, t)| t.dirty)
            .map(|(&j, t)| async move { save(t, internal, j).await.map(|n| (j, n)) });
        let saved = try_join_all(saves).await?;
        tracing::debug!(tasks = saved.len(), "checkpoint: snapshots acknowledged");
        let bytes = saved.iter().map(|(_, n)| n).sum();
        let end = self.manifests_end();
        tracing::debug!(?end, "checkpoint: manifests' end looked up");
        let mut tpl = TopicPartitionList::new();
        for (j, _) in saved {
            let Some(t) = self.tasks.get_mut(&j) else {
                continue;
            };
            for (name, o) in self.internal.iter().zip(t.positions()) {
                if o >= 0 {
                    tpl.add_partition_offset(name, j as i32, Offset::Offset(o))?;
                }
            }
            // Unless another instance has claimed the task since (an
            // unanswered look counts as claimed here), no restore will read
            // below the snapshot just acknowledged: the look starts at the
            // end of the manifests after the acknowledgements.
            if end.is_some_and(|end| matches!(t.store.superseded_by(end), Ok(false))) {
                let positions = t.positions();
                self.purger.purge(
                    self.internal
                        .iter()
                        .zip(positions)
                        .map(|(n, o)| (n.as_str(), j as i32, o)),
                );
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "committing stage offsets failed");
            }
            self.telemetry
                .snapshot(bytes, started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// Snapshots task `j` with its positions; returns the snapshot's size.
async fn save(t: &mut Task, internal: &[String; 5], j: u32) -> Result<usize> {
    let started = Instant::now();
    let bytes = staged::encode(&(
        t.de.stage_snapshot(),
        t.be.snapshot(),
        t.acc.snapshot(),
        &t.epochs,
    ));
    let positions: BTreeMap<String, i64> = internal
        .iter()
        .zip(t.positions())
        .map(|(name, o)| (format!("{name}/{j}"), o))
        .collect();
    t.store.save(&bytes, positions).await?;
    t.dirty = false;
    tracing::debug!(
        task = j,
        bytes = bytes.len(),
        seconds = started.elapsed().as_secs_f64(),
        "stage task snapshotted"
    );
    Ok(bytes.len())
}

/// Whether another instance has claimed the task since this one did.
/// An unanswered look counts as not superseded: the next look decides.
async fn superseded(store: &mut Snapshots) -> bool {
    match store.superseded() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "looking for newer claims failed");
            false
        }
    }
}

/// Seeks an assigned partition, retrying while the assignment settles.
/// Best effort: a task reads from where its snapshot says whatever the
/// consumer's position (records below it are skipped, a gap above it
/// seeks back), so a seek that fails (the partition moved on in a
/// rebalance meanwhile) only costs reading a little more.
async fn seek(consumer: &StreamConsumer<ServiceContext>, topic: &str, partition: i32, offset: i64) {
    let at = if offset >= 0 {
        Offset::Offset(offset)
    } else {
        Offset::Beginning
    };
    for _ in 0..10 {
        match consumer.seek(topic, partition, at, Duration::from_secs(10)) {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(topic, partition, error = %e, "seek failed: retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tracing::warn!(
        topic,
        partition,
        offset,
        "seek failed: reading from the consumer's position"
    );
}
