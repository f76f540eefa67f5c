//! Several `idlink run` instances in one consumer group, against a real
//! broker: one owns the group, the others stand by; instances join, die,
//! stop and freeze (a zombie), and every run ends in the folded outputs
//! equal to `idlink replay` of the same input.

mod support;

use anyhow::{Result, bail};
use std::time::{Duration, Instant};
use support::*;

/// Waits until exactly one of `services` is ready (the group's owner) and
/// returns its index. The others must say why they are not.
fn wait_for_owner(services: &mut [Service], timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let ready: Vec<usize> = (0..services.len())
            .filter(|&i| services[i].is_ready())
            .collect();
        if let [one] = ready[..] {
            return Ok(one);
        }
        for s in services.iter_mut() {
            if let Some(status) = s.try_wait()? {
                bail!("an instance exited with {status}:\n{}", s.log_tail());
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = services.iter().map(Service::log_tail).collect();
            bail!(
                "no single owner within {timeout:?} ({} ready):\n{}",
                ready.len(),
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for the graph with `owner` watched for an early exit.
fn wait_for_graph_of(
    broker: &Broker,
    names: &Names,
    s: &Stream,
    owner: &mut Service,
) -> Result<()> {
    wait_for_graph(&broker.addr, names, s, owner, Duration::from_secs(240))
}

#[test]
fn two_or_three_instances_started_at_once_give_replays_graph() -> Result<()> {
    let _serial = serial();
    let broker = Broker::start()?;
    for n in [2, 3] {
        let dir = tempfile::tempdir()?;
        let names = Names::new(&format!("together{n}"));
        let config = write_config(dir.path(), &names, "")?;
        let s = stream(dir.path(), &config, 120, 6, 70 + n as u64)?;
        // Started together, they race into the group: one may own it for
        // a moment before another's join splits the partitions; the tie
        // is broken and the others go back to standby.
        let mut services: Vec<Service> = (0..n)
            .map(|_| Service::start(&config, &broker.addr, &names, dir.path()))
            .collect::<Result<_>>()?;
        let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
        runtime().block_on(produce(&producer(&broker.addr)?, &names, &lines))?;
        let first = wait_for_owner(&mut services, Duration::from_secs(90))?;
        wait_for_graph_of(&broker, &names, &s, &mut services[first])?;
        // Settled: one owner, and it stays the owner.
        let owner = wait_for_owner(&mut services, Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(3));
        let still = wait_for_owner(&mut services, Duration::from_secs(5))?;
        if still != owner {
            let logs: Vec<String> = services.iter().map(Service::log_text).collect();
            bail!(
                "the owner changed from {owner} to {still} after settling:\n{}",
                logs.join("\n----\n")
            );
        }
        eprintln!("{n} instances: instance {owner} owns the group");
        for (i, other) in services.iter().enumerate().filter(|(i, _)| *i != owner) {
            let (_, metrics) = http_get(&other.http, "/metrics")?;
            assert_eq!(
                metric(&metrics, "idlink_standby"),
                1.0,
                "instance {i} stands by"
            );
        }
    }
    Ok(())
}

#[test]
fn instances_join_mid_stream_and_the_owner_dies_then_stops() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("joins", "")?;
    let s = stream(dir.path(), &config, 150, 8, 81)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let parts: Vec<&[Option<String>]> = lines.chunks(lines.len() / 4 + 1).collect();
    assert_eq!(parts.len(), 4);

    let mut services = vec![Service::start(&config, &broker.addr, &names, dir.path())?];
    services[0].wait_ready(Duration::from_secs(60))?;
    rt.block_on(produce(&producer, &names, parts[0]))?;

    // A second and a third instance join while the first is busy: they
    // stand by, and the owner is never disturbed.
    for _ in 0..2 {
        services.push(Service::start(&config, &broker.addr, &names, dir.path())?);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(wait_for_owner(&mut services, Duration::from_secs(5))?, 0);
    rt.block_on(produce(&producer, &names, parts[1]))?;
    std::thread::sleep(Duration::from_millis(300));

    // The owner dies: a standby takes over once its session times out.
    let died = Instant::now();
    services.remove(0).kill9()?;
    let owner = wait_for_owner(&mut services, Duration::from_secs(60))?;
    eprintln!(
        "a standby took over {:?} after the owner died",
        died.elapsed()
    );
    rt.block_on(produce(&producer, &names, parts[2]))?;
    std::thread::sleep(Duration::from_millis(300));

    // The new owner stops gracefully: the last standby takes over at once.
    let stopped = Instant::now();
    let status = services.remove(owner).terminate(Duration::from_secs(30))?;
    assert!(status.success(), "graceful stop exit status {status}");
    let owner = wait_for_owner(&mut services, Duration::from_secs(60))?;
    eprintln!(
        "the last standby took over {:?} after a graceful stop",
        stopped.elapsed()
    );
    rt.block_on(produce(&producer, &names, parts[3]))?;
    wait_for_graph_of(&broker, &names, &s, &mut services[owner])
}

#[test]
fn a_zombie_owner_corrupts_nothing() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("zombie", "")?;
    let s = stream(dir.path(), &config, 150, 8, 91)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let (before, after) = lines.split_at(lines.len() / 2);

    let mut zombie = Service::start(&config, &broker.addr, &names, dir.path())?;
    zombie.wait_ready(Duration::from_secs(60))?;
    let mut successor = Service::start(&config, &broker.addr, &names, dir.path())?;
    std::thread::sleep(Duration::from_secs(1));
    assert!(zombie.is_ready() && !successor.is_ready());

    // The owner freezes in the middle of the first half, with work in
    // flight, and stays frozen past its session timeout (6 s).
    rt.block_on(produce(&producer, &names, before))?;
    std::thread::sleep(Duration::from_millis(150));
    zombie.pause()?;
    let frozen = Instant::now();
    successor.wait_ready(Duration::from_secs(60))?;
    eprintln!(
        "the successor took over {:?} after the freeze",
        frozen.elapsed()
    );
    rt.block_on(produce(&producer, &names, after))?;
    wait_for_graph_of(&broker, &names, &s, &mut successor)?;
    let claimed = newest_manifest(&broker.addr, &names)?["epoch"]
        .as_u64()
        .unwrap_or(0);

    // The zombie wakes with its old state and unpublished work. It must
    // find that it was fenced, publish nothing, and go back to standby.
    zombie.resume()?;
    let mut both = [successor, zombie];
    std::thread::sleep(Duration::from_secs(10));
    let owner = wait_for_owner(&mut both, Duration::from_secs(60))?;
    eprintln!("after the zombie woke, instance {owner} owns the group (0: the successor)");
    wait_for_graph_of(&broker, &names, &s, &mut both[owner])?;
    // Restores take the newest epoch: the zombie's old epoch never wins.
    let newest = newest_manifest(&broker.addr, &names)?;
    assert!(
        newest["epoch"].as_u64().unwrap_or(0) >= claimed,
        "newest manifest {newest} older than the successor's epoch {claimed}"
    );
    let log = both[1].log_text();
    for l in log.lines().filter(|l| {
        [
            "fenced",
            "owning",
            "standby",
            "restored",
            "holding",
            "meanwhile",
            "asking",
        ]
        .iter()
        .any(|w| l.contains(w))
    }) {
        eprintln!("zombie: {l}");
    }
    // Fenced by the epoch check, or told by the group (its session had
    // timed out) before it wrote anything: either way it stood down.
    assert!(
        ["fenced", "owned the group meanwhile", "standing by"]
            .iter()
            .any(|w| log.contains(w)),
        "the zombie noticed it was replaced:\n{}",
        both[1].log_tail()
    );
    // What it may have sent late, it asked the owner to write again, and
    // the owner (the successor, or the zombie itself once it restored the
    // successor's state) did.
    if log.contains("asking the group's owner to write records again") {
        assert!(
            both.iter().any(|s| s
                .log_text()
                .contains("writing again what a replaced owner may have overwritten")),
            "the republish request was not acted on:\n{}",
            both[owner].log_tail()
        );
    }
    Ok(())
}

/// Writes `value` (`None`: a tombstone) under `key` to `topic`, partition
/// `partition` or by key, as the service would.
fn write_record(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    let mut r: rdkafka::producer::FutureRecord<'_, str, str> =
        rdkafka::producer::FutureRecord::to(topic).key(key);
    if let Some(p) = partition {
        r = r.partition(p);
    }
    if let Some(v) = value {
        r = r.payload(v);
    }
    runtime()
        .block_on(producer.send(r, Duration::from_secs(30)))
        .map_err(|(e, _)| anyhow::anyhow!("writing {key} to {topic}: {e}"))?;
    Ok(())
}

/// What a zombie's late records do, made to happen on purpose: stale
/// records land after the owner's (a device's line replaced by a
/// tombstone, an account's by a wrong line, a key the graph never had),
/// then the request a fenced owner writes for their keys. The owner
/// renders them again while it runs; after it stops, the next owner does
/// when it restores; and once a snapshot covers a request, it is removed.
#[test]
fn republish_requests_repair_records_written_late() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("republish", "")?;
    let s = stream(dir.path(), &config, 100, 6, 93)?;
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let mut owner = Service::start(&config, &broker.addr, &names, dir.path())?;
    owner.wait_ready(Duration::from_secs(60))?;
    runtime().block_on(produce(&producer, &names, &lines))?;
    wait_for_graph_of(&broker, &names, &s, &mut owner)?;

    let id_of = |text: &str, field: &str, n: usize| -> String {
        text.lines()
            .nth(n)
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v[field].as_str().map(String::from))
            .unwrap_or_default()
    };
    let (links, accounts) = (names.topic("device-links"), names.topic("account-devices"));
    let manifests = names.topic("manifests");
    let late = |n: usize| -> Result<()> {
        let device = id_of(&s.expected_devices, "device_id", n);
        let account = id_of(&s.expected_accounts, "account_id", n);
        let ghost = format!("ghost-device-{n}");
        write_record(&producer, &links, None, &device, None)?;
        write_record(
            &producer,
            &accounts,
            None,
            &account,
            Some(r#"{"stale":true}"#),
        )?;
        write_record(&producer, &links, None, &ghost, Some(r#"{"stale":true}"#))?;
        let folded = fold(&read_all(&broker.addr, &links)?);
        assert_ne!(folded, s.expected_devices, "the late records landed");
        let request = serde_json::json!({
            "group": names.group,
            "epoch": 0,
            "devices": [device, ghost],
            "accounts": [account],
        });
        let key = format!("{}/republish/0/test-{n}", names.group);
        write_record(
            &producer,
            &manifests,
            Some(0),
            &key,
            Some(&request.to_string()),
        )
    };

    // The owner is idle: its look for newer claims finds the request.
    late(0)?;
    wait_for_graph_of(&broker, &names, &s, &mut owner)?;

    // No owner when the request lands: the next one acts on it after its
    // restore (the request is newer than the restored snapshot).
    owner.terminate_in_steps(Duration::from_secs(30), &["shut down"])?;
    late(1)?;
    let mut next = Service::start(&config, &broker.addr, &names, dir.path())?;
    next.wait_ready(Duration::from_secs(60))?;
    wait_for_graph_of(&broker, &names, &s, &mut next)?;

    // Covered by a snapshot, each request is removed (a tombstone).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut last: std::collections::BTreeMap<String, bool> = Default::default();
        for r in read_all(&broker.addr, &manifests)? {
            if let Some(k) = r.key.filter(|k| is_republish_request(k)) {
                last.insert(k, r.value.is_some());
            }
        }
        if last.len() == 2 && last.values().all(|live| !live) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "republish requests not removed: {last:?}\n{}",
                next.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = next.log_text();
    assert!(
        log.contains("writing again what a replaced owner may have overwritten"),
        "{}",
        next.log_tail()
    );
    Ok(())
}
