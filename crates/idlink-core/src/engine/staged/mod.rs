//! The engine split into keyed stages (ARCHITECTURE.md, "Partitioned
//! scale-out").
//!
//! - **Device stage** ([`Engine::device_stage`]): the engine itself, keyed
//!   by device id. It reorders its devices' events, keeps their sign-ins,
//!   bot counters, evidence and decisions, and sends every in-order
//!   sighting, stamped with what it knows about the device, to the bucket
//!   stage. It stops before the first event of a new day until every
//!   bucket partition has closed the old one and sent what it offers.
//! - **Bucket stage** ([`BucketStage`]), keyed by address bucket: windows,
//!   day aggregates and regulars ([`super::colocation`]). It merges the
//!   device partitions' sightings in event-time order, closes a day when
//!   every device partition has reached its end, and sends each device
//!   partition the evidence for its devices.
//! - **Account stage** ([`AccountStage`]), keyed by account id: merges
//!   each account's devices from every device partition into its
//!   `account-devices` line and applies the account's device cap, telling
//!   device partitions which links their lines must leave out.
//!
//! Privacy requests go to every device partition, which applies them by
//! `ts` and forwards them, in its stream, to every bucket partition; a
//! bucket partition applies a request once every device partition's copy
//! has arrived, so every sighting sent before the request is purged with
//! it. The stages exchange only the messages below, so the same code runs
//! in one process ([`Pipeline`]) or with each stream on a Kafka topic.

mod account;
mod bucket;
mod device;
mod pipeline;

pub use account::AccountStage;
pub use bucket::BucketStage;
pub(super) use device::DeviceSide;
pub use pipeline::{Pipeline, Stage};

use super::state::Evidence;
use crate::addr::Bucket;
use crate::agent::Platform;
use crate::event::Event;
use crate::output::AccountEntry;
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Version of the internal records' format. 2 added the phone platform
/// to events and sightings; records of 1 are still read, with none
/// known, so a running deployment upgrades without draining its topics.
const WIRE_VERSION: u8 = 2;

/// Version byte of a record that holds several messages, in order (the
/// sightings topic, from version 3 on: a device partition sends each
/// bucket partition one record per publish, not one per sighting). The
/// messages are those of [`WIRE_VERSION`].
const BATCH_VERSION: u8 = 3;

/// A record of an internal topic that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("internal record does not decode: {0}")]
pub struct WireError(String);

/// Encodes a message for an internal topic (or a stage partition's
/// snapshot): a version byte, then postcard.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Serializing plain data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(msg).unwrap_or_default());
    out
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| WireError(e.to_string()))
        }
        Some((&1, rest)) => {
            let _old = crate::format::OldFormat::lacking(crate::format::PLATFORM);
            postcard::from_bytes(rest).map_err(|e| WireError(e.to_string()))
        }
        Some((v, _)) => Err(WireError(format!("unknown version {v}"))),
        None => Err(WireError("empty record".into())),
    }
}

/// Encodes messages, in order, as one record of a batched topic.
pub fn encode_batch<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = vec![BATCH_VERSION];
    // As in `encode`: plain data into a Vec.
    out.extend(postcard::to_stdvec(msgs).unwrap_or_default());
    out
}

/// Decodes a record of a batched topic: what [`encode_batch`] wrote, or
/// one message as versions before 3 wrote each, so a running deployment
/// upgrades without draining its topics.
pub fn decode_batch<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, WireError> {
    match bytes.split_first() {
        Some((&BATCH_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| WireError(e.to_string()))
        }
        _ => decode(bytes).map(|m| vec![m]),
    }
}

/// The partition of `key` among `n`: FNV-1a (64-bit) of the key's bytes,
/// modulo `n`. Every stage routes with it, so a key always lands on the
/// same partition whoever sends it.
pub fn partition_of(key: &[u8], n: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(n.max(1))) as u32
}

/// The partition of a bucket among `n`.
pub fn bucket_partition(b: Bucket, n: u32) -> u32 {
    partition_of(&b.to_bytes(), n)
}

/// A message between stage partitions, numbered per (sender, receiver).
///
/// A stage partition is a function of its input streams, so after a
/// restore it sends again exactly what it sent after its snapshot, under
/// the same numbers: the receiver drops every numbered message at or
/// below the last it took from that sender. Progress reports are not
/// numbered (`seq` 0): they are idempotent, and the receiver keeps the
/// latest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sent<T> {
    /// The sending partition.
    pub from: u32,
    /// 1, 2, 3, … per (sender, receiver); 0 for an unnumbered message.
    pub seq: u64,
    /// The message.
    pub msg: T,
}

