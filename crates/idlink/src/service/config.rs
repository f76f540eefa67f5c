//! Settings of `idlink run`: the `[kafka]`, `[service]`, `[http]` and
//! `[log]` sections, each overridable by `IDLINK_…` environment variables.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Everything `run` needs beyond the engine's config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Brokers, topics and client settings.
    pub kafka: KafkaConfig,
    /// Batching, snapshots and shutdown.
    pub service: RuntimeConfig,
    /// The metrics and health listener.
    pub http: HttpConfig,
    /// Log format and level.
    pub log: LogConfig,
}

/// Kafka connection and topics.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers (`IDLINK_BROKERS`).
    pub brokers: String,
    /// Consumer group; instances with one group share the work
    /// (`IDLINK_GROUP_ID`).
    pub group_id: String,
    /// Input: device events.
    pub events_topic: String,
    /// Input: privacy requests.
    pub privacy_topic: String,
    /// Output: one record per device, compacted.
    pub device_links_topic: String,
    /// Output: one record per account, compacted.
    pub account_devices_topic: String,
    /// Output: rejected input, raw, with reason headers.
    pub dead_letters_topic: String,
    /// Output: one record per applied privacy request.
    pub privacy_acks_topic: String,
    /// Internal: engine snapshot chunks, compacted.
    pub snapshots_topic: String,
    /// Internal: snapshot manifests (which chunks, which input offsets).
    pub manifests_topic: String,
    /// Partitioned mode: prefix of the internal topics between the stages
    /// (`<prefix>-device-events`, `-sightings`, `-evidence`, `-links`,
    /// `-shown`).
    pub internal_topic_prefix: String,
    /// Partitioned mode: partitions of each internal topic, which is how
    /// many instances at most share the work. Fixed for a deployment's
    /// life: it decides where every key's state lives.
    pub stage_partitions: i32,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Partitions of created input topics.
    pub input_partitions: i32,
    /// Partitions of created output topics.
    pub output_partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// `max.compaction.lag.ms` of the compacted topics idlink creates:
    /// how long an overwritten or deleted value (an erased device's old
    /// links, a superseded snapshot that still holds erased state) may
    /// stay in the log before the broker compacts it away. This bounds
    /// the time to complete erasure on the broker.
    pub max_compaction_lag_hours: u64,
    /// Give up starting if the brokers do not answer within this time.
    pub connect_timeout_seconds: u64,
    /// librdkafka settings for every client (security.protocol, sasl.*,
    /// ssl.*, …), passed through unchanged.
    pub common: BTreeMap<String, String>,
    /// librdkafka settings for the consumer only.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producer only.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "idlink".into(),
            events_topic: "device-events".into(),
            privacy_topic: "privacy-requests".into(),
            device_links_topic: "device-links".into(),
            account_devices_topic: "account-devices".into(),
            dead_letters_topic: "dead-letters".into(),
            privacy_acks_topic: "privacy-acks".into(),
            snapshots_topic: "idlink-snapshots".into(),
            manifests_topic: "idlink-snapshot-manifests".into(),
            internal_topic_prefix: "idlink".into(),
            stage_partitions: 4,
            create_topics: true,
            input_partitions: 4,
            output_partitions: 4,
            replication_factor: 1,
            max_compaction_lag_hours: 24,
            connect_timeout_seconds: 30,
            common: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// The processing loop.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Most input messages processed before their output is published
    /// and acknowledged: bounds the work in flight (backpressure).
    pub batch_max_messages: usize,
    /// Longest a batch stays open, in milliseconds: bounds latency.
    pub batch_max_ms: u64,
    /// How often the engine state is snapshotted and input offsets
    /// committed, in seconds; a crash replays at most this much input.
    pub snapshot_interval_seconds: u64,
    /// With no input for this long, every partition is caught up: the
    /// engine is flushed so the published graph reflects all input.
    pub idle_flush_ms: u64,
    /// A partition at its end and silent this long stops holding the
    /// watermark back (an idle source, as in Flink). When another
    /// partition resumes, an idle one holds the watermark again until it
    /// has been confirmed idle twice, a statistics report apart (about
    /// 2–5 s): a backlog after a pause is not overtaken by the partition
    /// read first.
    pub source_idle_seconds: u64,
    /// The same for a partition of the privacy topic, in milliseconds,
    /// in the partitioned mode. Privacy requests are sparse, so their
    /// partitions are quiet most of the time, and a device partition waits
    /// at each day's end for every partition's watermark: holding it for
    /// `source_idle_seconds` would hold every day close (and the sign-ins
    /// behind it) that long. A request that arrives after the watermark
    /// has passed its `ts` is not dropped: it is applied at once. At most
    /// `source_idle_seconds`.
    pub privacy_source_idle_ms: u64,
    /// Graceful shutdown must finish within this many seconds.
    pub shutdown_deadline_seconds: u64,
    /// Largest snapshot chunk in bytes (below the brokers' message limit).
    pub snapshot_chunk_bytes: usize,
    /// How often a standby looks at the consumer group, in milliseconds:
    /// it takes over this soon after the group empties (the owner left,
    /// or missed its session timeout).
    pub standby_poll_ms: u64,
    /// Run the staged engine: every instance of the group takes a share
    /// of the stage partitions (device, bucket and account stages, re-keyed
    /// through internal topics), so adding an instance adds capacity.
    /// Off: one instance owns the whole graph and the others stand by.
    pub partitioned: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            batch_max_messages: 5000,
            batch_max_ms: 200,
            snapshot_interval_seconds: 30,
            idle_flush_ms: 1000,
            source_idle_seconds: 30,
            privacy_source_idle_ms: 1000,
            shutdown_deadline_seconds: 30,
            snapshot_chunk_bytes: 512 * 1024,
            standby_poll_ms: 1000,
            partitioned: false,
        }
    }
}

