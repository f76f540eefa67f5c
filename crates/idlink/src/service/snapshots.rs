//! Engine snapshots in Kafka.
//!
//! A snapshot is written as chunks to a compacted, single-partition topic,
//! then a small manifest (which chunks, which input offsets) to a second
//! compacted topic. Only after the manifest is acknowledged are the input
//! offsets committed. A restore reads the manifests (small: one record per
//! snapshot), takes the newest for this group, and reads just that
//! snapshot's chunks by offset: never the whole history.
//!
//! **Epochs fence stale owners.** Every instance that takes over the
//! group's work claims an epoch one above the newest manifest's and
//! writes a snapshot under it before it processes anything. "Newest"
//! means the greatest `(epoch, id)`, not the last written: an instance
//! that lost the group while paused (a zombie) and writes a manifest
//! afterwards writes it under its old epoch, and restores ignore it.
//! Manifests are keyed by group and epoch, so compaction never lets a
//! zombie's manifest replace the current owner's, and chunks are keyed by
//! group, epoch and snapshot id, so two owners never share a chunk key.
//! Before publishing, the owner looks for a newer claim
//! ([`Snapshots::superseded`]); a zombie finds its successor's claim and
//! stops. A partitioned stage task is claimed ahead of its restore
//! ([`Snapshots::claim_ahead`]: a manifest record that holds no state),
//! so that its previous owner may delete the input its snapshot covers.
//!
//! **Republish requests.** What a frozen owner had handed to its producer
//! can still land after its successor's records. An owner that finds it
//! was replaced asks for those keys to be written again
//! ([`Snapshots::ask_republish`]): a request record in the manifests
//! topic, which the owner's looks read. A manifest records from which
//! offset on requests were not yet acted on in its state
//! (`requests_from`), so a restore acts on exactly those.

use super::config::{KafkaConfig, RuntimeConfig};
use super::kafka::{client_config, producer_config};
use super::telemetry::Telemetry;
use anyhow::{Context, Result, bail};
use futures::future::{join_all, try_join_all};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a snapshot's chunks are and which input it covers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Owner of the snapshot (the consumer group).
    pub key: String,
    /// Ownership epoch of the writer: a later owner's is greater.
    /// (Manifests from before epochs have 0.)
    #[serde(default)]
    pub epoch: u64,
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
    /// A claim written ahead of the restore ([`Snapshots::claim_ahead`]):
    /// it holds no state and is never restored, but its epoch counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim: bool,
    /// Republish requests at this offset of the manifests topic and after
    /// were not yet acted on in this state: a restore acts on them.
    /// (Manifests from before requests have 0: every request is acted on
    /// again, which only writes current records again.)
    #[serde(default)]
    pub requests_from: i64,
}

/// A fenced owner's request: the group's owner renders these keys again
/// (its line, or a tombstone), so that the last record of each is its own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepublishRequest {
    /// The consumer group.
    pub group: String,
    /// Epoch of the fenced owner that asked (for the logs).
    pub epoch: u64,
    /// `device-links` keys.
    pub devices: Vec<Box<str>>,
    /// `account-devices` keys.
    pub accounts: Vec<Box<str>>,
}

/// A request read from the manifests topic and not yet acted on.
#[derive(Debug)]
struct Pending {
    /// Its record key, tombstoned once a snapshot covers it.
    key: String,
    /// What it asks.
    request: RepublishRequest,
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
    /// Epoch of the state this instance holds: the restored manifest's,
    /// then the one it claimed.
    epoch: u64,
    /// Whether `epoch` was claimed by this instance (it may write).
    claimed: bool,
    /// An epoch claimed ahead of the restore, which [`Snapshots::claim`]
    /// takes instead of a new one.
    ahead: Option<u64>,
    /// Greatest epoch among this group's manifests seen so far.
    newest_epoch: u64,
    /// Manifests before this offset have been read.
    scanned_to: i64,
    /// Republish requests read and not yet taken by the owner.
    requests: Vec<Pending>,
    /// Requests before this offset were taken (or covered by the restored
    /// snapshot): the next snapshot's `requests_from`.
    requests_from: i64,
    /// Record keys of requests taken since the last snapshot: removed once
    /// a snapshot covers them.
    taken: Vec<String>,
    /// Reads manifests and chunks (never joins the group).
    reader: BaseConsumer,
}

/// A manifest's record key: one per group and epoch.
fn manifest_key(group: &str, epoch: u64) -> String {
    format!("{group}/{epoch}")
}

/// Prefix of a republish request's record key (after the group).
const REQUEST_KEY: &[u8] = b"/republish/";

