//! Load tool for `bench/kafka-bench.sh`: produces a simulated event file
//! to the input topics, and measures the two throughput ceilings idlink is
//! compared with on the same broker and machine:
//!
//! * `consume`: a plain consumer that reads a topic and does nothing else;
//! * `passthrough`: a consumer group that moves every record to an output
//!   topic through the same hops as `idlink run` (consume, produce, await
//!   the acknowledgements, commit), without any linking work;
//! * `chain`: the same through a chain of topics, as the partitioned
//!   stages move a record (input, routed device events, sightings,
//!   evidence, output), one consumer of every hop per instance; with
//!   `--packed`, the records bound for one hop travel packed as idlink
//!   packs its sightings (one record per source and target partition a
//!   batch, at most 1,000 inside).
//!
//! It also folds a compacted topic into a sorted JSON-lines file, to
//! compare `idlink run`'s outputs with `idlink replay`'s. Every command
//! prints one JSON object on stdout.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// Bootstrap servers.
    #[arg(long)]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce a JSON-lines file: privacy requests to one topic, the rest
    /// to the other, keyed by device (or account) id.
    Produce {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        events_topic: String,
        #[arg(long)]
        privacy_topic: String,
        /// Records per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Read `count` records of a topic from the start and nothing else.
    Consume {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
    },
    /// Move `count` records from `input` to `output` in a consumer group,
    /// in batches: produce, await acknowledgements, commit.
    Passthrough {
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        count: u64,
        /// Records per batch, as idlink's `service.batch_max_messages`.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
    /// Move `count` records from `input` through every topic of `hops` in
    /// turn to `output`, in a consumer group of all of them: each record
    /// read from a hop is produced, with its key, to the next. Batches end
    /// after `batch` records or `batch_ms` (as `service.batch_max_ms`):
    /// await acknowledgements, commit.
    Chain {
        #[arg(long)]
        input: String,
        /// The hop topics, in order, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hops: Vec<String>,
        #[arg(long)]
        output: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        #[arg(long, default_value_t = 50)]
        batch_ms: u64,
        /// A hop whose records travel packed, as idlink's sightings do:
        /// the records a batch sends from one source partition to one
        /// partition of this topic go as one record (at most 1,000), and
        /// are unpacked when read from it.
        #[arg(long)]
        packed: Option<String>,
    },
    /// Fold a compacted topic (latest value per key, tombstones delete)
    /// into sorted lines.
    Fold {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = match cli.command {
        Command::Produce {
            input,
            events_topic,
            privacy_topic,
            rate,
        } => rt.block_on(produce(
            &cli.brokers,
            &input,
            &events_topic,
            &privacy_topic,
            rate,
        ))?,
        Command::Consume { topic, count } => consume(&cli.brokers, &topic, count)?,
        Command::Passthrough {
            input,
            output,
            group,
            count,
            batch,
        } => rt.block_on(passthrough(
            &cli.brokers,
            &input,
            &output,
            &group,
            count,
            batch,
        ))?,
        Command::Chain {
            input,
            hops,
            output,
            group,
            count,
            batch,
            batch_ms,
            packed,
        } => rt.block_on(chain(
            &cli.brokers,
            &ChainTopics {
                input: &input,
                hops: &hops,
                output: &output,
                packed: packed.as_deref(),
            },
            &group,
            count,
            (batch, Duration::from_millis(batch_ms)),
        ))?,
        Command::Fold { topic, out } => fold(&cli.brokers, &topic, &out)?,
    };
    println!("{report}");
    Ok(())
}

fn producer(brokers: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()?)
}

/// Hands a record to the producer, waiting while its queue is full.
async fn enqueue<K, P>(p: &FutureProducer, mut r: FutureRecord<'_, K, P>) -> DeliveryFuture
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match p.send_result(r) {
            Ok(f) => return f,
            Err((_, back)) => {
                r = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// The key a record of `line` gets: its device id, else its account id.
fn key_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    v["device_id"]
        .as_str()
        .or(v["account_id"].as_str())
        .unwrap_or("")
        .to_string()
}

fn is_privacy(line: &str) -> bool {
    ["\"opt_out\"", "\"opt_in\"", "\"erase\""]
        .iter()
        .any(|k| line.contains(&format!("\"kind\":{k}")))
}

async fn produce(
    brokers: &str,
    input: &PathBuf,
    events: &str,
    privacy: &str,
    rate: u64,
) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let p = producer(brokers)?;
    let start = Instant::now();
    let mut pending = Vec::new();
    let mut n = 0u64;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if rate > 0 {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let topic = if is_privacy(line) { privacy } else { events };
        let key = key_of(line);
        let r: FutureRecord<'_, String, str> = FutureRecord::to(topic).key(&key).payload(line);
        pending.push(enqueue(&p, r).await);
        n += 1;
        if pending.len() >= 50_000 {
            for f in pending.drain(..) {
                if let Err((e, _)) = f.await? {
                    bail!("producing: {e}");
                }
            }
        }
    }
    for f in pending {
        if let Err((e, _)) = f.await? {
            bail!("producing: {e}");
        }
    }
    let s = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({"records": n, "seconds": s, "records_per_second": n as f64 / s}))
}

/// Assigns every partition of `topic` from its start.
fn assign_all(c: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (low, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > low {
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                ends.insert(p.id(), high);
            }
        }
    }
    c.assign(&tpl)?;
    Ok(ends)
}

