//! Telemetry: every event the service reports both logs (through
//! `tracing`, never with raw ids or addresses at info level) and updates
//! its Prometheus metric, so the business code makes one call per event.

use super::config::KafkaConfig;
use idlink_core::{EngineStats, RejectReason};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicBool, Ordering};

/// Bounds (seconds) of both ingest-to-publish histograms.
const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// An input record whose effects await publication, for the latency
/// histograms.
#[derive(Clone, Copy, Debug)]
pub struct InputStamp {
    /// The input record's timestamp (ms).
    pub ts_ms: i64,
    /// Whether it is a sign-in ([`idlink_core::Event::is_sign_in`]).
    pub sign_in: bool,
}

/// What a published batch wrote, observed once its acknowledgements are
/// in (one batch in flight: see the loops' `settle`).
#[derive(Default)]
pub struct BatchOutput {
    /// Input records whose effects it publishes.
    pub stamps: Vec<InputStamp>,
    /// Output records per output topic: device links, account devices,
    /// privacy acknowledgements.
    pub published: [u64; 3],
}

/// The service's metrics and health flags.
pub struct Telemetry {
    /// Registry served on `/metrics`.
    registry: Registry,
    /// Input messages by topic and outcome.
    consumed: IntCounterVec,
    /// Dead letters by reason.
    dead_letters: IntCounterVec,
    /// Activity that arrived behind the watermark.
    late: IntCounter,
    /// Links created, by type.
    links_created: IntCounterVec,
    /// Links removed, by type.
    links_removed: IntCounterVec,
    /// Graph size.
    graph_devices: IntGauge,
    graph_accounts: IntGauge,
    graph_links: IntGaugeVec,
    /// Events waiting for the watermark.
    buffered: IntGauge,
    /// Consumer lag per input partition.
    lag: IntGaugeVec,
    /// From the input record's timestamp to the acknowledged output.
    latency: Histogram,
    /// The same for sign-ins alone: the figure backend teams feel, since a
    /// sign-in's link is published at once while the co-location evidence
    /// of other events waits for its day to close.
    sign_in_latency: Histogram,
    /// The watermark, as Unix seconds.
    watermark: Gauge,
    /// Restore progress, 0 to 1.
    restore_progress: Gauge,
    /// Snapshots written.
    snapshots: IntCounter,
    /// Size of the last snapshot.
    snapshot_bytes: IntGauge,
    /// Time to write a snapshot.
    snapshot_seconds: Histogram,
    /// Partitioned mode: how long device partitions wait for the bucket
    /// stage (day closes, flushes); they take no input meanwhile, so this
    /// is where sign-in latency goes.
    bucket_waits: Histogram,
    /// Messages waiting in the producer queue.
    producer_queue: IntGauge,
    /// Privacy requests acknowledged.
    privacy_acks: IntCounterVec,
    /// Output records published, by topic.
    published: IntCounterVec,
    /// Ready gauge (1 when ready), mirrored by `ready_flag`.
    ready: IntGauge,
    /// Readiness for `/health/ready`.
    ready_flag: AtomicBool,
    /// 1 while this instance stands by outside the group: its not being
    /// ready is by design, not an incident.
    standby: IntGauge,
    /// Partitioned mode: the stage tasks this instance holds, to see how
    /// the work is spread over the group.
    stage_tasks: IntGauge,
    /// Input partitions read that are caught up and quiet: they do not
    /// hold the watermark back, and late events right after one resumes
    /// point at `service.source_idle_seconds`.
    idle_inputs: IntGauge,
    /// Partitioned mode: purges of an internal partition below its stage
    /// task's acknowledged snapshot, by result, so operators see the
    /// internal topics kept short (or the brokers refusing to).
    internal_purges: IntCounterVec,
    /// Engine counters already exported, to turn totals into increments.
    last: std::sync::Mutex<EngineStats>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn fgauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Telemetry {
    /// Registers every metric. The names are fixed at compile time, so
    /// registration cannot fail at run time.
    pub fn new() -> Telemetry {
        let r = Registry::new();
        let t = Telemetry {
            consumed: counter_vec(
                &r,
                "idlink_events_consumed_total",
                "Input messages by topic and outcome.",
                &["topic", "outcome"],
            ),
            dead_letters: counter_vec(
                &r,
                "idlink_dead_letters_total",
                "Rejected input messages by reason.",
                &["reason"],
            ),
            late: counter(
                &r,
                "idlink_late_events_total",
                "Activity that arrived behind the watermark.",
            ),
            links_created: counter_vec(
                &r,
                "idlink_links_created_total",
                "Links created, by type.",
                &["type"],
            ),
            links_removed: counter_vec(
                &r,
                "idlink_links_removed_total",
                "Links removed, by type.",
                &["type"],
            ),
            graph_devices: gauge(&r, "idlink_graph_devices", "Devices held in state."),
            graph_accounts: gauge(&r, "idlink_graph_accounts", "Accounts held in state."),
            graph_links: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "idlink_graph_links",
                        "Live links in state by type (links past an account's device cap included).",
                    ),
                    &["type"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            buffered: gauge(
                &r,
                "idlink_reorder_buffer_events",
                "Events waiting for the watermark.",
            ),
            lag: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "idlink_consumer_lag",
                        "Messages behind the end of each input partition.",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            latency: histogram(
                &r,
                "idlink_ingest_to_publish_seconds",
                "From an input record's timestamp to the acknowledged publication of its effects.",
                LATENCY_BUCKETS.to_vec(),
            ),
            sign_in_latency: histogram(
                &r,
                "idlink_sign_in_to_publish_seconds",
                "From a sign-in's input record timestamp to the acknowledged publication of its link.",
                LATENCY_BUCKETS.to_vec(),
            ),
            watermark: fgauge(
                &r,
                "idlink_watermark_seconds",
                "Event-time watermark as Unix seconds.",
            ),
            restore_progress: fgauge(
                &r,
                "idlink_state_restore_progress",
                "State restore progress from 0 to 1.",
            ),
            snapshots: counter(&r, "idlink_snapshots_total", "Engine snapshots written."),
            snapshot_bytes: gauge(
                &r,
                "idlink_snapshot_bytes",
                "Size of the last snapshot (partitioned mode: of the stage tasks it wrote).",
            ),
            snapshot_seconds: histogram(
                &r,
                "idlink_snapshot_duration_seconds",
                "Time to write a snapshot and commit offsets.",
                prometheus::exponential_buckets(0.01, 2.0, 12).expect("valid buckets"),
            ),
            bucket_waits: histogram(
                &r,
                "idlink_bucket_wait_seconds",
                "Partitioned mode: how long a device partition waited for the bucket stage (a day close or a flush), taking no input.",
                LATENCY_BUCKETS.to_vec(),
            ),
            producer_queue: gauge(
                &r,
                "idlink_producer_queue_depth",
                "Messages waiting in the producer queue.",
            ),
            privacy_acks: counter_vec(
                &r,
                "idlink_privacy_acks_total",
                "Privacy requests applied and acknowledged, by kind.",
                &["kind"],
            ),
            published: counter_vec(
                &r,
                "idlink_records_published_total",
                "Output records acknowledged by the brokers, by topic.",
                &["topic"],
            ),
            internal_purges: counter_vec(
                &r,
                "idlink_internal_purges_total",
                "Partitioned mode: internal partitions purged below a stage task's acknowledged snapshot, by result.",
                &["result"],
            ),
            idle_inputs: gauge(
                &r,
                "idlink_idle_input_partitions",
                "Input partitions (events and privacy) this instance reads that are caught up and quiet, and so do not hold the watermark back.",
            ),
            stage_tasks: gauge(
                &r,
                "idlink_stage_tasks",
                "Partitioned mode: stage tasks (device, bucket and account partition j) this instance holds.",
            ),
            standby: gauge(
                &r,
                "idlink_standby",
                "1 while this instance is a standby: another instance owns the consumer group.",
            ),
            ready: gauge(
                &r,
                "idlink_ready",
                "1 when this instance owns the consumer group: state restored, every input partition assigned, brokers reachable.",
            ),
            ready_flag: AtomicBool::new(false),
            last: std::sync::Mutex::new(EngineStats::default()),
            registry: r,
        };
        for reason in RejectReason::ALL {
            t.dead_letters.with_label_values(&[reason.as_str()]);
        }
        for ty in ["login", "inferred"] {
            t.links_created.with_label_values(&[ty]);
            t.links_removed.with_label_values(&[ty]);
        }
        t
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.ready_flag.load(Ordering::Relaxed)
    }

    /// Ready or not (restored and assigned; brokers reachable).
    pub fn set_ready(&self, ready: bool, why: &str) {
        if self.ready_flag.swap(ready, Ordering::Relaxed) != ready {
            tracing::info!(ready, why, "readiness changed");
        }
        self.ready.set(i64::from(ready));
    }

    /// The stage tasks held (partitioned mode).
    pub fn stage_tasks(&self, n: usize) {
        self.stage_tasks.set(n as i64);
    }

    /// Input partitions read that are idle now.
    pub fn idle_inputs(&self, n: usize) {
        self.idle_inputs.set(n as i64);
    }

    /// Standing by (another instance owns the group), or not.
    pub fn set_standby(&self, standby: bool) {
        self.standby.set(i64::from(standby));
    }

    /// An input message was accepted.
    pub fn accepted(&self, topic: &str) {
        self.consumed.with_label_values(&[topic, "accepted"]).inc();
    }

    /// An input message was skipped: the state already holds it, or this
    /// instance does not own the group (yet).
    pub fn skipped(&self, topic: &str) {
        self.consumed
            .with_label_values(&[topic, "already_applied"])
            .inc();
    }

    /// An input message was rejected and sent to the dead-letter topic.
    pub fn rejected(&self, topic: &str, partition: i32, offset: i64, reason: RejectReason) {
        self.consumed.with_label_values(&[topic, "rejected"]).inc();
        self.dead_letters
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::debug!(
            topic,
            partition,
            offset,
            reason = reason.as_str(),
            "dead letter"
        );
    }

    /// Output records were acknowledged.
    fn published(&self, topic: &str, n: u64) {
        self.published.with_label_values(&[topic]).inc_by(n);
    }

    /// A privacy request took effect and was acknowledged.
    pub fn privacy_ack(&self, kind: &str) {
        self.privacy_acks.with_label_values(&[kind]).inc();
        tracing::info!(kind, "privacy request applied");
    }

    /// `batch` was acknowledged: counts its records per output topic and
    /// observes its latency.
    pub fn settled(&self, k: &KafkaConfig, batch: BatchOutput) {
        let topics = [
            &k.device_links_topic,
            &k.account_devices_topic,
            &k.privacy_acks_topic,
        ];
        for (topic, n) in topics.into_iter().zip(batch.published) {
            self.published(topic, n);
        }
        self.published_effects(batch.stamps);
    }

    /// The effects of `records` were just acknowledged: their latency
    /// from ingest, and a sign-in's to its published link.
    fn published_effects(&self, records: impl IntoIterator<Item = InputStamp>) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for r in records {
            let seconds = ((now_ms - r.ts_ms) as f64 / 1000.0).max(0.0);
            self.latency.observe(seconds);
            if r.sign_in {
                self.sign_in_latency.observe(seconds);
            }
        }
    }

