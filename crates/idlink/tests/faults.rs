//! Fault tests of `idlink run` against a real broker: crashes at random
//! points, and a broker outage. Each ends by comparing the folded output
//! topics with `idlink replay` of the same input.

mod support;

use anyhow::{Result, bail};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn random_crashes_leave_the_same_graph() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("crashes", "")?;
    let s = stream(dir.path(), &config, 150, 8, 21)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let mut rng = Rng(fault_seed() | 1);

    // Four crashes: each chunk of input is followed by a kill -9 at a
    // random moment, from "barely started on it" to "probably done".
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    for chunk in lines.chunks(lines.len() / 4 + 1) {
        rt.block_on(produce(&producer, &names, chunk))?;
        let after = Duration::from_millis(100 + rng.below(3_000));
        std::thread::sleep(after);
        eprintln!("kill -9 {after:?} after a chunk of {} records", chunk.len());
        service.kill9()?;
        service = Service::start(&config, &broker.addr, &names, dir.path())?;
        service.wait_ready(Duration::from_secs(60))?;
    }
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(240),
    )
}

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(30);

#[test]
fn a_broker_outage_is_ridden_out() -> Result<()> {
    ride_out_an_outage("outage", "")
}

/// The same with the partitioned stages: every task waits for the
/// brokers, and the input partitions must not count as idle through the
/// outage (or the half produced after it could arrive late).
#[test]
fn a_broker_outage_is_ridden_out_when_partitioned() -> Result<()> {
    ride_out_an_outage(
        "partoutage",
        "partitioned = true\nsource_idle_seconds = 45\nprivacy_source_idle_ms = 45000",
    )
}

