//! What both `run` modes share at their edges: decoding an input record
//! (or turning it into a dead letter), and the producer with the records
//! still waiting for their acknowledgement.

use super::kafka::ProducerHealth;
use anyhow::{Result, bail};
use idlink_core::{Decoder, Event, Millis, RejectReason, Rejected};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::time::Duration;

/// Version of every output record's format, sent as `schema-version`.
pub const SCHEMA_VERSION: &str = "1";

/// Source id of an input partition for the watermark: topic 0 is device
/// events, topic 1 privacy requests.
pub fn source(topic_index: u32, partition: i32) -> u32 {
    (topic_index << 16) | (partition.max(0) as u32 & 0xffff)
}

/// The wall clock, for input validation's future-skew check.
pub fn wall_clock() -> Millis {
    Millis(chrono::Utc::now().timestamp_millis())
}

/// Decodes an input record of topic `topic`; `privacy_topic` says which
/// input topic it is, and an event of the other kind is rejected. `now`
/// is the wall clock (see [`wall_clock`]) for the future-skew check.
pub fn decode(
    decoder: &Decoder,
    m: &impl Message,
    topic: &str,
    privacy_topic: bool,
    now: Millis,
) -> Result<Event, Rejected> {
    let ev = match m.payload() {
        None => Err(Rejected {
            reason: RejectReason::EmptyPayload,
            detail: "the message has no value".into(),
        }),
        Some(p) => decoder.decode(p, now),
    }?;
    if ev.kind.is_privacy() != privacy_topic {
        return Err(Rejected {
            reason: RejectReason::InvalidKind,
            detail: format!(
                "a `{}` event does not belong on topic {topic}",
                ev.kind.as_str()
            ),
        });
    }
    Ok(ev)
}

/// The dead letter of rejected input record `m`: its key and value as
/// they were, with the reason and where it came from as headers.
pub fn dead_letter(dead_letters_topic: &str, m: &impl Message, rej: &Rejected) -> Outgoing {
    let (p, o) = (m.partition().to_string(), m.offset().to_string());
    Outgoing {
        topic: dead_letters_topic.to_string(),
        partition: None,
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: Some(headers(&[
            ("reason", rej.reason.as_str()),
            ("detail", &rej.detail),
            ("source-topic", m.topic()),
            ("source-partition", &p),
            ("source-offset", &o),
        ])),
    }
}