    /// Consumer lag of one partition.
    pub fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    /// Drops the lag series of a partition this instance no longer owns,
    /// so dashboards do not show a stale figure for it.
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        let _ = self
            .lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    /// Producer queue depth.
    pub fn producer_queue(&self, depth: i32) {
        self.producer_queue.set(i64::from(depth));
    }

    /// An internal partition's records below `offset` were deleted.
    pub fn internal_purged(&self, topic: &str, partition: i32, offset: i64) {
        self.internal_purges.with_label_values(&["ok"]).inc();
        tracing::debug!(topic, partition, offset, "internal records purged");
    }

    /// Purging an internal partition failed (retention still bounds it).
    pub fn internal_purge_failed(&self, topic: &str, partition: i32, error: &str) {
        self.internal_purges.with_label_values(&["failed"]).inc();
        tracing::warn!(topic, partition, error, "purging internal records failed");
    }

    /// Restore progress.
    pub fn restore_progress(&self, fraction: f64) {
        self.restore_progress.set(fraction.clamp(0.0, 1.0));
    }

    /// A snapshot was written and offsets committed.
    pub fn snapshot(&self, bytes: usize, seconds: f64) {
        self.snapshots.inc();
        self.snapshot_bytes.set(bytes as i64);
        self.snapshot_seconds.observe(seconds);
        tracing::debug!(bytes, seconds, "snapshot written");
    }