fn plain_consumer(brokers: &str, group: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

fn consume(brokers: &str, topic: &str, count: u64) -> Result<serde_json::Value> {
    let c = plain_consumer(brokers, &format!("{topic}-plain-reader"))?;
    assign_all(&c, topic)?;
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < count {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(e)) => bail!("consuming {topic}: {e}"),
            None => bail!("{topic}: no record for 10 s after {n} of {count}"),
        }
    }
    let s = start.elapsed().as_secs_f64();
    Ok(
        serde_json::json!({"records": n, "bytes": bytes, "seconds": s, "records_per_second": n as f64 / s}),
    )
}

async fn passthrough(
    brokers: &str,
    input: &str,
    output: &str,
    group: &str,
    count: u64,
    batch: usize,
) -> Result<serde_json::Value> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    c.subscribe(&[input])?;
    let p = producer(brokers)?;
    let mut n = 0u64;
    let mut start = None;
    let mut pending = Vec::with_capacity(batch);
    while n < count {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .context("no record for 30 s")??;
        start.get_or_insert_with(Instant::now);
        let key = m.key().unwrap_or_default();
        let value = m.payload().unwrap_or_default();
        let r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(output).key(key).payload(value);
        pending.push(enqueue(&p, r).await);
        n += 1;
        if pending.len() >= batch || n == count {
            for f in pending.drain(..) {
                if let Err((e, _)) = f.await? {
                    bail!("passthrough produce: {e}");
                }
            }
            c.commit_consumer_state(CommitMode::Sync)?;
        }
    }
    let s = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(serde_json::json!({"records": n, "seconds": s, "records_per_second": n as f64 / s}))
}

/// The topics of a `chain`.
struct ChainTopics<'a> {
    input: &'a str,
    /// In order; each feeds the next, the last feeds `output`.
    hops: &'a [String],
    output: &'a str,
    /// A hop whose records travel packed.
    packed: Option<&'a str>,
}

/// The key of a packed record; records idlink wrote to a hop while it
/// created the topics are read before the chain's own and skipped (see
/// `starts`), so any other key in the packed hop is an error.
const PACKED_KEY: &[u8] = b"kafka_load packed";
/// The most records one packed record holds, as in idlink's sightings
/// batches (`SIGHTINGS_PER_RECORD` in `src/service/partitioned.rs`, private
/// to the binary: keep the two equal).
const PACKED_MAX: usize = 1000;

/// Appends a record to a pack: key and value, each after its length as
/// a little-endian u32.
fn pack(into: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    for part in [key, value] {
        into.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
        into.extend_from_slice(part);
    }
}

/// The records of a pack, in order.
fn unpack(mut pack: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    fn part<'a>(b: &mut &'a [u8]) -> Result<&'a [u8]> {
        let (len, rest) = b
            .split_first_chunk::<4>()
            .context("packed record: truncated length")?;
        let len = u32::from_le_bytes(*len) as usize;
        let (part, rest) = rest
            .split_at_checked(len)
            .context("packed record: truncated part")?;
        *b = rest;
        Ok(part)
    }
    let mut records = Vec::new();
    while !pack.is_empty() {
        let key = part(&mut pack)?;
        records.push((key, part(&mut pack)?));
    }
    Ok(records)
}

/// For each hop topic and partition, the end offset before the chain
/// starts: what idlink wrote there while it created the topics (markers,
/// reports) is not part of the run, and is skipped.
fn starts(p: &FutureProducer, hops: &[String]) -> Result<HashMap<(String, i32), i64>> {
    let mut starts = HashMap::new();
    let md = p.client().fetch_metadata(None, Duration::from_secs(10))?;
    for t in md
        .topics()
        .iter()
        .filter(|t| hops.iter().any(|h| h == t.name()))
    {
        for part in t.partitions() {
            let (_, high) =
                p.client()
                    .fetch_watermarks(t.name(), part.id(), Duration::from_secs(10))?;
            starts.insert((t.name().to_string(), part.id()), high);
        }
    }
    Ok(starts)
}

/// Hands a record for `to` (at `partition`, else by key) to the producer.
async fn send(
    p: &FutureProducer,
    to: &str,
    partition: Option<i32>,
    key: &[u8],
    value: &[u8],
) -> DeliveryFuture {
    let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(to).key(key).payload(value);
    r.partition = partition;
    enqueue(p, r).await
}

