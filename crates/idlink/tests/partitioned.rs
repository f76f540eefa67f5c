//! `idlink run` partitioned (`service.partitioned`): instances of one
//! group share the stage partitions, against a real broker. One, two and
//! three instances, instances joining mid-stream, one killed, and a
//! frozen one (a zombie) all end in the folded outputs equal to
//! `idlink replay` of the same input.

mod support;

use anyhow::Result;
use std::time::{Duration, Instant};
use support::*;

/// The `[service]` settings of a test that produces its input at once:
/// partitioned, and input partitions count as idle (caught up, so the
/// graph is flushed) after five quiet seconds: longer than instances take
/// to start before the input is produced, so no partition counts as idle
/// when its first records arrive. Privacy partitions too: the input is
/// produced over a second or two, and a request read after a burst of
/// later events would be late, applied at once rather than in `ts` order
/// as replay applies it.
const PARTITIONED: &str =
    "partitioned = true\nsource_idle_seconds = 5\nprivacy_source_idle_ms = 5000";

/// The same for a test that pauses between parts of its input: an input
/// partition must not count as idle during a pause, or the others would
/// run ahead of it and its next events could arrive late (as in Flink, an
/// idle source does not hold the watermark back).
const PARTITIONED_WITH_PAUSES: &str =
    "partitioned = true\nsource_idle_seconds = 20\nprivacy_source_idle_ms = 20000";

/// What a graceful stop of an instance logs, in order.
const STOP_STEPS: [&str; 4] = [
    "shutting down: publishing",
    "shutting down: output acknowledged",
    "shutting down: tasks snapshotted",
    "shut down",
];

/// Waits for replay's graph, watching `service` for an early exit.
/// On failure, every instance's log tail is in the error: the work is
/// shared, so any of them may be the one that tells why.
fn graph(broker: &Broker, names: &Names, s: &Stream, services: &mut [Service]) -> Result<()> {
    let Some((first, rest)) = services.split_first_mut() else {
        return Ok(());
    };
    wait_for_graph(&broker.addr, names, s, first, Duration::from_secs(240)).map_err(|e| {
        let tails: Vec<String> = rest.iter().map(Service::log_tail).collect();
        e.context(format!(
            "the other instances' logs:\n{}",
            tails.join("\n----\n")
        ))
    })
}

/// How many stage tasks an instance restored, from its log.
fn tasks_taken(s: &Service) -> usize {
    s.log_text().matches("stage task restored").count()
}