/// The HTTP listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/health/live`, `/health/ready`
    /// (`IDLINK_HTTP_ADDR`).
    pub addr: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:9464".into(),
        }
    }
}

/// Logging.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json` (`IDLINK_LOG_FORMAT`).
    pub format: String,
    /// Level filter, e.g. `info` or `idlink=debug` (`IDLINK_LOG`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl ServiceConfig {
    /// Parses the service sections and applies environment overrides.
    pub fn from_table(table: &toml::Table) -> Result<ServiceConfig> {
        let mut c: ServiceConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))
            .context("service config")?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = env("IDLINK_BROKERS") {
            c.kafka.brokers = v;
        }
        if let Some(v) = env("IDLINK_GROUP_ID") {
            c.kafka.group_id = v;
        }
        if let Some(v) = env("IDLINK_HTTP_ADDR") {
            c.http.addr = v;
        }
        if let Some(v) = env("IDLINK_LOG_FORMAT") {
            c.log.format = v;
        }
        if let Some(v) = env("IDLINK_LOG") {
            c.log.level = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks settings against each other.
    pub fn validate(&self) -> Result<()> {
        let k = &self.kafka;
        if k.brokers.trim().is_empty() || k.group_id.trim().is_empty() {
            bail!("kafka.brokers and kafka.group_id must be set");
        }
        let topics = [
            &k.events_topic,
            &k.privacy_topic,
            &k.device_links_topic,
            &k.account_devices_topic,
            &k.dead_letters_topic,
            &k.privacy_acks_topic,
            &k.snapshots_topic,
            &k.manifests_topic,
        ];
        for (i, a) in topics.iter().enumerate() {
            if a.is_empty() {
                bail!("kafka topic names must not be empty");
            }
            if topics[..i].contains(a) {
                bail!("kafka topic {a:?} is configured for two purposes");
            }
        }
        if self.service.partitioned
            && (k.internal_topic_prefix.trim().is_empty()
                || !(1..=1024).contains(&k.stage_partitions))
        {
            bail!("kafka.internal_topic_prefix must be set and kafka.stage_partitions be 1..1024");
        }
        if k.input_partitions < 1 || k.output_partitions < 1 || k.replication_factor < 1 {
            bail!("kafka partition counts and replication factor must be at least 1");
        }
        let session = super::kafka::session_timeout_ms(k);
        let output = super::kafka::output_timeout_ms(k);
        if output >= session || output < 1000 {
            bail!(
                "kafka.producer message.timeout.ms ({output}) must be at least 1000 and below the \
                 consumer's session.timeout.ms ({session}): a paused owner's queued output must \
                 expire before another instance can take the group over"
            );
        }
        if !(1..=24 * 30).contains(&k.max_compaction_lag_hours) {
            bail!("kafka.max_compaction_lag_hours must be from 1 to 720 (30 days)");
        }
        for key in k
            .common
            .keys()
            .chain(k.consumer.keys())
            .chain(k.producer.keys())
        {
            if [
                "enable.auto.commit",
                "group.id",
                "bootstrap.servers",
                "enable.idempotence",
            ]
            .contains(&key.as_str())
            {
                bail!("kafka setting {key:?} is managed by idlink and cannot be overridden");
            }
        }
        let s = &self.service;
        if s.batch_max_messages == 0 || s.batch_max_ms == 0 {
            bail!("service.batch_max_messages and batch_max_ms must be positive");
        }
        if s.snapshot_interval_seconds == 0 || s.idle_flush_ms == 0 {
            bail!("service.snapshot_interval_seconds and idle_flush_ms must be positive");
        }
        if s.source_idle_seconds == 0 {
            bail!("service.source_idle_seconds must be positive");
        }
        if s.privacy_source_idle_ms == 0
            || s.privacy_source_idle_ms > s.source_idle_seconds.saturating_mul(1000)
        {
            bail!(
                "service.privacy_source_idle_ms must be positive and at most source_idle_seconds"
            );
        }
        if s.idle_flush_ms < s.batch_max_ms {
            bail!("service.idle_flush_ms must be at least batch_max_ms");
        }
        if !(1024..=16 * 1024 * 1024).contains(&s.snapshot_chunk_bytes) {
            bail!("service.snapshot_chunk_bytes must be 1 KiB..16 MiB");
        }
        if !(100..=60_000).contains(&s.standby_poll_ms) {
            bail!("service.standby_poll_ms must be from 100 to 60000");
        }
        self.http
            .addr
            .parse::<SocketAddr>()
            .with_context(|| format!("http.addr {:?} is not host:port", self.http.addr))?;
        if !["text", "json"].contains(&self.log.format.as_str()) {
            bail!("log.format must be \"text\" or \"json\"");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults, with brokers and a group (which have none).
    fn config() -> ServiceConfig {
        let mut c = ServiceConfig::default();
        c.kafka.brokers = "localhost:9092".into();
        c.kafka.group_id = "idlink".into();
        c
    }

    #[test]
    fn privacy_idle_time_is_checked_against_the_events_one() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.service.privacy_source_idle_ms = 0;
        assert!(c.validate().is_err(), "zero");
        let mut c = config();
        c.service.source_idle_seconds = 5;
        c.service.privacy_source_idle_ms = 5_000;
        assert!(c.validate().is_ok(), "equal");
        c.service.privacy_source_idle_ms = 5_001;
        assert!(c.validate().is_err(), "longer than an events partition's");
    }
}