async fn chain(
    brokers: &str,
    topics: &ChainTopics<'_>,
    group: &str,
    count: u64,
    (batch, batch_time): (usize, Duration),
) -> Result<serde_json::Value> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let p = producer(brokers)?;
    let skip_below = starts(&p, topics.hops)?;
    // chain[i] feeds chain[i + 1]; the last is the output.
    let mut chain: Vec<&str> = vec![topics.input];
    chain.extend(topics.hops.iter().map(String::as_str));
    c.subscribe(&chain)?;
    chain.push(topics.output);
    let packed_partitions = match topics.packed {
        Some(t) if t == topics.output => bail!("the output cannot be packed"),
        Some(t) => {
            let md = p
                .client()
                .fetch_metadata(Some(t), Duration::from_secs(10))?;
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n == 0 {
                bail!("packed topic {t} has no partitions");
            }
            n as u64
        }
        None => 0,
    };
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    // Records bound for the packed hop, by (source partition, target
    // partition): their pack and how many it holds.
    let mut packs: HashMap<(i32, i32), (Vec<u8>, usize)> = HashMap::new();
    let (mut out, mut start) = (0u64, None);
    // Each future with the number of records it delivers to the output.
    let mut pending: Vec<(u64, DeliveryFuture)> = Vec::with_capacity(batch);
    let mut opened = Instant::now();
    while out < count {
        let wait = batch_time.saturating_sub(opened.elapsed());
        if let Ok(m) = tokio::time::timeout(wait.max(Duration::from_millis(1)), c.recv()).await {
            let m = m?;
            let Some(at) = chain.iter().position(|t| *t == m.topic()) else {
                continue;
            };
            let stray = skip_below
                .get(&(m.topic().to_string(), m.partition()))
                .is_some_and(|&below| m.offset() < below);
            if stray {
                continue;
            }
            start.get_or_insert_with(Instant::now);
            let to = chain[at + 1];
            let key = m.key().unwrap_or_default();
            let value = m.payload().unwrap_or_default();
            let at_output = u64::from(to == topics.output);
            if Some(m.topic()) == topics.packed {
                if key != PACKED_KEY {
                    bail!(
                        "a record of packed hop {} without the packed key",
                        m.topic()
                    );
                }
                for (key, value) in unpack(value)? {
                    pending.push((at_output, send(&p, to, None, key, value).await));
                }
            } else if Some(to) == topics.packed {
                let target = (hasher.hash_one(key) % packed_partitions) as i32;
                let (buf, n) = packs.entry((m.partition(), target)).or_default();
                pack(buf, key, value);
                *n += 1;
                if *n >= PACKED_MAX {
                    pending.push((0, send(&p, to, Some(target), PACKED_KEY, buf).await));
                    packs.remove(&(m.partition(), target));
                }
            } else {
                pending.push((at_output, send(&p, to, None, key, value).await));
            }
        } else if start.is_none() && opened.elapsed() > Duration::from_secs(30) {
            bail!("no record for 30 s");
        }
        if pending.len() + packs.len() >= batch || opened.elapsed() >= batch_time {
            if let Some(to) = topics.packed {
                for ((_, target), (buf, _)) in packs.drain() {
                    pending.push((0, send(&p, to, Some(target), PACKED_KEY, &buf).await));
                }
            }
            for (delivered, f) in pending.drain(..) {
                if let Err((e, _)) = f.await? {
                    bail!("chain produce: {e}");
                }
                out += delivered;
            }
            if start.is_some() {
                c.commit_consumer_state(CommitMode::Async)?;
            }
            opened = Instant::now();
        }
    }
    let s = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(serde_json::json!({
        "records": out,
        "hops": topics.hops.len(),
        "packed": topics.packed,
        "seconds": s,
        "records_per_second": out as f64 / s,
    }))
}

fn fold(brokers: &str, topic: &str, out: &PathBuf) -> Result<serde_json::Value> {
    let c = plain_consumer(brokers, &format!("{topic}-folder"))?;
    let ends = assign_all(&c, topic)?;
    let mut remaining: BTreeMap<i32, i64> = ends.clone();
    let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut n = 0u64;
    while !remaining.is_empty() {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                n += 1;
                latest.insert(
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().map(<[u8]>::to_vec),
                );
                if ends
                    .get(&m.partition())
                    .is_some_and(|&e| m.offset() + 1 >= e)
                {
                    remaining.remove(&m.partition());
                }
            }
            Some(Err(e)) => bail!("folding {topic}: {e}"),
            None => bail!("{topic}: no record for 10 s while folding"),
        }
    }
    let mut text = Vec::new();
    for v in latest.into_values().flatten() {
        text.extend_from_slice(&v);
        text.push(b'\n');
    }
    std::fs::write(out, &text)?;
    Ok(serde_json::json!({"records_read": n, "keys": text.iter().filter(|&&b| b == b'\n').count()}))
}