/// The broker stops for [`OUTAGE`] while the service (with `[service]`
/// settings `extra`) is busy, and starts again; the service reports
/// not-ready meanwhile, reconnects by itself and ends in replay's graph.
fn ride_out_an_outage(name: &str, extra: &str) -> Result<()> {
    let (_serial, mut broker, dir, names, config) = setup_persistent(name, extra)?;
    let s = stream(dir.path(), &config, 100, 6, 31)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let (before, after) = lines.split_at(lines.len() / 2);

    // The broker goes away while the service is busy with the first half
    // (consuming, and waiting for its outputs' acknowledgements).
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    rt.block_on(produce(&producer, &names, before))?;
    std::thread::sleep(Duration::from_millis(100));

    if broker.is_managed() {
        broker.stop()?;
        let down = Instant::now();
        let mut reported = false;
        while down.elapsed() < OUTAGE {
            if let Ok((503, _)) = http_get(&service.http, "/health/ready") {
                reported = true;
            }
            if let Some(status) = service.try_wait()? {
                bail!(
                    "the service exited during the outage with {status}:\n{}",
                    service.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            reported,
            "/health/ready never reported not-ready while the broker was down:\n{}",
            service.log_tail()
        );
        broker.restart()?;
    } else {
        eprintln!("external broker: it cannot be stopped here, so no outage is staged");
    }

    service.wait_ready(Duration::from_secs(90))?;
    rt.block_on(produce(&producer, &names, after))?;
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(240),
    )?;
    let (_, metrics) = http_get(&service.http, "/metrics")?;
    assert_eq!(metric(&metrics, "idlink_ready"), 1.0);
    Ok(())
}

/// Events that abuse the service without breaking the contract: one
/// device flooding, one address flooded by thousands of devices, and ids
/// in other scripts. All valid, so replay's graph includes them.
fn floods(first_ts: &str) -> Vec<String> {
    let Ok(start) = chrono::DateTime::parse_from_rfc3339(first_ts) else {
        return Vec::new();
    };
    let at = |ms: i64| {
        (start + chrono::Duration::milliseconds(ms))
            .to_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let mut out = Vec::new();
    // One device, 3,000 events in under two hours from one address.
    for i in 0..3_000 {
        out.push(format!(
            r#"{{"ts":"{}","kind":"page_view","device_id":"flood-device","ip":"81.200.1.1"}}"#,
            at(3_600_000 + i * 2_000)
        ));
    }
    // One address, 2,000 devices within an hour, some signed in.
    for i in 0..2_000 {
        let account = if i % 50 == 0 {
            format!(r#","account_id":"crowd-account-{i}""#)
        } else {
            String::new()
        };
        out.push(format!(
            r#"{{"ts":"{}","kind":"page_view","device_id":"crowd-{i}","ip":"81.200.2.2"{account}}}"#,
            at(7_200_000 + i * 1_500)
        ));
    }
    // Ids in other scripts, signed in and not, on one home address.
    for i in 0..50 {
        out.push(format!(
            r#"{{"ts":"{}","kind":"login","device_id":"设备-ü-{i}","account_id":"账户-Ω-{i}","ip":"81.200.3.{i}"}}"#,
            at(10_800_000 + i * 60_000)
        ));
        out.push(format!(
            r#"{{"ts":"{}","kind":"widget_view","device_id":"جهاز-{i}","ip":"81.200.3.{i}"}}"#,
            at(10_800_000 + i * 60_000 + 30_000)
        ));
    }
    out
}

/// Malformed message number `i` and the reason it must be rejected with.
fn malformed(i: usize) -> (Option<String>, &'static str) {
    match i % 10 {
        0 => (Some(format!("{{not json {i}")), "invalid_json"),
        1 => (Some(format!("[{i}]")), "not_an_object"),
        2 => (
            Some(format!(r#"{{"kind":"page_view","device_id":"m{i}","ip":"81.2.3.4"}}"#)),
            "missing_ts",
        ),
        3 => (
            Some(r#"{"ts":"2026-01-05T10:00:00Z","kind":"page_view","device_id":"undefined","ip":"81.2.3.4"}"#.into()),
            "junk_device_id",
        ),
        4 => (
            Some(format!(r#"{{"ts":"2026-01-05T10:00:00Z","kind":"page_view","device_id":"m{i}","ip":"1.2.3.{}"}}"#, 256 + i)),
            "invalid_ip",
        ),
        5 => (
            Some(format!("{{\"ts\":\"2026-01-05T10:00:00Z\",\"kind\":\"page_view\",\"device_id\":\"m\\u0000{i}\",\"ip\":\"81.2.3.4\"}}")),
            "invalid_device_id",
        ),
        6 if i % 500 == 6 => (
            Some(format!(
                r#"{{"ts":"2026-01-05T10:00:00Z","kind":"page_view","device_id":"m{i}","ip":"81.2.3.4","pad":"{}"}}"#,
                "x".repeat(70_000)
            )),
            "too_large",
        ),
        6 => (
            Some(format!(r#"{{"ts":"2999-01-01T00:00:00Z","kind":"page_view","device_id":"m{i}","ip":"81.2.3.4"}}"#)),
            "ts_in_future",
        ),
        7 if i % 100 == 7 => (None, "empty_payload"),
        7 => (
            Some(format!(r#"{{"ts":"not a time {i}","kind":"page_view","device_id":"m{i}","ip":"81.2.3.4"}}"#)),
            "invalid_ts",
        ),
        8 => (
            Some(format!(r#"{{"ts":1,"kind":"page_view","device_id":"m{i}","ip":"81.2.3.4"}}"#)),
            "ts_too_old",
        ),
        _ => (
            Some(format!(r#"{{"ts":"2026-01-05T10:00:00Z","kind":"login","device_id":"m{i}","ip":"81.2.3.4"}}"#)),
            "missing_account_id",
        ),
    }
}

/// Resident memory the service may reach in the abuse and burst tests.
const MEMORY_BOUND: u64 = 160 << 20;

/// The same with the partitioned stages: one instance runs all four stage
/// tasks, each with its own engine, bucket and account state and its
/// queue of routed input (paused at 100,000 records).
const PARTITIONED_MEMORY_BOUND: u64 = 240 << 20;

/// `[service]` settings of the partitioned runs: input produced at once or
/// without pauses, so partitions count as idle after five quiet seconds.
const PARTITIONED: &str =
    "partitioned = true\nsource_idle_seconds = 5\nprivacy_source_idle_ms = 5000";

#[test]
fn malformed_floods_and_odd_ids_are_handled() -> Result<()> {
    abuse("abuse", "", MEMORY_BOUND)
}

#[test]
fn malformed_floods_and_odd_ids_are_handled_when_partitioned() -> Result<()> {
    abuse("partabuse", PARTITIONED, PARTITIONED_MEMORY_BOUND)
}

/// Poison and abuse: 10,000 malformed messages mixed into 100,000 good
/// ones with floods from one device and one address and odd ids, for a
/// service with `[service]` settings `extra`; every bad message is a dead
/// letter with its reason, the graph is replay's, and resident memory
/// stays under `memory_bound`.
fn abuse(name: &str, extra: &str, memory_bound: u64) -> Result<()> {
    let (_serial, broker, dir, names, config) = setup(name, extra)?;
    let s = stream_with(dir.path(), &config, 600, 8, 41, floods)?;
    assert!(s.lines.len() > 100_000, "{} good lines", s.lines.len());
    eprintln!("{} good lines", s.lines.len());

    // 10,000 malformed messages spread evenly through the good ones.
    let bad: Vec<(Option<String>, &str)> = (0..10_000).map(malformed).collect();
    let every = s.lines.len() / bad.len() + 1;
    let mut input: Vec<Option<String>> = Vec::with_capacity(s.lines.len() + bad.len());
    let mut bad_iter = bad.iter();
    for (i, l) in s.lines.iter().enumerate() {
        if i % every == 0
            && let Some((p, _)) = bad_iter.next()
        {
            input.push(p.clone());
        }
        input.push(Some(l.clone()));
    }
    input.extend(bad_iter.map(|(p, _)| p.clone()));

    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    rt.block_on(produce(&producer, &names, &input))?;
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(300),
    )?;

    // Every malformed message is a dead letter with its own reason.
    let got = dead_letter_reasons(&broker.addr, &names)?;
    let mut expected: Vec<String> = bad.iter().map(|b| b.1.to_string()).collect();
    expected.sort();
    assert_eq!(got.len(), expected.len(), "dead letters");
    assert_eq!(got, expected);
    let (_, metrics) = http_get(&service.http, "/metrics")?;
    assert_eq!(
        metric(&metrics, "idlink_dead_letters_total{reason=\"too_large\"}"),
        bad.iter().filter(|b| b.1 == "too_large").count() as f64
    );

    let peak = service.peak_rss().unwrap_or(0);
    eprintln!("service peak RSS {} MiB", peak >> 20);
    assert!(
        peak < memory_bound,
        "peak RSS {} MiB over the bound of {} MiB",
        peak >> 20,
        memory_bound >> 20
    );
    Ok(())
}

/// Erasures, including requests that arrive long after the events they
/// cover, leave no trace in the final state of any output topic nor in
/// the state store: the newest snapshot holds none of the erased ids.
#[test]
fn erased_ids_leave_no_trace_in_outputs_or_the_snapshot() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("erasure", "")?;
    let s = stream(dir.path(), &config, 400, 10, 51)?;
    let erased = erased_ids(dir.path())?;
    assert!(erased.len() >= 3, "the stream erases something: {erased:?}");

    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    rt.block_on(produce(&producer, &names, &lines))?;
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(240),
    )?;
    // A graceful stop writes a final snapshot.
    let status = service.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "graceful stop exit status {status}");

    let devices = fold(&read_all(&broker.addr, &names.topic("device-links"))?);
    let accounts = fold(&read_all(&broker.addr, &names.topic("account-devices"))?);
    // Every request is acknowledged (acks are at-least-once: distinct).
    let acks: std::collections::BTreeSet<String> =
        read_all(&broker.addr, &names.topic("privacy-acks"))?
            .into_iter()
            .filter_map(|r| r.value)
            .collect();
    assert_eq!(
        acks.len(),
        s.privacy_requests,
        "privacy requests acknowledged"
    );
    let manifest = newest_manifest(&broker.addr, &names)?;
    assert!(
        manifest["epoch"].as_u64().unwrap_or(0) > 0 && manifest["id"].as_u64().unwrap_or(0) > 0,
        "a snapshot was written: {manifest}"
    );
    let snapshot = snapshot_text(
        &read_all(&broker.addr, &names.topic("snapshots"))?,
        &manifest,
    )?;
    let linked = a_linked_device(&s);
    assert!(
        !linked.is_empty() && snapshot.contains(&linked),
        "{linked} in the snapshot"
    );
    for e in &erased {
        let quoted = format!("\"{e}\"");
        assert!(!devices.contains(&quoted), "erased {e} in device-links");
        assert!(!accounts.contains(&quoted), "erased {e} in account-devices");
        assert!(!snapshot.contains(e.as_str()), "erased {e} in the snapshot");
    }
    Ok(())
}

/// What the burst test samples from `/metrics` while input arrives.
#[derive(Debug, Default)]
struct Pressure {
    /// Largest producer queue (records awaiting acknowledgement).
    max_queue: f64,
    /// Largest total consumer lag over the input partitions.
    max_lag: f64,
    /// Total lag at the last sample.
    last_lag: f64,
    /// Samples taken.
    samples: u32,
}

/// Input in three phases, as (multiple of the steady rate, seconds):
/// steady, ten times steady, steady again until the input runs out. The
/// steady rate is set so that the input lasts about 40 steady seconds.
const PHASES: [(usize, u64); 3] = [(1, 5), (10, 3), (1, 600)];

/// Records per batch in the burst test: the output of one batch is all
/// that may wait for acknowledgement at once.
const BURST_BATCH: usize = 1_000;

#[test]
fn a_burst_ten_times_the_steady_rate_is_absorbed_by_backpressure() -> Result<()> {
    // A device and an account record per input, at most, plus its dead
    // letters and acks.
    burst("burst", "", 3, MEMORY_BOUND)
}

#[test]
fn a_burst_is_absorbed_by_backpressure_when_partitioned() -> Result<()> {
    // A batch counts every record handled, routed input and internal
    // records alike; each may produce a handful (a routed record and
    // watermarks, a sighting, evidence, account parts, output lines), and
    // a day's close decides many devices at once (measured: 6.9 per
    // record at most).
    burst("partburst", PARTITIONED, 12, PARTITIONED_MEMORY_BOUND)
}

/// Input at a steady rate, then ten times that, then steady again, for a
/// service with `[service]` settings `extra` and batches of
/// [`BURST_BATCH`] records: the records awaiting acknowledgement never
/// exceed `per_record` per record of one batch, resident memory stays
/// under `memory_bound`, and the service catches up to replay's graph.
fn burst(name: &str, extra: &str, per_record: usize, memory_bound: u64) -> Result<()> {
    let extra = format!("{extra}\nbatch_max_messages = {BURST_BATCH}");
    let (_serial, broker, dir, names, config) = setup(name, &extra)?;
    let s = stream(dir.path(), &config, 500, 8, 61)?;
    let steady = s.lines.len() / 40;
    eprintln!("{} records, {steady} records/s steady", s.lines.len());
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;

    let done = std::sync::atomic::AtomicBool::new(false);
    let pressure = std::sync::Mutex::new(Pressure::default());
    let http = service.http.clone();
    let produced_in = std::thread::scope(|scope| -> Result<Duration> {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((200, text)) = http_get(&http, "/metrics") {
                    let lag = metric_sum(&text, "idlink_consumer_lag{");
                    let queue = metric(&text, "idlink_producer_queue_depth");
                    let mut p = pressure.lock().unwrap_or_else(|e| e.into_inner());
                    p.max_queue = p.max_queue.max(queue);
                    p.max_lag = p.max_lag.max(lag);
                    p.last_lag = lag;
                    p.samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Whatever this ends in, the sampler stops: the scope waits for it.
        let r = paced_then_caught_up(
            &rt,
            &producer,
            &broker.addr,
            &names,
            &s,
            steady,
            &mut service,
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })?;

    let p = pressure.into_inner().unwrap_or_else(|e| e.into_inner());
    let peak = service.peak_rss().unwrap_or(0);
    eprintln!(
        "produced in {produced_in:?}; {p:?}; service peak RSS {} MiB",
        peak >> 20
    );
    assert!(p.samples > 10, "metrics were sampled: {p:?}");
    // Backpressure: the records awaiting acknowledgement never exceed one
    // batch's output, whatever the input rate.
    assert!(
        p.max_queue <= (per_record * BURST_BATCH) as f64,
        "producer queue reached {} records",
        p.max_queue
    );
    assert!(
        peak < memory_bound,
        "peak RSS {} MiB over the bound of {} MiB",
        peak >> 20,
        memory_bound >> 20
    );
    // Caught up: the graph is replay's (checked above) and nothing is left.
    let (_, metrics) = http_get(&service.http, "/metrics")?;
    assert_eq!(metric_sum(&metrics, "idlink_consumer_lag{"), 0.0);
    assert_eq!(metric(&metrics, "idlink_ready"), 1.0);
    Ok(())
}

/// The burst test's input (`s`'s lines), produced at [`PHASES`]' paced
/// rates (`steady` records/s times each phase's factor); then waits for
/// replay's graph. Returns how long producing took.
fn paced_then_caught_up(
    rt: &tokio::runtime::Runtime,
    producer: &rdkafka::producer::FutureProducer,
    brokers: &str,
    names: &Names,
    s: &Stream,
    steady: usize,
    service: &mut Service,
) -> Result<Duration> {
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    // Paced production: each phase sends its rate in 100 ms ticks.
    let started = Instant::now();
    let mut sent = 0;
    for (times, seconds) in PHASES {
        let rate = times * steady;
        let phase = Instant::now();
        while sent < lines.len() && phase.elapsed() < Duration::from_secs(seconds) {
            let tick = Instant::now();
            let end = (sent + rate / 10).min(lines.len());
            rt.block_on(produce(producer, names, &lines[sent..end]))?;
            sent = end;
            std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
        }
        eprintln!("phase of {rate} records/s ended after {sent} records");
    }
    let produced_in = started.elapsed();
    let caught_up = Instant::now();
    let r = wait_for_graph(brokers, names, s, service, Duration::from_secs(240));
    eprintln!(
        "graph complete {:?} after the last record was produced",
        caught_up.elapsed()
    );
    r.map(|()| produced_in)
}