/// An in-order sighting on a usable bucket, from a device partition to
/// the bucket's partition, with what the device partition knew about the
/// device at that moment (the bucket stage reads no device state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    /// The address bucket.
    pub bucket: Bucket,
    /// The device.
    pub device: Box<str>,
    /// The signed-in account, if any.
    pub account: Option<Box<str>>,
    /// Event time.
    pub ts: Millis,
    /// The event kind's order at equal `ts` (sign-ins first).
    pub priority: u8,
    /// The device behaved like a bot that day, as of this sighting.
    pub bot: bool,
    /// The device held a sign-in link, as of this sighting.
    pub signed_in: bool,
    /// The phone platform the sighting's user agent named. Added in wire
    /// format 2.
    #[serde(deserialize_with = "crate::format::added_platform")]
    pub platform: Platform,
}

/// A privacy request as a device partition applied it, forwarded to
/// every bucket partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyCopy {
    /// The request.
    pub event: Event,
    /// It arrived behind the device partition's watermark and was applied
    /// at once, not in `ts` order.
    pub late: bool,
    /// The device partition's release bound when it applied the request:
    /// every sighting it sent before the request is earlier than this.
    pub released_to: Millis,
}

/// How far a device partition has got: sent to every bucket partition
/// whenever it changes, after the sightings it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The day it is in: the one every partition agreed on at the last
    /// day close (`i32::MIN` before the first).
    pub day: i32,
    /// Every sighting before this time has been sent; the partition will
    /// send none before it.
    pub upto: Millis,
    /// It stopped before its first event of a later day, at this time:
    /// `day` must close first.
    pub next: Option<Millis>,
    /// It has released all of `day` (its watermark passed the day's end,
    /// or it stopped before a later day): it waits for the day to close.
    pub ended: bool,
    /// Flushes requested so far: once every partition has flushed as many
    /// times, the bucket partitions say what the open day offers so far.
    pub flushes: u64,
    /// The input has ended: the open day closes for good.
    pub finished: bool,
}

/// A device partition's input stream: what the router sends it, and its
/// own flush requests, in one order that replays repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageInput {
    /// A device event of this partition, or a privacy request (every
    /// partition gets those), at `offset` of input partition `source`. A
    /// router that restarts sends again what it had sent: an offset at or
    /// below the last taken from `source` is dropped.
    Event {
        /// The input partition (a watermark source).
        source: u32,
        /// Its offset there.
        offset: i64,
        /// The event.
        event: Event,
    },
    /// Input partition `source` has reached `ts` (the greatest `ts` read
    /// from it); `idle`: it is caught up and quiet, and does not hold the
    /// watermark back.
    Watermark {
        /// The input partition.
        source: u32,
        /// The greatest `ts` read from it.
        ts: Millis,
        /// Caught up and quiet.
        idle: bool,
    },
    /// Flush round `n` (`Engine::flush`): everything was read. Every
    /// device partition gets the request; one at or below the rounds a
    /// partition has flushed is dropped, and one beyond the next stands
    /// for the rounds it skips.
    Flush {
        /// 1, 2, 3, …
        n: u64,
    },
    /// The input ended (replay): the last day closes.
    Finish,
    /// Render these devices' `device-links` records and these accounts'
    /// `account-devices` records again (a tombstone for one not held).
    /// Written by an instance that finds it was fenced (another instance
    /// claimed its task while it was frozen) for the keys it wrote since
    /// it last made sure it owned the task: those records may have landed
    /// after the new owner's. The new owner acts on it as it reads it;
    /// it is not part of the partition's computation ([`Engine::take_input`]
    /// ignores it), so it changes nothing else.
    ///
    /// [`Engine::take_input`]: crate::Engine::take_input
    Republish {
        /// Device ids of this partition.
        devices: Vec<Box<str>>,
        /// Account ids of this partition.
        accounts: Vec<Box<str>>,
    },
}

/// What a device partition sends to the bucket stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToBuckets {
    /// To the sighting's bucket partition.
    Sighting(Sighting),
    /// To every bucket partition.
    Privacy(PrivacyCopy),
    /// To every bucket partition.
    Progress(Progress),
}

/// Evidence for one device from one bucket-day.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The device it is for.
    pub device: Box<str>,
    /// The account it supports.
    pub account: Box<str>,
    /// The evidence (its `account` slot is the receiver's to fill in).
    pub evidence: Evidence,
}