#[test]
fn one_two_and_three_instances_give_replays_graph() -> Result<()> {
    let _serial = serial();
    let broker = Broker::start()?;
    for n in [1usize, 2, 3] {
        let dir = tempfile::tempdir()?;
        let names = Names::new(&format!("parts{n}"));
        let config = write_config(dir.path(), &names, PARTITIONED)?;
        let s = stream(dir.path(), &config, 120, 6, 110 + n as u64)?;
        let mut services: Vec<Service> = (0..n)
            .map(|_| Service::start(&config, &broker.addr, &names, dir.path()))
            .collect::<Result<_>>()?;
        for svc in &mut services {
            svc.wait_ready(Duration::from_secs(90))?;
        }
        let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
        let started = Instant::now();
        runtime().block_on(produce(&producer(&broker.addr)?, &names, &lines))?;
        graph(&broker, &names, &s, &mut services)?;
        let taken: Vec<usize> = services.iter().map(tasks_taken).collect();
        eprintln!(
            "{n} instance(s): replay's graph after {:?}; stage tasks restored per instance: {taken:?}",
            started.elapsed()
        );
        assert!(
            taken.iter().all(|&t| t > 0),
            "every instance took a share of the stage tasks: {taken:?}"
        );
        // What the tasks' snapshots cover is deleted from the internal
        // topics (`purge.rs`), and the brokers refused no purge.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let routed = low_watermarks(&broker.addr, &names.topic("internal-device-events"))?;
            let mut purged = [0.0, 0.0];
            for svc in &services {
                let (_, m) = http_get(&svc.http, "/metrics")?;
                purged[0] += metric(&m, "idlink_internal_purges_total{result=\"ok\"}");
                purged[1] += metric(&m, "idlink_internal_purges_total{result=\"failed\"}");
                assert!(
                    metric(&m, "idlink_snapshots_total") > 0.0,
                    "every instance reports its tasks' snapshots"
                );
            }
            assert_eq!(purged[1], 0.0, "purges failed");
            if purged[0] > 0.0 && routed.iter().any(|&low| low > 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "internal records purged: {purged:?}; routed events' low watermarks: {routed:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        // Settled, the instances hold every task once between them (the
        // gauge follows a rebalance within a batch: look for a while).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let held: Vec<f64> = services
                .iter()
                .map(|svc| {
                    http_get(&svc.http, "/metrics").map(|(_, m)| metric(&m, "idlink_stage_tasks"))
                })
                .collect::<Result<_>>()?;
            if held.iter().sum::<f64>() == 4.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stage tasks per instance: {held:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        for svc in services {
            let status = svc.terminate(Duration::from_secs(30))?;
            assert!(status.success(), "graceful stop exit status {status}");
        }
    }
    Ok(())
}

/// Every input partition goes idle before any input arrives (instances
/// started long before their producer), then a backlog arrives: the
/// privacy requests first, then the events they are ordered among. The
/// partitions read first must not run the watermark past the others,
/// still idle: those are held at the resumption until confirmed idle
/// after it (`sources.rs` in the core). No event is late, and the graph
/// is replay's. Without the hold, the requests' partitions ran the
/// watermark to the last request's `ts` and every event came late.
#[test]
fn input_after_every_partition_went_idle_is_not_late() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("partresume", PARTITIONED)?;
    let s = stream(dir.path(), &config, 120, 6, 151)?;
    let mut services: Vec<Service> = (0..2)
        .map(|_| Service::start(&config, &broker.addr, &names, dir.path()))
        .collect::<Result<_>>()?;
    for svc in &mut services {
        svc.wait_ready(Duration::from_secs(90))?;
    }
    // The instances route three events and three privacy partitions
    // between them: all six idle before the input.
    wait_for_idle_inputs(&services, 6.0, Duration::from_secs(90))?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    for part in privacy_first(&s) {
        assert!(!part.is_empty());
        rt.block_on(produce(&producer, &names, &part))?;
    }
    let graphed = graph(&broker, &names, &s, &mut services);
    let late = metric_over(&services, "idlink_late_events_total")?;
    graphed.map_err(|e| e.context(format!("{late} events came late")))?;
    assert_eq!(late, 0.0, "no event came late");
    for svc in services {
        svc.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}

#[test]
fn instances_join_mid_stream_then_one_dies() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("partjoin", PARTITIONED_WITH_PAUSES)?;
    let s = stream(dir.path(), &config, 150, 8, 121)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let parts: Vec<&[Option<String>]> = lines.chunks(lines.len() / 4 + 1).collect();
    assert_eq!(parts.len(), 4);

    let mut services = vec![Service::start(&config, &broker.addr, &names, dir.path())?];
    services[0].wait_ready(Duration::from_secs(60))?;
    rt.block_on(produce(&producer, &names, parts[0]))?;
    // A second and a third instance join while the first is busy.
    for part in &parts[1..3] {
        services.push(Service::start(&config, &broker.addr, &names, dir.path())?);
        std::thread::sleep(Duration::from_secs(2));
        rt.block_on(produce(&producer, &names, part))?;
    }
    std::thread::sleep(Duration::from_secs(3));
    // One dies: its tasks move to the others, which restore them from
    // their snapshots and read their streams again.
    services.remove(1).kill9()?;
    rt.block_on(produce(&producer, &names, parts[3]))?;
    graph(&broker, &names, &s, &mut services)?;
    for svc in services {
        svc.terminate_in_steps(Duration::from_secs(30), &STOP_STEPS)?;
    }
    Ok(())
}

#[test]
fn a_frozen_instance_corrupts_nothing() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("partzombie", PARTITIONED_WITH_PAUSES)?;
    let s = stream(dir.path(), &config, 150, 8, 131)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let (before, after) = lines.split_at(lines.len() / 2);

    let mut zombie = Service::start(&config, &broker.addr, &names, dir.path())?;
    let mut other = Service::start(&config, &broker.addr, &names, dir.path())?;
    zombie.wait_ready(Duration::from_secs(60))?;
    other.wait_ready(Duration::from_secs(60))?;
    rt.block_on(produce(&producer, &names, before))?;
    std::thread::sleep(Duration::from_millis(300));
    // Frozen with work in flight, past its session timeout (6 s): the
    // other instance takes its tasks over.
    zombie.pause()?;
    std::thread::sleep(Duration::from_secs(12));
    rt.block_on(produce(&producer, &names, after))?;
    // It wakes with its old state: fenced, or already told by the group.
    zombie.resume()?;
    let mut both = [other, zombie];
    graph(&broker, &names, &s, &mut both)?;
    for svc in both {
        let status = svc.terminate(Duration::from_secs(30))?;
        assert!(status.success(), "graceful stop exit status {status}");
    }
    Ok(())
}