    /// A device partition waited `seconds` for the bucket stage.
    pub fn bucket_wait(&self, task: u32, seconds: f64) {
        self.bucket_waits.observe(seconds);
        tracing::debug!(task, seconds, "waited for the bucket stage");
    }

    /// Mirrors the engine's counters and gauges.
    pub fn engine(&self, e: &idlink_core::Engine) {
        self.engines(std::slice::from_ref(e));
    }

    /// Mirrors the counters and gauges of several engines (the device
    /// partitions an instance holds), summed. A partition that moves to
    /// another instance takes its counts along: totals never go down, and
    /// resume counting once they are above what was last seen.
    pub fn engines<'a>(&self, engines: impl IntoIterator<Item = &'a idlink_core::Engine>) {
        let mut s = idlink_core::EngineStats::default();
        let (mut login, mut inferred, mut devices, mut accounts, mut buffered) = (0, 0, 0, 0, 0);
        let mut wm = i64::MAX;
        for e in engines {
            s.add(e.stats());
            let (l, i) = e.link_counts();
            login += l;
            inferred += i;
            devices += e.device_count();
            accounts += e.account_count();
            buffered += e.buffered();
            wm = wm.min(e.watermark().0);
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let d = |new: u64, old: u64| new.saturating_sub(old);
        self.late.inc_by(d(s.late_events, last.late_events));
        self.links_created
            .with_label_values(&["login"])
            .inc_by(d(s.login_links_created, last.login_links_created));
        self.links_created
            .with_label_values(&["inferred"])
            .inc_by(d(s.inferred_links_created, last.inferred_links_created));
        self.links_removed
            .with_label_values(&["login"])
            .inc_by(d(s.login_links_removed, last.login_links_removed));
        self.links_removed
            .with_label_values(&["inferred"])
            .inc_by(d(s.inferred_links_removed, last.inferred_links_removed));
        *last = s;
        self.graph_links
            .with_label_values(&["login"])
            .set(login as i64);
        self.graph_links
            .with_label_values(&["inferred"])
            .set(inferred as i64);
        self.graph_devices.set(devices as i64);
        self.graph_accounts.set(accounts as i64);
        self.buffered.set(buffered as i64);
        if wm > i64::MIN && wm < i64::MAX {
            self.watermark.set(wm as f64 / 1000.0);
        }
    }

    /// Starts from a restored engine's counters, so totals are not
    /// counted twice after a restart.
    pub fn baseline(&self, e: &idlink_core::Engine) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = e.stats().clone();
    }
}
