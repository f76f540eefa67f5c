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
//!   evidence, output), one consumer of every hop per instance.
//!
//! It also folds a compacted topic into a sorted JSON-lines file, to
//! compare `idlink run`'s outputs with `idlink replay`'s. Every command
//! prints one JSON object on stdout.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
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
        } => rt.block_on(chain(
            &cli.brokers,
            &input,
            &hops,
            &output,
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

async fn chain(
    brokers: &str,
    input: &str,
    hops: &[String],
    output: &str,
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
    // topics[i] feeds topics[i + 1]; the last is the output.
    let mut topics: Vec<&str> = vec![input];
    topics.extend(hops.iter().map(String::as_str));
    c.subscribe(&topics)?;
    topics.push(output);
    let p = producer(brokers)?;
    let (mut out, mut start) = (0u64, None);
    let mut pending: Vec<(bool, DeliveryFuture)> = Vec::with_capacity(batch);
    let mut opened = Instant::now();
    while out < count {
        let wait = batch_time.saturating_sub(opened.elapsed());
        if let Ok(m) = tokio::time::timeout(wait.max(Duration::from_millis(1)), c.recv()).await {
            let m = m?;
            start.get_or_insert_with(Instant::now);
            let Some(at) = topics.iter().position(|t| *t == m.topic()) else {
                continue;
            };
            let to = topics[at + 1];
            let key = m.key().unwrap_or_default();
            let value = m.payload().unwrap_or_default();
            let r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(to).key(key).payload(value);
            pending.push((to == output, enqueue(&p, r).await));
        } else if start.is_none() && opened.elapsed() > Duration::from_secs(30) {
            bail!("no record for 30 s");
        }
        if pending.len() >= batch || opened.elapsed() >= batch_time {
            for (last, f) in pending.drain(..) {
                if let Err((e, _)) = f.await? {
                    bail!("chain produce: {e}");
                }
                out += u64::from(last);
            }
            if start.is_some() {
                c.commit_consumer_state(CommitMode::Async)?;
            }
            opened = Instant::now();
        }
    }
    let s = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(
        serde_json::json!({"records": out, "hops": hops.len(), "seconds": s, "records_per_second": out as f64 / s}),
    )
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
