//! Kafka clients: configuration, the statistics context, and the topic
//! check at start.

use super::config::KafkaConfig;
use super::telemetry::Telemetry;
use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Base client config: brokers plus the pass-through `common` settings.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, v) in &k.common {
        c.set(key, v);
    }
    c
}

/// How long a stopping instance waits for its consumer to leave the group.
pub const LEAVE_LIMIT: Duration = Duration::from_secs(5);

/// Drops `clients` (a service loop holding a group consumer) on a blocking
/// thread and waits for that at most `limit`. Dropping a group consumer
/// leaves the group, and rust-rdkafka polls until librdkafka says it has
/// left, with no bound (fede1024/rust-rdkafka#509): a rebalance or a broker
/// that stops answering would hold the process forever after its work is
/// done. Everything it wrote is acknowledged by then, so past the limit it
/// exits anyway and the group reassigns its partitions after the session
/// timeout.
pub async fn leave_group<T: Send + 'static>(clients: T, limit: Duration) {
    let dropped = tokio::task::spawn_blocking(move || drop(clients));
    match tokio::time::timeout(limit, dropped).await {
        Ok(_) => tracing::info!("left the consumer group"),
        Err(_) => tracing::warn!(
            seconds = limit.as_secs(),
            "the consumer has not left its group in time: exiting without it; the group \
             reassigns its partitions after the session timeout"
        ),
    }
}

/// How often the loops look at the lag statistics (idle input partitions,
/// caught-up tasks): per message would copy them per message.
pub const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Consumer config: manual commits only after outputs and a snapshot are
/// acknowledged; offsets are never stored automatically.
pub fn consumer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(k);
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "1000")
        .set("enable.partition.eof", "false");
    for (key, v) in &k.consumer {
        c.set(key, v);
    }
    c
}

/// Producer config: idempotent, acknowledged by all in-sync replicas.
pub fn producer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(k);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", "4000000");
    for (key, v) in &k.producer {
        c.set(key, v);
    }
    c
}

/// The consumer's session timeout in milliseconds (librdkafka's default
/// unless `[kafka.consumer]` sets it).
pub fn session_timeout_ms(k: &KafkaConfig) -> u64 {
    k.consumer
        .get("session.timeout.ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(45_000)
}

/// The output producer's `message.timeout.ms`: what `[kafka.producer]`
/// sets (`validate` keeps it below the session timeout), else half the
/// session timeout.
pub fn output_timeout_ms(k: &KafkaConfig) -> u64 {
    ["message.timeout.ms", "delivery.timeout.ms"]
        .iter()
        .find_map(|key| k.producer.get(*key).and_then(|v| v.parse().ok()))
        .unwrap_or(session_timeout_ms(k) / 2)
}

/// Config of the producer of the output topics. Its records expire in
/// the queue before the session timeout: an owner paused past its
/// session timeout (a zombie) wakes to expired records, not to records
/// appended after its successor's (the pipeline re-sends a timed-out
/// record only after checking it still owns the group).
pub fn output_producer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = producer_config(k);
    c.set("message.timeout.ms", output_timeout_ms(k).to_string());
    c
}

/// Shared view of the consumer's partitions, fed by librdkafka callbacks.
#[derive(Default)]
pub struct PartitionState {
    /// Lag per (topic, partition) from the last statistics.
    pub lag: Mutex<HashMap<(String, i32), i64>>,
    /// Statistics reports received: a report numbered after a moment was
    /// emitted after it (librdkafka emits one every
    /// `statistics.interval.ms`), so idle confirmations can rest on a
    /// look taken after their previous one was delivered.
    pub reports: AtomicU64,
    /// The last report in which each (topic, partition) was at its end.
    pub at_end: Mutex<HashMap<(String, i32), u64>>,
    /// Partitions currently assigned.
    pub assigned: AtomicUsize,
    /// Partitions of both input topics. idlink's state is whole-graph, so
    /// the active instance must own them all (see `ownership.rs`).
    pub input_partitions: AtomicUsize,
    /// The assignment itself, with a generation that changes with it.
    pub assignment: Mutex<Assignment>,
    /// Set when every broker is down; cleared when statistics flow again.
    pub brokers_down: AtomicBool,
}

impl PartitionState {
    /// The assignment, unless its generation is still `seen`.
    pub fn assignment_since(&self, seen: u64) -> Option<Assignment> {
        let a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
        (a.generation != seen).then(|| a.clone())
    }

    /// A copy of the lag per partition from the last statistics.
    pub fn lag_now(&self) -> HashMap<(String, i32), i64> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The number of the last statistics report.
    pub fn report(&self) -> u64 {
        self.reports.load(Ordering::Acquire)
    }

