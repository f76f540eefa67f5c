//! Engine snapshots in Kafka.
//!
//! A snapshot is written as chunks to a compacted, single-partition topic,
//! then a small manifest (which chunks, which input offsets) to a second
//! compacted topic. Only after the manifest is acknowledged are the input
//! offsets committed. A restore reads the manifests (small: one record per
//! snapshot), takes the newest for this group, and reads just that
//! snapshot's chunks by offset: never the whole history.

use super::config::{KafkaConfig, RuntimeConfig};
use super::kafka::{client_config, producer_config};
use super::telemetry::Telemetry;
use anyhow::{Context, Result, bail};
use futures::future::try_join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a snapshot's chunks are and which input it covers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Owner of the snapshot (the consumer group).
    pub key: String,
    /// Increasing snapshot number.
    pub id: u64,
    /// Offset of the first chunk in the snapshots topic.
    pub first_offset: i64,
    /// Number of chunks.
    pub chunks: usize,
    /// Total bytes.
    pub bytes: usize,
    /// Next input offset per `topic/partition`: everything before it is in
    /// the snapshot.
    pub positions: BTreeMap<String, i64>,
}

/// Writes and reads snapshots.
pub struct Snapshots {
    /// Producer for chunks and manifests.
    producer: FutureProducer,
    /// Kafka settings (topics, brokers).
    kafka: KafkaConfig,
    /// Largest chunk.
    chunk_bytes: usize,
    /// The last snapshot written or restored, whose chunks are removed once
    /// a newer one is complete.
    last: Option<Manifest>,
}

fn headers() -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: "schema-version",
        value: Some("1"),
    })
}

impl Snapshots {
    /// A store for this group's snapshots.
    pub fn new(kafka: &KafkaConfig, runtime: &RuntimeConfig) -> Result<Snapshots> {
        Ok(Snapshots {
            producer: producer_config(kafka)
                .create()
                .context("creating the snapshot producer")?,
            kafka: kafka.clone(),
            chunk_bytes: runtime.snapshot_chunk_bytes,
            last: None,
        })
    }

    /// Writes `bytes` covering input up to `positions`; returns once the
    /// manifest is acknowledged.
    pub async fn save(
        &mut self,
        bytes: &[u8],
        positions: BTreeMap<String, i64>,
    ) -> Result<Manifest> {
        let key = self.kafka.group_id.clone();
        let id = self.last.as_ref().map_or(1, |m| m.id + 1);
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(self.chunk_bytes).collect()
        };
        let sends = chunks.iter().enumerate().map(|(i, c)| {
            let k = format!("{key}/{id}/{i}");
            let producer = &self.producer;
            let topic = &self.kafka.snapshots_topic;
            async move {
                let record = FutureRecord::to(topic)
                    .key(&k)
                    .payload(*c)
                    .partition(0)
                    .headers(headers());
                producer
                    .send(record, Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("writing snapshot chunk: {e}"))
            }
        });
        let delivered = try_join_all(sends).await?;
        let first_offset = delivered.iter().map(|d| d.offset).min().unwrap_or(0);
        let last_offset = delivered.iter().map(|d| d.offset).max().unwrap_or(0);
        if last_offset - first_offset + 1 != chunks.len() as i64 {
            // Another writer interleaved: the offsets still identify our
            // chunks by key, so only note it.
            tracing::warn!(
                first_offset,
                last_offset,
                chunks = chunks.len(),
                "snapshot chunks are not contiguous"
            );
        }
        let manifest = Manifest {
            key: key.clone(),
            id,
            first_offset,
            chunks: chunks.len(),
            bytes: bytes.len(),
            positions,
        };
        let value = serde_json::to_vec(&manifest)?;
        let record = FutureRecord::to(&self.kafka.manifests_topic)
            .key(&key)
            .payload(&value)
            .partition(0)
            .headers(headers());
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("writing snapshot manifest: {e}"))?;
        if let Some(old) = self.last.replace(manifest.clone()) {
            for i in 0..old.chunks {
                let k = format!("{key}/{}/{i}", old.id);
                let record: FutureRecord<'_, String, [u8]> =
                    FutureRecord::to(&self.kafka.snapshots_topic)
                        .key(&k)
                        .partition(0);
                // Best effort: a missed tombstone only leaves an unused chunk.
                if let Err((e, _)) = self.producer.send(record, Duration::from_secs(10)).await {
                    tracing::warn!(error = %e, "removing an old snapshot chunk failed");
                }
            }
        }
        Ok(manifest)
    }

    /// Reads this group's newest snapshot, if any.
    pub async fn load(&mut self, telemetry: &Telemetry) -> Result<Option<(Vec<u8>, Manifest)>> {
        let kafka = self.kafka.clone();
        let found = tokio::task::block_in_place(|| load_blocking(&kafka, telemetry))?;
        if let Some((_, m)) = &found {
            self.last = Some(m.clone());
        }
        Ok(found)
    }
}

fn reader(kafka: &KafkaConfig) -> Result<BaseConsumer> {
    let mut c = client_config(kafka);
    c.set("group.id", format!("{}-restore", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    c.create().context("creating the snapshot reader")
}

/// Reads partition 0 of `topic` from `from` up to its end, calling `f` per
/// record; stops early when `f` returns false.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    from: i64,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) -> Result<()> {
    let timeout = Duration::from_secs(30);
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .with_context(|| format!("reading the end of {topic}"))?;
    let start = from.max(low);
    if start >= high {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if std::time::Instant::now() > deadline {
            bail!("reading {topic} timed out");
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let offset = m.offset();
                if !f(&m) || offset + 1 >= high {
                    break;
                }
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    consumer.unassign()?;
    Ok(())
}

fn load_blocking(
    kafka: &KafkaConfig,
    telemetry: &Telemetry,
) -> Result<Option<(Vec<u8>, Manifest)>> {
    let consumer = reader(kafka)?;
    let mut newest: Option<Manifest> = None;
    read_range(&consumer, &kafka.manifests_topic, 0, |m| {
        if m.key() == Some(kafka.group_id.as_bytes())
            && let Some(Ok(man)) = m.payload().map(serde_json::from_slice::<Manifest>)
            && newest.as_ref().is_none_or(|n| man.id > n.id)
        {
            newest = Some(man);
        }
        true
    })?;
    let Some(man) = newest else {
        telemetry.restore_progress(1.0);
        return Ok(None);
    };
    let mut parts: Vec<Option<Vec<u8>>> = vec![None; man.chunks];
    let mut got = 0usize;
    let prefix = format!("{}/{}/", man.key, man.id);
    read_range(&consumer, &kafka.snapshots_topic, man.first_offset, |m| {
        if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok())
            && let Some(i) = k
                .strip_prefix(&prefix)
                .and_then(|i| i.parse::<usize>().ok())
            && let Some(slot) = parts.get_mut(i)
            && slot.is_none()
        {
            *slot = Some(m.payload().unwrap_or_default().to_vec());
            got += 1;
            telemetry.restore_progress(got as f64 / man.chunks as f64);
        }
        got < man.chunks
    })?;
    if got < man.chunks {
        bail!(
            "snapshot {} of {} is incomplete: {got} of {} chunks found",
            man.id,
            man.key,
            man.chunks
        );
    }
    let bytes: Vec<u8> = parts.into_iter().flatten().flatten().collect();
    if bytes.len() != man.bytes {
        bail!(
            "snapshot {} has {} bytes, the manifest says {}",
            man.id,
            bytes.len(),
            man.bytes
        );
    }
    Ok(Some((bytes, man)))
}