/// The manifest in a record of the manifests topic, if it is one of
/// `group`'s (keyed by the group, or by group and epoch).
fn group_manifest(m: &rdkafka::message::BorrowedMessage<'_>, group: &str) -> Option<Manifest> {
    let key = m.key()?;
    let ours = key == group.as_bytes()
        || key
            .strip_prefix(group.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'/') && !rest.starts_with(REQUEST_KEY));
    if !ours {
        return None;
    }
    serde_json::from_slice(m.payload()?).ok()
}

/// The republish request in a record of the manifests topic, if it is one
/// of `group`'s (a tombstone, once acted on, is none).
fn group_request(m: &rdkafka::message::BorrowedMessage<'_>, group: &str) -> Option<Pending> {
    let key = m.key()?;
    if !key
        .strip_prefix(group.as_bytes())
        .is_some_and(|rest| rest.starts_with(REQUEST_KEY))
    {
        return None;
    }
    let request: RepublishRequest = serde_json::from_slice(m.payload()?).ok()?;
    Some(Pending {
        key: String::from_utf8_lossy(key).into_owned(),
        request,
    })
}

/// Prefix of a snapshot's chunk keys (before epochs: group and id only).
fn chunk_prefix(group: &str, epoch: u64, id: u64) -> String {
    if epoch == 0 {
        format!("{group}/{id}/")
    } else {
        format!("{group}/{epoch}/{id}/")
    }
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
        Snapshots::with_producer(kafka, runtime, Snapshots::producer(kafka)?)
    }

    /// A producer for [`Snapshots::with_producer`].
    pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer> {
        producer_config(kafka)
            .create()
            .context("creating the snapshot producer")
    }

    /// A store for this group's snapshots writing with `producer`, which
    /// several stores may share (the partitioned run's stage tasks: one
    /// producer, not one per task, with its threads and connections).
    pub fn with_producer(
        kafka: &KafkaConfig,
        runtime: &RuntimeConfig,
        producer: FutureProducer,
    ) -> Result<Snapshots> {
        Ok(Snapshots {
            producer,
            kafka: kafka.clone(),
            chunk_bytes: runtime.snapshot_chunk_bytes,
            last: None,
            epoch: 0,
            claimed: false,
            ahead: None,
            newest_epoch: 0,
            scanned_to: 0,
            requests: Vec::new(),
            requests_from: 0,
            taken: Vec::new(),
            reader: reader(kafka)?,
        })
    }

    /// The epoch of the state this instance holds.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether this instance has claimed its epoch (and may write).
    pub fn claimed(&self) -> bool {
        self.claimed
    }

    /// Takes the next epoch (or the one claimed ahead): the caller is the
    /// group's owner from now on and must write a snapshot before it
    /// processes anything.
    pub fn claim(&mut self) -> u64 {
        self.epoch = match self.ahead.take() {
            Some(epoch) => epoch,
            None => self.newest_epoch.max(self.epoch) + 1,
        };
        self.newest_epoch = self.epoch;
        self.claimed = true;
        self.epoch
    }

    /// Claims the next epoch before the state is read: writes a claim
    /// record under it and returns once it is acknowledged; the next
    /// [`Snapshots::claim`] takes it. An owner that deletes input its
    /// snapshot covers looks for newer claims after the snapshot is
    /// acknowledged (`purge.rs`): either it finds this one, or this
    /// restore reads that snapshot or a newer one.
    pub async fn claim_ahead(&mut self) -> Result<u64> {
        self.superseded()?;
        let epoch = self.newest_epoch.max(self.epoch) + 1;
        let claim = Manifest {
            key: self.kafka.group_id.clone(),
            epoch,
            id: 0,
            first_offset: -1,
            chunks: 0,
            bytes: 0,
            positions: BTreeMap::new(),
            claim: true,
            requests_from: 0,
        };
        self.write_manifest(&claim).await?;
        self.newest_epoch = epoch;
        self.ahead = Some(epoch);
        Ok(epoch)
    }

    /// Forgets the claim (ownership lost); the held state is stale.
    pub fn release(&mut self) {
        self.claimed = false;
    }

    /// The end of the manifests topic now: a look for newer claims that
    /// starts at it ([`Snapshots::superseded_by`]) sees every manifest
    /// acknowledged before this call. Several stores of one manifests
    /// topic (the partitioned run's tasks) share one lookup.
    pub fn manifests_end(&self) -> Result<i64> {
        let topic = &self.kafka.manifests_topic;
        let (_, high) = tokio::task::block_in_place(|| {
            self.reader
                .fetch_watermarks(topic, 0, Duration::from_secs(30))
        })
        .with_context(|| format!("reading the end of {topic}"))?;
        Ok(high)
    }

    /// [`Snapshots::superseded`] given the topic's end from
    /// [`Snapshots::manifests_end`]: no lookup at all when this store has
    /// read that far.
    pub fn superseded_by(&mut self, end: i64) -> Result<bool> {
        if self.scanned_to >= end {
            return Ok(self.newest_epoch > self.epoch);
        }
        self.superseded()
    }

    /// Whether another instance claimed a newer epoch than the state this
    /// one holds: reads the manifests written since the last look (one
    /// offset lookup when there are none).
    pub fn superseded(&mut self) -> Result<bool> {
        let group = self.kafka.group_id.clone();
        let topic = self.kafka.manifests_topic.clone();
        let mut newest = self.newest_epoch;
        let mut end = self.scanned_to;
        let requests = &mut self.requests;
        tokio::task::block_in_place(|| {
            read_range(&self.reader, &topic, self.scanned_to, |m| {
                end = m.offset() + 1;
                if let Some(man) = group_manifest(m, &group) {
                    newest = newest.max(man.epoch);
                } else if let Some(r) = group_request(m, &group) {
                    requests.push(r);
                }
                true
            })
        })?;
        self.newest_epoch = newest;
        self.scanned_to = end;
        Ok(newest > self.epoch)
    }

    /// Writes `bytes` covering input up to `positions`; returns once the
    /// manifest is acknowledged.
    pub async fn save(
        &mut self,
        bytes: &[u8],
        positions: BTreeMap<String, i64>,
    ) -> Result<Manifest> {
        let key = self.kafka.group_id.clone();
        let epoch = self.epoch;
        let id = self.last.as_ref().map_or(1, |m| m.id + 1);
        let prefix = chunk_prefix(&key, epoch, id);
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(self.chunk_bytes).collect()
        };
        let sends = chunks.iter().enumerate().map(|(i, c)| {
            let k = format!("{prefix}{i}");
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
            epoch,
            id,
            first_offset,
            chunks: chunks.len(),
            bytes: bytes.len(),
            positions,
            claim: false,
            requests_from: self.requests_from,
        };
        self.write_manifest(&manifest).await?;
        // Best effort: a missed tombstone only leaves an unused record (a
        // request a later restore skips by its offset). The requests acted
        // on are covered by this snapshot.
        let manifests = self.kafka.manifests_topic.as_str();
        let mut stale: Vec<(&str, String)> = std::mem::take(&mut self.taken)
            .into_iter()
            .map(|k| (manifests, k))
            .collect();
        if let Some(old) = self.last.replace(manifest.clone()) {
            stale.extend((0..old.chunks).map(|i| {
                (
                    self.kafka.snapshots_topic.as_str(),
                    format!("{}{i}", chunk_prefix(&old.key, old.epoch, old.id)),
                )
            }));
            if old.epoch != epoch {
                // The previous owner's manifest key: this epoch's replaces it.
                let k = if old.epoch == 0 {
                    old.key.clone()
                } else {
                    manifest_key(&key, old.epoch)
                };
                stale.push((manifests, k));
            }
        }
        // All at once: awaited one by one, each waited out the producer's
        // linger.
        let sends = stale.iter().map(|(topic, k)| {
            let record: FutureRecord<'_, String, [u8]> =
                FutureRecord::to(topic).key(k).partition(0);
            self.producer.send(record, Duration::from_secs(10))
        });
        for sent in join_all(sends).await {
            if let Err((e, _)) = sent {
                tracing::warn!(error = %e, "removing an old snapshot record failed");
            }
        }
        Ok(manifest)
    }

    /// Writes a manifest (or a claim) under its group and epoch; returns
    /// once it is acknowledged.
    async fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let value = serde_json::to_vec(m)?;
        self.write_to_manifests(&manifest_key(&m.key, m.epoch), &value)
            .await
            .map_err(|e| anyhow::anyhow!("writing a snapshot manifest: {e}"))
    }

    /// Writes one record to the manifests topic (its only partition);
    /// returns once it is acknowledged.
    async fn write_to_manifests(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let record = FutureRecord::to(&self.kafka.manifests_topic)
            .key(key)
            .payload(value)
            .partition(0)
            .headers(headers());
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Asks the group's owner (whoever it is by the time it reads the
    /// request, this instance included) to write these records again;
    /// returns once the requests are acknowledged, trying again while the
    /// brokers do not answer (the request is the only record of those
    /// keys). Called by an instance that found it was replaced, after its
    /// own records were acknowledged or expired, so the owner's renderings
    /// land after them.
    pub async fn ask_republish(&self, written: super::outbox::Written) -> Result<()> {
        let group = &self.kafka.group_id;
        // Unique per asking: an epoch can be fenced more than once (its
        // owner froze, woke, was given the group back, froze again).
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, (devices, accounts)) in written.into_parts().into_iter().enumerate() {
            tracing::warn!(
                epoch = self.epoch,
                devices = devices.len(),
                accounts = accounts.len(),
                "asking the group's owner to write records again"
            );
            let request = RepublishRequest {
                group: group.clone(),
                epoch: self.epoch,
                devices,
                accounts,
            };
            let value = serde_json::to_vec(&request)?;
            let key = format!(
                "{group}{}{}/{nonce}-{i}",
                String::from_utf8_lossy(REQUEST_KEY),
                self.epoch
            );
            while let Err(e) = self.write_to_manifests(&key, &value).await {
                tracing::warn!(error = %e, "writing a republish request failed: retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Ok(())
    }

    /// Whether republish requests wait for [`Snapshots::take_requests`].
    pub fn has_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    /// The republish requests read so far, for the owner to act on before
    /// it next publishes; the next snapshot counts them as covered.
    pub fn take_requests(&mut self) -> Vec<RepublishRequest> {
        self.requests_from = self.scanned_to;
        self.requests
            .drain(..)
            .map(|p| {
                self.taken.push(p.key);
                p.request
            })
            .collect()
    }

    /// Reads this group's newest snapshot, if any; the state it holds is
    /// of that snapshot's epoch, and not claimed by this instance.
    pub async fn load(&mut self, telemetry: &Telemetry) -> Result<Option<(Vec<u8>, Manifest)>> {
        let kafka = self.kafka.clone();
        let mut scanned_to = self.scanned_to;
        let mut newest_epoch = self.newest_epoch;
        let mut requests = Vec::new();
        let found = tokio::task::block_in_place(|| {
            load_blocking(
                &self.reader,
                &kafka,
                telemetry,
                &mut scanned_to,
                &mut newest_epoch,
                &mut requests,
            )
        })?;
        // The restored manifest is the newest up to here: the next look for
        // newer claims need not read these manifests again.
        self.scanned_to = self.scanned_to.max(scanned_to);
        // The requests the restored state has not acted on, whoever wrote
        // them; what this instance held before is stale with its state.
        self.requests_from = found.as_ref().map_or(0, |(_, m)| m.requests_from);
        self.requests = requests
            .into_iter()
            .filter(|(offset, _)| *offset >= self.requests_from)
            .map(|(_, p)| p)
            .collect();
        self.taken.clear();
        self.last = found.as_ref().map(|(_, m)| m.clone());
        self.epoch = self.last.as_ref().map_or(0, |m| m.epoch);
        self.newest_epoch = newest_epoch.max(self.epoch);
        self.claimed = false;
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
            // Connection errors are reported as events in the consumer's
            // queue and may be stale (from an outage already over): the
            // deadline, not one such event, decides that reading failed.
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::AllBrokersDown
                            | RDKafkaErrorCode::BrokerTransportFailure
                            | RDKafkaErrorCode::OperationTimedOut
                    )
                ) =>
            {
                tracing::debug!(error = %e, topic, "reading: connection trouble, still trying");
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    consumer.unassign()?;
    Ok(())
}

/// Also sets `scanned_to` past the last manifest read, so the next look
/// for newer claims starts there, and collects the republish requests
/// with their offsets.
fn load_blocking(
    consumer: &BaseConsumer,
    kafka: &KafkaConfig,
    telemetry: &Telemetry,
    scanned_to: &mut i64,
    newest_epoch: &mut u64,
    requests: &mut Vec<(i64, Pending)>,
) -> Result<Option<(Vec<u8>, Manifest)>> {
    let mut newest: Option<Manifest> = None;
    read_range(consumer, &kafka.manifests_topic, 0, |m| {
        *scanned_to = m.offset() + 1;
        if let Some(r) = group_request(m, &kafka.group_id) {
            requests.push((m.offset(), r));
        }
        if let Some(man) = group_manifest(m, &kafka.group_id) {
            *newest_epoch = (*newest_epoch).max(man.epoch);
            if !man.claim
                && newest
                    .as_ref()
                    .is_none_or(|n| (man.epoch, man.id) > (n.epoch, n.id))
            {
                newest = Some(man);
            }
        }
        true
    })?;
    let Some(man) = newest else {
        telemetry.restore_progress(1.0);
        return Ok(None);
    };
    let mut parts: Vec<Option<Vec<u8>>> = vec![None; man.chunks];
    let mut got = 0usize;
    let prefix = chunk_prefix(&man.key, man.epoch, man.id);
    read_range(consumer, &kafka.snapshots_topic, man.first_offset, |m| {
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