    /// Whether `tp` was at its end in a report numbered `report` or later.
    pub fn at_end_since(&self, tp: &(String, i32), report: u64) -> bool {
        let at_end = self.at_end.lock().unwrap_or_else(|p| p.into_inner());
        at_end.get(tp).is_some_and(|&r| r >= report)
    }

    /// The partitions assigned now.
    pub fn assigned_partitions(&self) -> Vec<(String, i32)> {
        let a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
        a.partitions.clone()
    }
}

/// The consumer's current partitions, as the last rebalance left them.
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    /// Changes with every rebalance callback, so the pipeline can tell a
    /// new assignment from the one it has acted on: it registers every
    /// assigned partition as a watermark source before its first message
    /// (an unseen partition must hold the watermark back, or its first
    /// events would be late), and decides its role.
    pub generation: u64,
    /// The assigned (topic, partition)s.
    pub partitions: Vec<(String, i32)>,
    /// Set by a revocation: between a revocation and the next assignment
    /// the group is rebalancing, which is not a decision to act on.
    pub revoked: bool,
}

/// Consumer context: exports lag and tracks assignment and broker health.
pub struct ServiceContext {
    /// Where lag goes.
    pub telemetry: Arc<Telemetry>,
    /// Shared partition view.
    pub partitions: Arc<PartitionState>,
}

impl ClientContext for ServiceContext {
    fn stats(&self, stats: Statistics) {
        let mut at_end = Vec::new();
        let mut lag = self
            .partitions
            .lag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                tracing::trace!(
                    topic,
                    partition = p,
                    state = %part.fetch_state,
                    hi = part.hi_offset,
                    lo = part.lo_offset,
                    app = part.app_offset,
                    committed = part.committed_offset,
                    "partition statistics"
                );
                if *p < 0 || part.fetch_state != "active" || part.hi_offset < 0 {
                    continue;
                }
                // Where this consumer stands: what it handed to the
                // application, else its committed offset, else the start.
                let position = [part.app_offset, part.committed_offset, part.lo_offset, 0]
                    .into_iter()
                    .find(|&o| o >= 0)
                    .unwrap_or(0);
                let l = (part.hi_offset - position).max(0);
                self.telemetry.lag(topic, *p, l);
                lag.insert((topic.clone(), *p), l);
                if l == 0 {
                    at_end.push((topic.clone(), *p));
                }
            }
        }
        drop(lag);
        let report = self.partitions.reports.load(Ordering::Acquire) + 1;
        let mut ends = self
            .partitions
            .at_end
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ends.extend(at_end.into_iter().map(|tp| (tp, report)));
        drop(ends);
        self.partitions.reports.store(report, Ordering::Release);
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.partitions.brokers_down.store(!up, Ordering::Relaxed);
        if !up {
            // Said here, not only by the pipeline: it may be waiting for
            // acknowledgements that only the brokers' return will bring.
            self.telemetry.set_ready(false, "brokers unreachable");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.telemetry, &self.partitions, &error, reason);
    }
}

/// A client's error callback: losing every broker makes the service
/// not-ready at once; everything is logged.
fn client_error(
    telemetry: &Telemetry,
    partitions: &PartitionState,
    error: &KafkaError,
    reason: &str,
) {
    if matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown)
    ) {
        partitions.brokers_down.store(true, Ordering::Relaxed);
        telemetry.set_ready(false, "brokers unreachable");
    }
    tracing::warn!(error = %error, reason, "kafka client error");
}

/// Producer context. The producer's polling thread runs on its own, so it
/// reports losing the brokers even while the pipeline waits for
/// acknowledgements and does not poll the consumer (whose callbacks are
/// then silent).
pub struct ProducerHealth {
    /// Where readiness goes.
    pub telemetry: Arc<Telemetry>,
    /// Shared broker-health flag.
    pub partitions: Arc<PartitionState>,
}

impl ClientContext for ProducerHealth {
    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.telemetry, &self.partitions, &error, reason);
    }
}

impl ConsumerContext for ServiceContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned: Vec<(String, i32)> = match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                for e in tpl.elements() {
                    self.telemetry.forget_lag(e.topic(), e.partition());
                }
                self.partitions
                    .lag
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                Vec::new()
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        self.partitions
            .assigned
            .store(assigned.len(), Ordering::Relaxed);
        let mut a = self
            .partitions
            .assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        a.generation += 1;
        a.revoked = matches!(rebalance, Rebalance::Revoke(_));
        a.partitions = assigned;
    }
}

/// One topic the service needs, and how.
struct Wanted<'a> {
    name: &'a str,
    partitions: i32,
    compacted: bool,
}

/// Retention of the internal topics: far longer than any snapshot
/// interval, so a restoring stage partition always finds the records
/// after its snapshot.
const INTERNAL_RETENTION_MS: &str = "259200000";