/// What a bucket partition sends to each device partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToDevices {
    /// Day `day` is closed on the sending bucket partition, with the
    /// evidence it offers the receiver's devices; the next day starts at
    /// `now` (`Millis::MAX`: the input ended).
    Closed {
        /// The day closed (`i32::MIN`: none yet, only the start).
        day: i32,
        /// The first event after it.
        now: Millis,
        /// Evidence for the receiver's devices.
        offers: Vec<Offer>,
    },
    /// What the open `day` offers so far, after `flushes` flushes.
    SoFar {
        /// The open day.
        day: i32,
        /// The flush this answers.
        flushes: u64,
        /// Evidence for the receiver's devices.
        offers: Vec<Offer>,
    },
}

/// One device partition's share of an account's line: the entries of the
/// account's devices it holds (empty: none any more).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountPart {
    /// The account.
    pub account: Box<str>,
    /// The sending device partition.
    pub partition: u32,
    /// Its devices on the account's line.
    pub entries: Vec<AccountEntry>,
}

/// A privacy request applied by one partition of the device or bucket
/// stage, sent to the account partition of its id hash, which
/// acknowledges the request once every partition of both stages has
/// applied it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The request's `ts`.
    pub ts: Millis,
    /// The request's kind.
    pub kind: crate::event::EventKind,
    /// About a device (else an account).
    pub device: bool,
    /// Keyed hash of the id, as in the acknowledgement.
    pub id_hash: String,
    /// The stage (0: devices, 1: buckets) and partition that applied it.
    pub by: (u8, u32),
    /// What it removed there.
    pub removed: super::Removed,
}

/// What the account stage receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToAccounts {
    /// A device partition's part of an account's line.
    Part(AccountPart),
    /// A stage partition applied a privacy request.
    Applied(Applied),
}

/// Whether an account shows a device, from the account stage to the
/// device's partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    /// The device.
    pub device: Box<str>,
    /// The account.
    pub account: Box<str>,
    /// Whether the account's line (and so the device's) shows the link.
    pub shown: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sighting as wire format 1 wrote it, before the platform.
    #[derive(Serialize)]
    struct SightingV1 {
        bucket: Bucket,
        device: Box<str>,
        account: Option<Box<str>>,
        ts: Millis,
        priority: u8,
        bot: bool,
        signed_in: bool,
    }

    #[test]
    fn a_record_of_the_previous_wire_format_reads_with_no_platform() {
        let old = SightingV1 {
            bucket: Bucket::v4(0x5102_0304),
            device: "d".into(),
            account: Some("a".into()),
            ts: Millis(1_767_571_200_000),
            priority: 3,
            bot: false,
            signed_in: true,
        };
        let mut bytes = vec![1];
        bytes.extend(postcard::to_stdvec(&(3u32, 7u64, old)).unwrap());
        let (from, seq, s): (u32, u64, Sighting) = decode(&bytes).unwrap();
        assert_eq!(
            (from, seq, &*s.device, s.platform),
            (3, 7, "d", Platform::Unknown)
        );
        let now = Sighting {
            platform: Platform::Android,
            ..s
        };
        assert_eq!(decode::<Sighting>(&encode(&now)).unwrap(), now);
        assert!(decode::<Sighting>(&[4, 0]).is_err(), "an unknown version");
    }

    #[test]
    fn a_batch_reads_in_order_and_a_single_message_reads_as_a_batch_of_one() {
        let sighting = |ts: i64| Sighting {
            bucket: Bucket::v4(0x5102_0304),
            device: "d".into(),
            account: None,
            ts: Millis(ts),
            priority: 1,
            bot: false,
            signed_in: false,
            platform: Platform::Ios,
        };
        let batch: Vec<Sighting> = (0..300).map(sighting).collect();
        assert_eq!(
            decode_batch::<Sighting>(&encode_batch(&batch)).unwrap(),
            batch
        );
        assert_eq!(
            decode_batch::<Sighting>(&encode_batch::<Sighting>(&[])).unwrap(),
            []
        );
        let one = sighting(7);
        assert_eq!(decode_batch::<Sighting>(&encode(&one)).unwrap(), [one]);
        assert!(
            decode::<Sighting>(&encode_batch(&batch)).is_err(),
            "a batch is no single message"
        );
        assert!(decode_batch::<Sighting>(&[BATCH_VERSION, 200]).is_err());
    }
}
