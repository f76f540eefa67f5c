//! Partitioned mode: deleting the internal-topic records that no stage
//! task can read again.
//!
//! A stage task's new owner reads its internal partitions from the
//! positions in the task's newest snapshot, never from before them, so the
//! records below those positions serve no one: Kafka Streams deletes its
//! repartition topics' records below the committed offsets for the same
//! reason. Deleting them keeps the internal topics short (disk on a real
//! cluster; on the test broker, whose fetches list every stored batch of a
//! partition, CPU per fetch) and takes the raw events routed through
//! `<p>-device-events` out of the brokers long before their retention
//! would.
//!
//! **Why no restore needs a deleted record.** An owner deletes below the
//! positions of a snapshot only after the snapshot is acknowledged and a
//! look at the task's manifests then finds no newer claim
//! (`partitioned.rs`, `checkpoint`). A new owner writes its claim before
//! it reads the newest snapshot ([`super::snapshots::Snapshots::claim_ahead`]).
//! So either the claim was there to be found, and nothing is deleted, or
//! it came later, and so did the read, which finds that snapshot or a
//! newer one; a newer one holds the same positions or later ones, since
//! every owner restores from the newest snapshot and moves forward.

use super::config::KafkaConfig;
use super::kafka::client_config;
use super::telemetry::Telemetry;
use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long the brokers may take to answer a purge: it runs in the
/// background, and a purge that fails is only retried after the task's
/// next snapshot.
const PURGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Deletes internal records below acknowledged snapshots, in the
/// background.
pub struct Purger {
    /// Sends `DeleteRecords`; kept here so that its answers are served.
    admin: AdminClient<DefaultClientContext>,
    /// The offset each internal partition was last purged below: a
    /// position that did not move (a task that took nothing new) asks
    /// nothing.
    done: HashMap<(String, i32), i64>,
    /// Where results go.
    telemetry: Arc<Telemetry>,
    /// Purges not answered yet, which a graceful stop waits for.
    pending: Vec<JoinHandle<()>>,
}

impl Purger {
    /// A purger on the configured brokers.
    pub fn new(k: &KafkaConfig, telemetry: Arc<Telemetry>) -> Result<Purger> {
        let admin = client_config(k)
            .create()
            .context("creating the admin client for purges")?;
        Ok(Purger {
            admin,
            done: HashMap::new(),
            telemetry,
            pending: Vec::new(),
        })
    }

    /// Deletes the records below each `(topic, partition, offset)`.
    /// Returns at once; the brokers' answer goes to the telemetry.
    pub fn purge<'a>(&mut self, positions: impl IntoIterator<Item = (&'a str, i32, i64)>) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in positions {
            let last = self.done.entry((topic.to_string(), partition)).or_insert(0);
            if offset <= *last {
                continue;
            }
            *last = offset;
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                self.telemetry
                    .internal_purge_failed(topic, partition, &e.to_string());
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let opts = AdminOptions::new()
            .request_timeout(Some(PURGE_TIMEOUT))
            .operation_timeout(Some(PURGE_TIMEOUT));
        let answer = self.admin.delete_records(&tpl, &opts);
        let telemetry = self.telemetry.clone();
        self.pending.retain(|h| !h.is_finished());
        self.pending.push(tokio::spawn(async move {
            match answer.await {
                Ok(result) => {
                    for e in result.elements() {
                        match e.error() {
                            Ok(()) => telemetry.internal_purged(
                                e.topic(),
                                e.partition(),
                                e.offset().to_raw().unwrap_or(-1),
                            ),
                            Err(err) => telemetry.internal_purge_failed(
                                e.topic(),
                                e.partition(),
                                &err.to_string(),
                            ),
                        }
                    }
                }
                Err(err) => {
                    for e in tpl.elements() {
                        telemetry.internal_purge_failed(e.topic(), e.partition(), &err.to_string());
                    }
                }
            }
        }));
    }

    /// Waits up to `deadline` for the purges not answered yet (a graceful
    /// stop, so that what its last snapshots cover leaves the brokers).
    pub async fn finish(&mut self, deadline: Duration) {
        let all = futures::future::join_all(self.pending.drain(..));
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("stopping before the brokers answered every purge");
        }
    }
}