/// Privacy requests while the stages are busy: erasures reach every stage
/// partition while evidence about the id is still moving between them
/// (the input is produced while two instances run), and the simulator's
/// late requests arrive long after the events they cover. Every request
/// is acknowledged once every device and bucket partition has applied
/// it, and no erased id is left in either output topic's folded state or
/// in any stage task's newest snapshot.
#[test]
fn privacy_requests_in_flight_leave_no_trace_and_are_acknowledged() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("partprivacy", PARTITIONED)?;
    let s = stream(dir.path(), &config, 400, 10, 52)?;
    let erased = erased_ids(dir.path())?;
    assert!(erased.len() >= 3, "the stream erases something: {erased:?}");

    // The second instance joins once the first holds every task: half of
    // them move, restored from the first one's claims.
    let mut services = Vec::new();
    for _ in 0..2 {
        let mut svc = Service::start(&config, &broker.addr, &names, dir.path())?;
        svc.wait_ready(Duration::from_secs(90))?;
        services.push(svc);
    }
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    runtime().block_on(produce(&producer(&broker.addr)?, &names, &lines))?;
    graph(&broker, &names, &s, &mut services)?;
    // Graceful stops write every task's final snapshot.
    for svc in services {
        let status = svc.terminate(Duration::from_secs(30))?;
        assert!(status.success(), "graceful stop exit status {status}");
    }

    // One acknowledgement per request (repeats after a restart would be
    // the same request: counted once).
    let acked: std::collections::BTreeSet<(String, String, String, String)> =
        read_all(&broker.addr, &names.topic("privacy-acks"))?
            .into_iter()
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value?).ok())
            .map(|v| {
                let f = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                (f("ts"), f("kind"), f("subject"), f("id_hash"))
            })
            .collect();
    assert_eq!(
        acked.len(),
        s.privacy_requests,
        "privacy requests acknowledged"
    );

    // Every task's newest snapshot, read whole. On the way, the order
    // that lets an owner purge its internal records (`purge.rs`): every
    // epoch of a task begins with its claim, written before the restore
    // read anything, never with a snapshot.
    let task_prefix = format!("{}#stage-", names.group);
    let mut newest: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let mut epochs = std::collections::BTreeSet::new();
    for r in read_all(&broker.addr, &names.topic("manifests"))? {
        let (Some(key), Some(value)) = (r.key, r.value) else {
            continue;
        };
        let Some(task) = key
            .strip_prefix(&task_prefix)
            .and_then(|k| k.split('/').next())
        else {
            continue;
        };
        let Ok(m) = serde_json::from_str::<serde_json::Value>(&value) else {
            continue;
        };
        if epochs.insert((task.to_string(), m["epoch"].as_u64())) {
            assert_eq!(m["claim"], true, "task {task}'s epoch begins with {m}");
        }
        if m["claim"] == true {
            // A claim written ahead of a restore: no state.
            continue;
        }
        let newer = newest.get(task).is_none_or(|n| {
            (m["epoch"].as_u64(), m["id"].as_u64()) > (n["epoch"].as_u64(), n["id"].as_u64())
        });
        if newer {
            newest.insert(task.to_string(), m);
        }
    }
    assert_eq!(
        newest.len(),
        4,
        "a snapshot of every stage task: {newest:?}"
    );
    let chunks = read_all(&broker.addr, &names.topic("snapshots"))?;
    let mut state = String::new();
    for m in newest.values() {
        state += &snapshot_text(&chunks, m)?;
    }
    let linked = a_linked_device(&s);
    assert!(
        !linked.is_empty() && state.contains(&linked),
        "{linked} in the state"
    );
    let devices = fold(&read_all(&broker.addr, &names.topic("device-links"))?);
    let accounts = fold(&read_all(&broker.addr, &names.topic("account-devices"))?);
    for e in &erased {
        let quoted = format!("\"{e}\"");
        assert!(!devices.contains(&quoted), "erased {e} in device-links");
        assert!(!accounts.contains(&quoted), "erased {e} in account-devices");
        assert!(
            !state.contains(e.as_str()),
            "erased {e} in a stage task's snapshot"
        );
    }
    // What the last snapshots cover has left the internal topics
    // (`purge.rs`): the routed events and the copies of the requests that
    // named the erased ids are gone.
    let mut internal = String::new();
    for t in ["device-events", "sightings", "evidence", "links", "shown"] {
        for r in read_all(&broker.addr, &names.topic(&format!("internal-{t}")))? {
            internal += r.value.as_deref().unwrap_or_default();
        }
    }
    for e in &erased {
        assert!(
            !internal.contains(e.as_str()),
            "erased {e} in an internal topic"
        );
    }
    Ok(())
}

/// Two instances, one of them killed with `kill -9` at a random moment
/// after each part of the input and started again: its stage tasks move
/// to the other and back, restored from snapshots, and the graph is
/// replay's.
#[test]
fn random_crashes_of_an_instance_leave_the_same_graph() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("partcrash", PARTITIONED_WITH_PAUSES)?;
    let s = stream(dir.path(), &config, 150, 8, 141)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let mut rng = Rng(fault_seed() | 1);
    let mut services: Vec<Service> = (0..2)
        .map(|_| Service::start(&config, &broker.addr, &names, dir.path()))
        .collect::<Result<_>>()?;
    for svc in &mut services {
        svc.wait_ready(Duration::from_secs(90))?;
    }
    for chunk in lines.chunks(lines.len() / 4 + 1) {
        rt.block_on(produce(&producer, &names, chunk))?;
        let after = Duration::from_millis(100 + rng.below(3_000));
        let victim = rng.below(2) as usize;
        std::thread::sleep(after);
        eprintln!(
            "kill -9 instance {victim} {after:?} after a chunk of {} records",
            chunk.len()
        );
        services.remove(victim).kill9()?;
        let mut again = Service::start(&config, &broker.addr, &names, dir.path())?;
        again.wait_ready(Duration::from_secs(90))?;
        services.push(again);
    }
    graph(&broker, &names, &s, &mut services)?;
    for svc in services {
        svc.terminate_in_steps(Duration::from_secs(30), &STOP_STEPS)?;
    }
    Ok(())
}