/// An output record, owned, so that it can be sent again.
pub struct Outgoing {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None`: by key.
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    /// `schema-version` and, for dead letters, the reason headers; none on
    /// internal records (versioned by their first byte), which spares an
    /// allocation per record.
    pub headers: Option<OwnedHeaders>,
}

impl Outgoing {
    /// A record with the common headers plus `extra`.
    pub fn new(
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> Self {
        Outgoing {
            topic: topic.to_string(),
            partition: None,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            headers: Some(headers(extra)),
        }
    }

    /// A record for partition `partition` of an internal topic.
    pub fn internal(topic: &str, partition: u32, payload: Vec<u8>) -> Self {
        Outgoing {
            topic: topic.to_string(),
            partition: Some(partition as i32),
            key: None,
            payload: Some(payload),
            headers: None,
        }
    }

    /// The same record with one more header.
    pub fn with_header(mut self, key: &str, value: &str) -> Self {
        let h = self.headers.take().unwrap_or_default();
        self.headers = Some(h.insert(Header {
            key,
            value: Some(value),
        }));
        self
    }

    /// The same record with key `key`.
    pub fn keyed(mut self, key: Vec<u8>) -> Self {
        self.key = Some(key);
        self
    }
}

/// The common headers plus `extra`.
fn headers(extra: &[(&str, &str)]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new().insert(Header {
        key: "schema-version",
        value: Some(SCHEMA_VERSION),
    });
    for (k, v) in extra {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    h
}

/// Keys of the `device-links` and `account-devices` records an owner
/// wrote since it last made sure, after their acknowledgement, that it
/// still owned the work: should it find it does not (it was frozen past
/// its session timeout), those records may have landed after its
/// successor's, and it asks the current owner to write them again. Kept
/// as pushed (no lookup per record); duplicates go when the request is
/// made.
#[derive(Default)]
pub struct Written {
    /// `device-links` keys.
    devices: Keys,
    /// `account-devices` keys.
    accounts: Keys,
}

/// Record keys (device or account ids).
pub type Keys = Vec<Box<str>>;

/// Keys of each kind in one republish request, to keep records small
/// (ids are at most 256 bytes: under 3 MB even then, ~0.4 MB typically).
pub const KEYS_PER_REQUEST: usize = 10_000;

impl Written {
    /// Notes a `device-links` key.
    pub fn device(&mut self, key: impl Into<Box<str>>) {
        self.devices.push(key.into());
    }

    /// Notes an `account-devices` key.
    pub fn account(&mut self, key: impl Into<Box<str>>) {
        self.accounts.push(key.into());
    }

    /// No key noted.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.accounts.is_empty()
    }

    /// The keys, sorted and without repeats, as `(devices, accounts)` parts
    /// of at most [`KEYS_PER_REQUEST`] keys of each kind: one request each.
    pub fn into_parts(self) -> Vec<(Keys, Keys)> {
        let mut parts = Vec::new();
        let [mut devices, mut accounts] = [self.devices, self.accounts].map(|mut v| {
            v.sort_unstable();
            v.dedup();
            v.into_iter()
        });
        loop {
            let d: Keys = devices.by_ref().take(KEYS_PER_REQUEST).collect();
            let a: Keys = accounts.by_ref().take(KEYS_PER_REQUEST).collect();
            if d.is_empty() && a.is_empty() {
                return parts;
            }
            parts.push((d, a));
        }
    }
}

/// The producer and the records of the open batch with their deliveries,
/// kept until acknowledged so a delivery that timed out can be sent again.
pub struct Outbox {
    /// Producer of every output and internal topic.
    producer: FutureProducer<ProducerHealth>,
    /// Records sent and not yet acknowledged.
    pending: Vec<(Outgoing, DeliveryFuture)>,
}

impl Outbox {
    /// An outbox sending with `producer`.
    pub fn new(producer: FutureProducer<ProducerHealth>) -> Self {
        Outbox {
            producer,
            pending: Vec::new(),
        }
    }

    /// Records queued in the producer.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Enqueues one record; waits (backpressure) while the queue is full.
    pub fn send(&mut self, out: Outgoing) -> Result<()> {
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&out.topic);
            if let Some(h) = &out.headers {
                record = record.headers(h.clone());
            }
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            if let Some(k) = &out.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &out.payload {
                record = record.payload(v.as_slice());
            }
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.pending.push((out, f));
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => bail!("producing: {e}"),
            }
        }
    }

    /// Waits for every pending delivery. Returns the records whose
    /// delivery timed out, for the caller to send again once it has made
    /// sure it may still write; any other failure is an error.
    pub async fn settle(&mut self) -> Result<Vec<Outgoing>> {
        // In order, one at a time: each record is freed once acknowledged,
        // and no vector of results is built (joining thousands of futures
        // did, a large allocation per batch).
        let mut pending = std::mem::take(&mut self.pending);
        let mut again = Vec::new();
        for (out, f) in pending.drain(..) {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                    ),
                    _,
                ))) => again.push(out),
                Ok(Err((e, _))) => bail!("an output record was not acknowledged: {e}"),
                Err(_) => bail!("the producer was dropped"),
            }
        }
        // Empty, with its capacity, for the next batch.
        self.pending = pending;
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_keys_come_out_sorted_once_in_bounded_parts() {
        let mut w = Written::default();
        assert!(w.is_empty() && Written::default().into_parts().is_empty());
        for i in (0..KEYS_PER_REQUEST + 5).rev() {
            w.device(format!("d{i:06}"));
            w.device(format!("d{i:06}"));
        }
        w.account("b");
        w.account("a");
        w.account("b");
        let parts = w.into_parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0.len(), KEYS_PER_REQUEST);
        assert_eq!(parts[1].0.len(), 5);
        assert_eq!(&*parts[0].0[0], "d000000");
        assert!(parts[0].0.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(parts[0].1, vec!["a".into(), "b".into()] as Vec<Box<str>>);
        assert!(parts[1].1.is_empty());
    }
}
