//! The processing loop: consume, decode, link, publish, snapshot, commit.
//!
//! One task owns the engine. Input is handled in batches, with one batch
//! in flight: a batch's outputs (graph changes, dead letters, privacy
//! acks) are published, and the next batch is read and linked while the
//! brokers acknowledge them; they are all acknowledged before the next
//! batch publishes, so the work in flight is bounded by two batches of
//! `batch_max_messages` (backpressure: when the producer is slow,
//! consumption waits). Input offsets are committed only with a snapshot,
//! after the outputs of everything before them were acknowledged: a crash
//! replays input from the last snapshot, and replaying recomputes the same
//! records, which the compacted topics fold into the same graph.
//!
//! Only the group's active instance processes (see `ownership.rs`): a
//! standby waits outside the group, and an instance that stops owning
//! every input partition stops ingesting, publishing and snapshotting at
//! once. When it owns them all again it keeps its state only if no other
//! instance claimed the group meanwhile; otherwise it restores the newest
//! snapshot first.

use super::config::ServiceConfig;
use super::kafka::{
    LOOK_EVERY, PartitionState, ProducerHealth, ServiceContext, consumer_config,
    output_producer_config,
};
use super::outbox::{Outbox, Outgoing, Written, dead_letter, decode, source, wall_clock};
use super::ownership::{GroupWatch, Role};
use super::snapshots::Snapshots;
use super::telemetry::{BatchOutput, InputStamp, Telemetry};
use crate::settings::Settings;
use anyhow::{Context, Result, bail};
use futures::FutureExt;
use idlink_core::Millis;
use idlink_core::{Decoder, Engine, Ingested};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// The loop's state besides the engine.
pub struct Pipeline {
    /// Service settings.
    cfg: ServiceConfig,
    /// Engine config and address classifier, to build or restore engines.
    settings: Settings,
    /// The linking engine.
    engine: Engine,
    /// Input validation.
    decoder: Decoder,
    /// Consumer of both input topics; shared so the loop can handle a
    /// message borrowed from it (not copied out) while `self` changes.
    consumer: Arc<StreamConsumer<ServiceContext>>,
    /// Producer of every output topic, and the records awaiting their
    /// acknowledgement.
    outbox: Outbox,
    /// Snapshot store.
    snapshots: Snapshots,
    /// Metrics and readiness.
    telemetry: Arc<Telemetry>,
    /// Assignment and lag, from librdkafka callbacks.
    partitions: Arc<PartitionState>,
    /// Next offset per topic and partition of everything handed to the
    /// engine (from the restored snapshot on): records below it are
    /// skipped, whenever Kafka delivers them again. Nested by topic so a
    /// message is looked up by its borrowed topic name, with no
    /// allocation per message.
    positions: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Input timestamps of the open batch, for the latency histograms.
    batch_ts: Vec<InputStamp>,
    /// Messages in the open batch.
    batch_len: usize,
    /// When the open batch started.
    batch_started: Instant,
    /// Input handled since the last snapshot.
    since_snapshot: u64,
    /// Assignment generation last turned into watermark sources.
    sources_generation: u64,
    /// When the current assignment arrived.
    assigned_at: Instant,
    /// The statistics report idle sources were last marked or confirmed
    /// on: one confirmation per report, so that the second after a
    /// resumption rests on a report emitted after it (`sources.rs` in the
    /// core).
    idle_report: u64,
    /// When each source last delivered a message.
    last_seen: std::collections::HashMap<u32, Instant>,
    /// Owns every input partition and has claimed its epoch: ingests,
    /// publishes and snapshots. Nothing else does.
    active: bool,
    /// Assignment generation whose role was last acted on.
    role_generation: u64,
    /// Watches the group's membership while on standby.
    watch: GroupWatch,
    /// When the group's newest claim was last looked up.
    last_fence_check: Instant,
    /// Output keys published since a look found this instance still the
    /// owner after their records were acknowledged: if a look finds it
    /// replaced, those records may have landed after the new owner's, and
    /// it asks the owner to write them again.
    written: Written,
    /// The wall clock for input validation's future-skew check, read when
    /// a batch starts or the loop wakes without a message: reading it per
    /// message is a measurable cost, and a day's skew limit does not care
    /// about a second.
    wall_now: Millis,
    /// The published batch whose acknowledgements are still awaited: the
    /// loop reads and links the next batch meanwhile, and settles this
    /// one before it publishes again or snapshots (one batch in flight).
    unsettled: Option<BatchOutput>,
}