/// Waits for the brokers (up to the configured timeout), creates missing
/// topics (and the `internal` ones, with `stage_partitions` partitions and
/// three days' retention) and refuses to start if an existing output
/// topic has the wrong cleanup policy. Returns the partitions of the two
/// input topics (events, privacy).
pub async fn ensure_topics(k: &KafkaConfig, internal: &[String]) -> Result<(usize, usize)> {
    let admin: AdminClient<DefaultClientContext> = client_config(k)
        .create()
        .context("creating the admin client")?;
    let timeout = Duration::from_secs(k.connect_timeout_seconds);
    let metadata = tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, timeout))
        .map_err(|e| {
            anyhow::anyhow!(
                "the brokers at {} cannot be reached within {} s: {e}",
                k.brokers,
                k.connect_timeout_seconds
            )
        })?;
    let existing: HashMap<String, usize> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    let partitions_of = |t: &str| {
        existing
            .get(t)
            .copied()
            .unwrap_or(k.input_partitions as usize)
    };
    let input_partitions = (
        partitions_of(&k.events_topic),
        partitions_of(&k.privacy_topic),
    );
    let mut wanted = vec![
        Wanted {
            name: &k.events_topic,
            partitions: k.input_partitions,
            compacted: false,
        },
        Wanted {
            name: &k.privacy_topic,
            partitions: k.input_partitions,
            compacted: false,
        },
        Wanted {
            name: &k.device_links_topic,
            partitions: k.output_partitions,
            compacted: true,
        },
        Wanted {
            name: &k.account_devices_topic,
            partitions: k.output_partitions,
            compacted: true,
        },
        Wanted {
            name: &k.dead_letters_topic,
            partitions: k.output_partitions,
            compacted: false,
        },
        Wanted {
            name: &k.privacy_acks_topic,
            partitions: k.output_partitions,
            compacted: false,
        },
        Wanted {
            name: &k.snapshots_topic,
            partitions: 1,
            compacted: true,
        },
        Wanted {
            name: &k.manifests_topic,
            partitions: 1,
            compacted: true,
        },
    ];
    wanted.extend(internal.iter().map(|name| Wanted {
        name,
        partitions: k.stage_partitions,
        compacted: false,
    }));
    let missing: Vec<&Wanted> = wanted
        .iter()
        .filter(|w| !existing.contains_key(w.name))
        .collect();
    let compaction_lag_ms = (k.max_compaction_lag_hours * 3_600_000).to_string();
    if !missing.is_empty() {
        if !k.create_topics {
            let names: Vec<&str> = missing.iter().map(|w| w.name).collect();
            bail!("topics {names:?} do not exist and kafka.create_topics is off");
        }
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|w| {
                let t = NewTopic::new(
                    w.name,
                    w.partitions,
                    TopicReplication::Fixed(k.replication_factor),
                );
                if w.compacted {
                    t.set("cleanup.policy", "compact")
                        .set("max.compaction.lag.ms", &compaction_lag_ms)
                } else if internal.iter().any(|i| i == w.name) {
                    t.set("cleanup.policy", "delete")
                        .set("retention.ms", INTERNAL_RETENTION_MS)
                } else {
                    t.set("cleanup.policy", "delete")
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(timeout));
        for r in admin
            .create_topics(&new, &opts)
            .await
            .context("creating topics")?
        {
            match r {
                Ok(name) => tracing::info!(topic = name, "created topic"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(topic = name, "topic exists")
                }
                Err((name, code)) => bail!("creating topic {name}: {code}"),
            }
        }
    }
    // Existing compacted outputs must really be compacted: with `delete`,
    // consumers rebuilding the graph would silently lose devices.
    let check: Vec<&Wanted> = wanted
        .iter()
        .filter(|w| w.compacted && existing.contains_key(w.name))
        .collect();
    if check.is_empty() {
        return Ok(input_partitions);
    }
    let specs: Vec<ResourceSpecifier> = check
        .iter()
        .map(|w| ResourceSpecifier::Topic(w.name))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    match admin.describe_configs(&specs, &opts).await {
        Ok(results) => {
            for (w, r) in check.iter().zip(results) {
                let policy = match r {
                    Ok(res) => res.get("cleanup.policy").and_then(|e| e.value.clone()),
                    Err(e) => {
                        tracing::warn!(topic = w.name, error = %e, "cannot read the topic's cleanup.policy; not checked");
                        continue;
                    }
                };
                match policy {
                    Some(p) if p.split(',').any(|x| x.trim() == "compact") => {}
                    Some(p) => bail!(
                        "topic {} has cleanup.policy={p}, but idlink publishes a compacted graph there: set cleanup.policy=compact or choose another topic",
                        w.name
                    ),
                    None => tracing::warn!(
                        topic = w.name,
                        "the broker did not report cleanup.policy; not checked"
                    ),
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the broker does not answer DescribeConfigs; cleanup policies not checked")
        }
    }
    Ok(input_partitions)
}