/// How long a standby that cannot describe the group (the brokers do not
/// answer, or do not support it) waits before it joins the group anyway.
const GROUP_BLIND: Duration = Duration::from_secs(30);

/// Longest time between two looks at the group's newest claim before
/// output is published; well below any session timeout (6 s at least).
const FENCE_CHECK: Duration = Duration::from_millis(500);

/// Messages taken from the consumer's queue after one that was awaited,
/// before the loop looks at its timers again.
const DRAIN_MAX: usize = 256;

/// How serving the group ended.
enum Served {
    /// Shutdown was requested.
    Shutdown,
    /// Another instance owns the group: back to standby.
    Yielded,
}

/// The group consumer of both input topics.
fn new_consumer(
    k: &super::config::KafkaConfig,
    telemetry: &Arc<Telemetry>,
    partitions: &Arc<PartitionState>,
) -> Result<StreamConsumer<ServiceContext>> {
    let context = ServiceContext {
        telemetry: telemetry.clone(),
        partitions: partitions.clone(),
    };
    consumer_config(k)
        .create_with_context(context)
        .context("creating the consumer")
}

impl Pipeline {
    /// Creates the clients and checks the topics; state is restored when
    /// this instance becomes the group's owner.
    pub async fn start(
        settings: &Settings,
        cfg: ServiceConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Pipeline> {
        let k = &cfg.kafka;
        let (events, privacy) = super::kafka::ensure_topics(k, &[]).await?;
        let input_partitions = events + privacy;
        let snapshots = Snapshots::new(k, &cfg.service)?;
        let partitions = Arc::new(PartitionState::default());
        partitions
            .input_partitions
            .store(input_partitions, Ordering::Relaxed);
        let consumer = new_consumer(k, &telemetry, &partitions)?;
        let producer: FutureProducer<ProducerHealth> = output_producer_config(k)
            .create_with_context(ProducerHealth {
                telemetry: telemetry.clone(),
                partitions: partitions.clone(),
            })
            .context("creating the producer")?;
        Ok(Pipeline {
            decoder: Decoder::new(&settings.core.input),
            positions: BTreeMap::new(),
            engine: Engine::new(&settings.core, settings.classifier.clone()),
            settings: settings.clone(),
            watch: GroupWatch::new(k)?,
            cfg,
            consumer: Arc::new(consumer),
            outbox: Outbox::new(producer),
            snapshots,
            telemetry,
            partitions,
            batch_ts: Vec::new(),
            batch_len: 0,
            batch_started: Instant::now(),
            since_snapshot: 0,
            sources_generation: 0,
            assigned_at: Instant::now(),
            idle_report: 0,
            last_seen: std::collections::HashMap::new(),
            active: false,
            role_generation: 0,
            last_fence_check: Instant::now(),
            written: Written::default(),
            wall_now: wall_clock(),
            unsettled: None,
        })
    }

    /// Replaces the engine with the newest snapshot (or an empty one) and
    /// the positions with the snapshot's.
    async fn restore(&mut self) -> Result<()> {
        let settings = &self.settings;
        self.telemetry.restore_progress(0.0);
        let started = Instant::now();
        let (mut engine, restored) = match self
            .snapshots
            .load(&self.telemetry)
            .await
            .context("restoring state")?
        {
            Some((bytes, manifest)) => {
                let engine = Engine::restore(&settings.core, settings.classifier.clone(), &bytes)
                    .context("the stored snapshot cannot be restored")?;
                let mut restored: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
                for (tp, off) in &manifest.positions {
                    if let Some((t, p)) = tp.rsplit_once('/')
                        && let Ok(p) = p.parse()
                    {
                        restored.entry(t.to_string()).or_default().insert(p, *off);
                    }
                }
                tracing::info!(
                    epoch = manifest.epoch,
                    snapshot = manifest.id,
                    bytes = manifest.bytes,
                    devices = engine.device_count(),
                    seconds = started.elapsed().as_secs_f64(),
                    "state restored"
                );
                (engine, restored)
            }
            None => {
                tracing::info!("no snapshot: starting with empty state");
                (
                    Engine::new(&settings.core, settings.classifier.clone()),
                    BTreeMap::new(),
                )
            }
        };
        self.telemetry.restore_progress(1.0);
        self.telemetry.baseline(&engine);
        engine.track_changes();
        self.engine = engine;
        self.positions = restored;
        // Every assigned partition becomes a source of the new engine.
        self.sources_generation = 0;
        self.batch_len = 0;
        self.batch_ts.clear();
        // The dropped state's batch in flight is no longer this engine's
        // to count (its records are still awaited by the next settle).
        self.unsettled = None;
        self.since_snapshot = 0;
        Ok(())
    }

    /// Runs until shutdown: a standby until the group is free, then its
    /// owner; back to standby if another instance wins the group. The
    /// caller drops `self` (see [`super::kafka::leave_group`]).
    pub async fn run(&mut self, mut shutdown: broadcast::Receiver<()>) -> Result<()> {
        loop {
            if !self.standby(&mut shutdown).await {
                return Ok(());
            }
            self.restore().await?;
            let k = &self.cfg.kafka;
            self.consumer
                .subscribe(&[&k.events_topic, &k.privacy_topic])
                .context("subscribing")?;
            let served = self.serve(&mut shutdown).await;
            self.consumer.unsubscribe();
            self.active = false;
            if matches!(served, Ok(Served::Yielded)) {
                self.unsettled = None;
                self.stand_down().await?;
            }
            match served? {
                Served::Shutdown => return Ok(()),
                Served::Yielded => {
                    tracing::info!("another instance owns the group: standing by");
                    // Leave the group for good: closing the consumer waits
                    // for a join still in flight (a woken zombie's client
                    // rejoins by itself) and then leaves, where a bare
                    // unsubscribe could leave a member behind that holds
                    // partitions and keeps the owner waiting.
                    let fresh = Arc::new(new_consumer(
                        &self.cfg.kafka,
                        &self.telemetry,
                        &self.partitions,
                    )?);
                    let old = std::mem::replace(&mut self.consumer, fresh);
                    tokio::task::block_in_place(|| drop(old));
                    // The state is stale from here on: drop it.
                    self.engine =
                        Engine::new(&self.settings.core, self.settings.classifier.clone());
                    self.snapshots.release();
                }
            }
        }
    }

    /// Waits, outside the group, until no instance is in it. Returns false
    /// if shutdown was requested meanwhile.
    async fn standby(&mut self, shutdown: &mut broadcast::Receiver<()>) -> bool {
        let poll = Duration::from_millis(self.cfg.service.standby_poll_ms);
        let mut said = false;
        // Consecutive looks that found the group empty: two are needed, so
        // a group caught between two states does not draw a standby in
        // while its owner is at work.
        let mut empty = 0;
        // When describing the group started failing: after a while the
        // standby joins anyway and lets the assignment break any tie.
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.watch.members() {
                Some(0) => {
                    failing_since = None;
                    empty += 1;
                }
                Some(n) => {
                    failing_since = None;
                    empty = 0;
                    if !said {
                        tracing::info!(members = n, "standby: another instance owns the group");
                        said = true;
                    }
                }
                None => {
                    empty = 0;
                    if failing_since.get_or_insert_with(Instant::now).elapsed() >= GROUP_BLIND {
                        tracing::warn!("the group cannot be described: joining it");
                        break;
                    }
                }
            }
            if empty >= 2 {
                break;
            }
            self.telemetry.set_standby(true);
            self.telemetry
                .set_ready(false, "standby: another instance owns the group");
            tokio::select! {
                _ = shutdown.recv() => return false,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        tracing::info!("the group is free: taking it over");
        self.telemetry.set_standby(false);
        true
    }

    /// Serves the group until shutdown or until another instance wins it.
    async fn serve(&mut self, shutdown: &mut broadcast::Receiver<()>) -> Result<Served> {
        let rt = self.cfg.service.clone();
        let batch_max = Duration::from_millis(rt.batch_max_ms);
        let idle = Duration::from_millis(rt.idle_flush_ms);
        let snapshot_every = Duration::from_secs(rt.snapshot_interval_seconds);
        // The clock is read once per turn of the loop (`now`): reading it
        // per comparison was a measurable share of the time per message.
        let mut now = Instant::now();
        let mut last_message = now;
        let mut last_snapshot = now;
        let mut last_look = now;
        let mut flushed = false;
        // Its own handle: a message borrowed from it is handled while
        // `self` changes.
        let consumer = self.consumer.clone();
        loop {
            if !self.follow_assignment().await? {
                return Ok(Served::Yielded);
            }
            self.update_readiness();
            self.sync_sources();
            let wait = if self.batch_len > 0 || self.unsettled.is_some() {
                batch_max.saturating_sub(now.saturating_duration_since(self.batch_started))
            } else {
                idle
            };
            let next = tokio::select! {
                _ = shutdown.recv() => break,
                r = tokio::time::timeout(wait.max(Duration::from_millis(1)), consumer.recv()) => r,
            };
            now = Instant::now();
            match next {
                Ok(Ok(m)) => {
                    // A rebalance runs inside the poll that returns the
                    // first message of its partitions: act on it first,
                    // or that message would be skipped as not owned and
                    // the seek on activation could not be trusted to
                    // bring it back.
                    if !self.follow_assignment().await? {
                        return Ok(Served::Yielded);
                    }
                    self.handle(&m, now)?;
                    // Then what the consumer already holds, up to the
                    // batch's end, without a timer and a clock read per
                    // message.
                    for _ in 0..DRAIN_MAX {
                        if self.batch_len >= rt.batch_max_messages {
                            break;
                        }
                        let m = match consumer.recv().now_or_never() {
                            Some(Ok(m)) => m,
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "consumer error");
                                break;
                            }
                            None => break,
                        };
                        if !self.follow_assignment().await? {
                            return Ok(Served::Yielded);
                        }
                        self.handle(&m, now)?;
                    }
                    last_message = now;
                    flushed = false;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => self.wall_now = wall_clock(),
            }
            if !self.active {
                continue;
            }
            if now.saturating_duration_since(last_look) >= LOOK_EVERY {
                last_look = now;
                self.mark_idle();
            }
            let batch_age = now.saturating_duration_since(self.batch_started);
            if (self.batch_len >= rt.batch_max_messages
                || (self.batch_len > 0 && batch_age >= batch_max))
                && !self.publish().await?
            {
                return Ok(Served::Yielded);
            }
            // Idle, the owner still looks for a newer claim and for
            // republish requests, as a busy one does before it publishes.
            if self.batch_len == 0
                && self.unsettled.is_none()
                && self.last_fence_check.elapsed() >= FENCE_CHECK
            {
                if self.superseded().await? {
                    tracing::warn!(
                        epoch = self.snapshots.epoch(),
                        "fenced: another instance claimed the group"
                    );
                    return Ok(Served::Yielded);
                }
                if self.snapshots.has_requests() && !self.publish().await? {
                    return Ok(Served::Yielded);
                }
            }
            // Input paused: the batch in flight is settled within
            // batch_max_ms all the same, so its latency and counts show.
            if self.batch_len == 0
                && self.unsettled.is_some()
                && batch_age >= batch_max
                && !self.settle().await?
            {
                return Ok(Served::Yielded);
            }
            if !flushed && now.saturating_duration_since(last_message) >= idle && self.caught_up() {
                tracing::debug!(watermark = %self.engine.watermark(), "caught up: flushing");
                self.engine.flush();
                if !self.publish().await? {
                    return Ok(Served::Yielded);
                }
                flushed = true;
                // The flush changed the state (released events, applied
                // the privacy requests among them): the store must follow,
                // or the newest snapshot would keep what an erasure
                // removed until more input arrives.
                self.since_snapshot = self.since_snapshot.max(1);
            }
            if self.since_snapshot > 0
                && now.saturating_duration_since(last_snapshot) >= snapshot_every
            {
                if !self.checkpoint().await? {
                    return Ok(Served::Yielded);
                }
                last_snapshot = Instant::now();
            }
        }
        tracing::info!("shutting down: publishing, snapshotting, committing");
        self.telemetry.set_ready(false, "shutting down");
        // Step by step, each logged (as in the partitioned mode).
        if self.active && self.publish().await? && self.settle().await? {
            tracing::info!("shutting down: output acknowledged");
            if self.since_snapshot > 0 {
                self.checkpoint().await?;
                tracing::info!("shutting down: snapshotted, offsets committed");
            }
        }
        tracing::info!("shut down");
        Ok(Served::Shutdown)
    }

    /// Acts on a new assignment: becomes active when it holds every input
    /// partition, stops at once when it does not. Returns false when this
    /// instance must leave the group.
    async fn follow_assignment(&mut self) -> Result<bool> {
        let Some(a) = self.partitions.assignment_since(self.role_generation) else {
            return Ok(true);
        };
        self.role_generation = a.generation;
        if a.revoked {
            // Rebalancing: the next assignment decides.
            self.active = false;
            return Ok(true);
        }
        let all = self.partitions.input_partitions.load(Ordering::Relaxed);
        match super::ownership::role(&a.partitions, all, &self.cfg.kafka.events_topic) {
            Role::Active => self.activate(&a.partitions).await,
            Role::Hold => {
                tracing::warn!(
                    assigned = a.partitions.len(),
                    of = all,
                    "another instance joined the group: holding until it leaves"
                );
                self.active = false;
                Ok(true)
            }
            Role::Yield => Ok(false),
        }
    }

    /// Becomes the group's owner: restores the newest snapshot if another
    /// instance claimed the group since this state was current, claims a
    /// new epoch with a snapshot if this instance holds no claim, and
    /// starts every partition at the state's position.
    async fn activate(&mut self, assigned: &[(String, i32)]) -> Result<bool> {
        if self.superseded().await? {
            tracing::info!("another instance owned the group meanwhile: restoring its state");
            self.restore().await?;
        }
        // Records that arrived before this moment were not processed (the
        // instance was not active): start every partition at the state's
        // position, or at its beginning if the state holds nothing of it
        // (positions are committed only with a snapshot that covers them).
        for (t, p) in assigned {
            let at = match self.positions.get(t).and_then(|ps| ps.get(p)) {
                Some(&o) => Offset::Offset(o),
                None => Offset::Beginning,
            };
            let mut tries = 0;
            while let Err(e) = self.consumer.seek(t, *p, at, Duration::from_secs(10)) {
                tries += 1;
                if tries == 5 {
                    bail!("seeking {t}/{p} to {at:?}: {e}");
                }
                tracing::debug!(error = %e, topic = %t, partition = p, "seek failed: retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        self.active = true;
        if !self.snapshots.claimed() {
            let epoch = self.snapshots.claim();
            tracing::info!(epoch, "owning the group");
            self.since_snapshot = self.since_snapshot.max(1);
            return self.checkpoint().await;
        }
        Ok(true)
    }

    /// Whether another instance claimed the group since this one's state
    /// was current; if one did, this instance stands down first
    /// ([`Pipeline::stand_down`]). Asks until the brokers answer: nothing
    /// may be written before they do, and an outage is ridden out, not
    /// fatal. The look also reads republish requests, which the next
    /// [`Pipeline::publish`] acts on.
    async fn superseded(&mut self) -> Result<bool> {
        loop {
            match self.snapshots.superseded() {
                Ok(s) => {
                    self.last_fence_check = Instant::now();
                    if s {
                        self.stand_down().await?;
                    }
                    return Ok(s);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checking the group's owner failed: retrying");
                    self.telemetry.set_ready(false, "brokers unreachable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// This instance no longer owns the group (or may not): it awaits what
    /// it wrote, sending nothing again, and then asks the owner to write
    /// again every record it published since it last made sure it owned
    /// the group. A frozen owner's producer can send queued records when
    /// it wakes, after its successor's; the owner's renderings of those
    /// keys, written after this request, are then the last of each key.
    async fn stand_down(&mut self) -> Result<()> {
        self.active = false;
        let dropped = self.outbox.settle().await?;
        if !dropped.is_empty() {
            tracing::warn!(
                records = dropped.len(),
                "standing down: timed-out records dropped"
            );
        }
        let written = std::mem::take(&mut self.written);
        if !written.is_empty() {
            self.snapshots.ask_republish(written).await?;
        }
        Ok(())
    }

    /// Registers every assigned partition as a watermark source when the
    /// assignment changes, while this instance owns the group. Sources are
    /// never removed: the engine's state covers every input partition, and
    /// an instance that loses some stops processing, so dropping their
    /// sources would only let the watermark run ahead of them and make
    /// their records late when this instance owns them again.
    fn sync_sources(&mut self) {
        if !self.active {
            return;
        }
        let Some(a) = self.partitions.assignment_since(self.sources_generation) else {
            return;
        };
        self.sources_generation = a.generation;
        let events = &self.cfg.kafka.events_topic;
        for (t, p) in &a.partitions {
            let s = source(u32::from(t != events), *p);
            self.engine.add_source(s);
            self.engine.set_idle(s, false);
        }
        self.assigned_at = Instant::now();
    }

    /// Every assigned partition is at its end (from the last statistics).
    fn caught_up(&self) -> bool {
        let assigned = self.partitions.assigned_partitions();
        let lag = self
            .partitions
            .lag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        !assigned.is_empty() && assigned.iter().all(|tp| lag.get(tp) == Some(&0))
    }

    /// Marks a source idle when its partition is at its end and has been
    /// silent for `source_idle_seconds`: a sparse partition (privacy
    /// requests) must not hold the watermark back for ever, but a partition
    /// that merely paused must not be overtaken by a burst on the others.
    /// Once per statistics report; marking an idle source again confirms
    /// it.
    fn mark_idle(&mut self) {
        let report = self.partitions.report();
        if report == self.idle_report {
            return;
        }
        self.idle_report = report;
        let quiet = Duration::from_secs(self.cfg.service.source_idle_seconds);
        let lag = self.partitions.lag_now();
        for ((topic, p), l) in lag {
            let src = source(u32::from(topic != self.cfg.kafka.events_topic), p);
            let last = self
                .last_seen
                .get(&src)
                .copied()
                .unwrap_or(self.assigned_at);
            if l == 0 && last.elapsed() >= quiet {
                self.engine.set_idle(src, true);
            }
        }
        self.telemetry.idle_inputs(self.engine.idle_sources());
    }

    fn update_readiness(&self) {
        let assigned = self.partitions.assigned.load(Ordering::Relaxed);
        let down = self.partitions.brokers_down.load(Ordering::Relaxed);
        let why = if down {
            "brokers unreachable"
        } else if assigned == 0 {
            "no partitions assigned"
        } else if !self.active {
            // Whole-graph state needs every input partition: another
            // instance shares the group until one of them leaves.
            "another instance shares the consumer group: holding until it leaves"
        } else {
            "owner of the group: restored and assigned"
        };
        self.telemetry.set_ready(self.active && !down, why);
    }

    /// Decodes one input message and hands it to the engine.
    /// `now` is when the loop received it.
    fn handle(&mut self, m: &impl Message, now: Instant) -> Result<()> {
        let topic = m.topic();
        if !self.active {
            // Not the owner (yet): the record is left for whoever is; this
            // instance reads it again from its position once it owns it.
            self.telemetry.skipped(topic);
            return Ok(());
        }
        let (partition, offset) = (m.partition(), m.offset());
        // Below the position: already in the state, from the restored
        // snapshot or from earlier in this run. Kafka delivers such records
        // again after the group is rejoined (a broker outage, a missed
        // session timeout): the consumer restarts from the last commit,
        // which trails what the engine has applied.
        let next = match self.positions.get_mut(topic) {
            Some(ps) => ps.entry(partition).or_insert(offset),
            None => self
                .positions
                .entry(topic.to_string())
                .or_default()
                .entry(partition)
                .or_insert(offset),
        };
        if offset < *next {
            self.telemetry.skipped(topic);
            return Ok(());
        }
        *next = offset + 1;
        self.batch_len += 1;
        self.since_snapshot += 1;
        // The rebalance that assigned this partition ran inside the same
        // poll: register every assigned partition before the first event,
        // or events of partitions not yet seen would count as late.
        self.sync_sources();
        let topic_index = u32::from(topic != self.cfg.kafka.events_topic);
        self.last_seen.insert(source(topic_index, partition), now);
        let decoded = decode(&self.decoder, m, topic, topic_index == 1, self.wall_now);
        if let Some(ts_ms) = m.timestamp().to_millis() {
            let sign_in = decoded.as_ref().is_ok_and(|ev| ev.is_sign_in());
            self.batch_ts.push(InputStamp { ts_ms, sign_in });
        }
        match decoded {
            Ok(ev) => {
                self.telemetry.accepted(topic);
                if self.engine.ingest(source(topic_index, partition), ev) == Ingested::Erased {
                    tracing::debug!("event covered by an erase marker dropped");
                }
            }
            Err(rej) => {
                self.telemetry
                    .rejected(topic, partition, offset, rej.reason);
                let record = dead_letter(&self.cfg.kafka.dead_letters_topic, m, &rej);
                self.send(record)?;
            }
        }
        Ok(())
    }

    /// Enqueues one record; waits (backpressure) while the queue is full.
    fn send(&mut self, out: Outgoing) -> Result<()> {
        self.outbox.send(out)
    }

    /// Waits for every delivery of the batch. A record whose delivery
    /// timed out (`message.timeout.ms`, below the session timeout) is sent
    /// again, after a look at the group's claim: a record queued by an
    /// owner that was then paused past its session timeout has expired by
    /// the time it wakes, so it is never appended after its successor's
    /// records. Returns false if this instance was fenced meanwhile.
    async fn await_deliveries(&mut self) -> Result<bool> {
        loop {
            let again = self.outbox.settle().await?;
            if again.is_empty() {
                return Ok(true);
            }
            tracing::warn!(
                records = again.len(),
                "deliveries timed out: sending them again if this instance still owns the group"
            );
            if self.superseded().await? {
                return Ok(false);
            }
            for out in again {
                self.send(out)?;
            }
        }
    }

    /// Publishes the engine's changes and acks; they are awaited by the
    /// next [`Pipeline::settle`], while the next batch is read. The batch
    /// published before is settled first, so a look at the group's claim
    /// finds everything written before it acknowledged. Returns false,
    /// publishing nothing, if another instance has claimed the group since
    /// this one did (it was paused past its session timeout: a zombie).
    ///
    /// The claim is looked up when [`FENCE_CHECK`] has passed since the
    /// last look. That is as safe as looking every time: an owner loses
    /// the group only by missing its session timeout (seconds), so a
    /// paused owner always wakes to a look (the monotonic clock runs on
    /// while a process is stopped), and a look costs a broker round trip
    /// that every batch need not pay.
    async fn publish(&mut self) -> Result<bool> {
        if !self.settle().await? {
            return Ok(false);
        }
        if self.last_fence_check.elapsed() >= FENCE_CHECK {
            if self.superseded().await? {
                tracing::warn!(
                    epoch = self.snapshots.epoch(),
                    "fenced: another instance claimed the group; publishing nothing"
                );
                return Ok(false);
            }
            // Everything published before was acknowledged before this
            // look, so it landed before any later claim.
            self.written = Written::default();
        }
        for r in self.snapshots.take_requests() {
            tracing::info!(
                fenced_epoch = r.epoch,
                devices = r.devices.len(),
                accounts = r.accounts.len(),
                "writing again what a replaced owner may have overwritten"
            );
            self.engine.republish(&r.devices, &r.accounts);
            // The next snapshot covers it, and the request is removed.
            self.since_snapshot = self.since_snapshot.max(1);
        }
        let changes = self.engine.take_changes();
        let acks = self.engine.take_privacy_acks();
        let k = self.cfg.kafka.clone();
        let published = [
            changes.devices.len() as u64,
            changes.accounts.len() as u64,
            acks.len() as u64,
        ];
        for (topic, list, devices) in [
            (&k.device_links_topic, changes.devices, true),
            (&k.account_devices_topic, changes.accounts, false),
        ] {
            for (key, value) in list {
                let value = value.as_deref().map(str::as_bytes);
                self.send(Outgoing::new(topic, Some(key.as_bytes()), value, &[]))?;
                if devices {
                    self.written.device(key);
                } else {
                    self.written.account(key);
                }
            }
        }
        for ack in &acks {
            let value = serde_json::to_string(ack)?;
            let record = Outgoing::new(
                &k.privacy_acks_topic,
                Some(ack.id_hash.as_bytes()),
                Some(value.as_bytes()),
                &[],
            );
            self.send(record)?;
            self.telemetry.privacy_ack(ack.kind);
        }
        self.telemetry.producer_queue(self.outbox.in_flight());
        self.unsettled = Some(BatchOutput {
            stamps: std::mem::take(&mut self.batch_ts),
            published,
        });
        self.telemetry.engine(&self.engine);
        self.batch_len = 0;
        self.batch_started = Instant::now();
        self.wall_now = wall_clock();
        Ok(true)
    }

    /// Waits until every record written so far is acknowledged (sending
    /// again what timed out, if this instance still owns the group), then
    /// counts the settled batch's publications and observes its latency.
    /// Returns false if this instance was fenced meanwhile.
    async fn settle(&mut self) -> Result<bool> {
        if !self.await_deliveries().await? {
            tracing::warn!(
                epoch = self.snapshots.epoch(),
                "fenced: another instance claimed the group; its timed-out records are dropped"
            );
            self.unsettled = None;
            self.active = false;
            return Ok(false);
        }
        // Again once acknowledged, so the gauge never shows a stale peak.
        self.telemetry.producer_queue(self.outbox.in_flight());
        if let Some(batch) = self.unsettled.take() {
            self.telemetry.settled(&self.cfg.kafka, batch);
        }
        Ok(true)
    }

    /// Snapshots the engine and commits the input offsets it covers.
    /// Returns false, writing nothing, if this instance was fenced.
    async fn checkpoint(&mut self) -> Result<bool> {
        if !self.publish().await? || !self.settle().await? {
            return Ok(false);
        }
        let started = Instant::now();
        let bytes = self.engine.snapshot();
        let every = || {
            self.positions
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t, *p, *o)))
        };
        let positions: BTreeMap<String, i64> =
            every().map(|(t, p, o)| (format!("{t}/{p}"), o)).collect();
        self.snapshots.save(&bytes, positions).await?;
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in every() {
            tpl.add_partition_offset(t, p, Offset::Offset(o))?;
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync)
        {
            // The snapshot holds the offsets too: a failed commit only means
            // a restart reads a little more input and skips it.
            tracing::warn!(error = %e, "committing offsets failed");
        }
        self.since_snapshot = 0;
        self.telemetry
            .snapshot(bytes.len(), started.elapsed().as_secs_f64());
        Ok(true)
    }
}
