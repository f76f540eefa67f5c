//! `idlink run` end to end against a real Kafka-protocol broker.
//!
//! Each test simulates a small population, sorts it by `ts` (so its
//! disorder is within the lateness bound), replays it to get the expected
//! graph, then produces it to the input topics and checks that the output
//! topics, read back and folded by key, equal replay's files byte for byte.

mod support;

use anyhow::Result;
use std::time::Duration;
use support::*;

/// Runs `idlink run` expecting it to refuse to start, and returns its output.
fn run_until_exit(
    config: &std::path::Path,
    brokers: &str,
    names: &Names,
) -> Result<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_idlink"))
        .args(["run", "--config"])
        .arg(config)
        .env("IDLINK_BROKERS", brokers)
        .env("IDLINK_GROUP_ID", &names.group)
        .env("IDLINK_HTTP_ADDR", format!("127.0.0.1:{}", free_port()?))
        .env("IDLINK_LOG", "error")
        .output()?)
}

/// Malformed input mixed into the stream: (payload, expected reason).
fn poison() -> Vec<(Option<String>, &'static str)> {
    vec![
        (Some("{not json".into()), "invalid_json"),
        (Some("[1,2,3]".into()), "not_an_object"),
        (Some(r#"{"kind":"page_view","device_id":"x","ip":"81.2.3.4"}"#.into()), "missing_ts"),
        (Some(r#"{"ts":"2026-01-05T10:00:00Z","kind":"page_view","device_id":"null","ip":"81.2.3.4"}"#.into()), "junk_device_id"),
        (Some(r#"{"ts":"2026-01-05T10:00:00Z","kind":"page_view","device_id":"x","ip":"1.2.3.999"}"#.into()), "invalid_ip"),
        (Some("{\"ts\":\"2026-01-05T10:00:00Z\",\"kind\":\"page_view\",\"device_id\":\"a\\u0007b\",\"ip\":\"81.2.3.4\"}".into()), "invalid_device_id"),
        (Some(format!(r#"{{"ts":"2026-01-05T10:00:00Z","kind":"page_view","device_id":"x","ip":"81.2.3.4","pad":"{}"}}"#, "x".repeat(70_000))), "too_large"),
        (None, "empty_payload"),
    ]
}

#[test]
fn run_publishes_the_same_graph_as_replay() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("clean", "")?;
    let s = stream(dir.path(), &config, 120, 8, 11)?;
    let poison = poison();
    let mut input: Vec<Option<String>> = Vec::new();
    let step = s.lines.len() / (poison.len() + 1);
    let mut bad = poison.iter();
    for (i, l) in s.lines.iter().enumerate() {
        input.push(Some(l.clone()));
        if i % step == step / 2
            && let Some((p, _)) = bad.next()
        {
            input.push(p.clone());
        }
    }
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    rt.block_on(produce(&producer, &names, &input))?;

    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    assert_eq!(http_get(&service.http, "/health/live")?.0, 200);
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(240),
    )?;

    // Every poison message is a dead letter with its reason and origin.
    let reasons = dead_letter_reasons(&broker.addr, &names)?;
    let dead = read_all(&broker.addr, &names.topic("dead-letters"))?;
    let mut expected: Vec<String> = poison.iter().map(|p| p.1.to_string()).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    for r in &dead {
        assert_eq!(
            r.headers.get("source-topic"),
            Some(&names.topic("device-events"))
        );
        assert!(
            r.headers.contains_key("source-offset") && r.headers.contains_key("source-partition")
        );
        assert_eq!(
            r.headers.get("schema-version").map(String::as_str),
            Some("1")
        );
    }
    let raw: Vec<Option<&String>> = dead.iter().map(|r| r.value.as_ref()).collect();
    assert!(
        raw.contains(&Some(&"{not json".to_string())),
        "dead letters carry the raw payload"
    );

    // Every privacy request is acknowledged once, with a keyed hash.
    let acks = read_all(&broker.addr, &names.topic("privacy-acks"))?;
    assert_eq!(acks.len(), s.privacy_requests);
    for a in &acks {
        let v: serde_json::Value = serde_json::from_str(a.value.as_deref().unwrap_or("null"))?;
        assert_eq!(v["id_hash"].as_str().map(str::len), Some(64));
        assert!(["erase", "opt_out", "opt_in"].contains(&v["kind"].as_str().unwrap_or("")));
    }

    // The metrics agree with what was sent.
    let (status, metrics) = http_get(&service.http, "/metrics")?;
    assert_eq!(status, 200);
    let events_topic = names.topic("device-events");
    let accepted = metric(
        &metrics,
        &format!("idlink_events_consumed_total{{outcome=\"accepted\",topic=\"{events_topic}\"}}"),
    );
    let rejected = metric(
        &metrics,
        &format!("idlink_events_consumed_total{{outcome=\"rejected\",topic=\"{events_topic}\"}}"),
    );
    assert_eq!(
        accepted as usize,
        s.lines.len() - s.privacy_requests,
        "{metrics}"
    );
    assert_eq!(rejected as usize, poison.len());
    assert_eq!(
        metric(
            &metrics,
            "idlink_dead_letters_total{reason=\"invalid_json\"}"
        ),
        1.0
    );
    assert_eq!(metric(&metrics, "idlink_ready"), 1.0);
    let login = metric(&metrics, "idlink_graph_links{type=\"login\"}");
    assert!(login > 0.0);
    assert!(metrics.contains("idlink_ingest_to_publish_seconds_bucket"));
    // Every sign-in's publication was timed.
    assert!(metric(&metrics, "idlink_sign_in_to_publish_seconds_count") > 0.0);
    assert!(metrics.contains("idlink_consumer_lag{"));

    // Graceful shutdown: exit 0, well within the deadline, each step logged.
    service.terminate_in_steps(
        Duration::from_secs(30),
        &[
            "shutting down: publishing",
            "shutting down: output acknowledged",
            "shut down",
        ],
    )?;
    Ok(())
}

/// The single owner with every input partition idle before any input
/// (started long before its producer), then a backlog: the privacy
/// requests first, then the events they are ordered among. The idle
/// event partitions are held at the resumption until confirmed idle
/// twice, a statistics report apart (`sources.rs` in the core), so the
/// requests do not run the watermark past the events: none is late, and
/// the graph is replay's.
#[test]
fn input_after_every_partition_went_idle_is_not_late() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("resume", "source_idle_seconds = 2")?;
    let s = stream(dir.path(), &config, 120, 6, 152)?;
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    // Three partitions of each input topic.
    wait_for_idle_inputs(std::slice::from_ref(&service), 6.0, Duration::from_secs(60))?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    for part in privacy_first(&s) {
        rt.block_on(produce(&producer, &names, &part))?;
    }
    let graphed = wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(240),
    );
    let late = metric_over(std::slice::from_ref(&service), "idlink_late_events_total")?;
    graphed.map_err(|e| e.context(format!("{late} events came late")))?;
    assert_eq!(late, 0.0, "no event came late");
    service.terminate(Duration::from_secs(30))?;
    Ok(())
}

#[test]
fn restarts_and_crashes_leave_the_same_graph() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("restart", "")?;
    let s = stream(dir.path(), &config, 120, 8, 12)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let (a, rest) = lines.split_at(lines.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);

    // First third, then a graceful stop mid-stream.
    rt.block_on(produce(&producer, &names, a))?;
    let mut first = Service::start(&config, &broker.addr, &names, dir.path())?;
    first.wait_ready(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(3));
    rt.block_on(produce(&producer, &names, b))?;
    std::thread::sleep(Duration::from_millis(1500));
    let status = first.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "graceful stop exit status {status}");

    // Second run: crashes with kill -9 while the last third arrives.
    let mut second = Service::start(&config, &broker.addr, &names, dir.path())?;
    second.wait_ready(Duration::from_secs(60))?;
    rt.block_on(produce(&producer, &names, c))?;
    std::thread::sleep(Duration::from_millis(2500));
    second.kill9()?;

    // Third run restores the snapshot and finishes the stream.
    let mut third = Service::start(&config, &broker.addr, &names, dir.path())?;
    third.wait_ready(Duration::from_secs(60))?;
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut third,
        Duration::from_secs(240),
    )?;
    let (_, metrics) = http_get(&third.http, "/metrics")?;
    assert_eq!(metric(&metrics, "idlink_state_restore_progress"), 1.0);
    Ok(())
}

#[test]
fn refuses_to_start_when_the_brokers_cannot_be_reached() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let names = Names::new("unreachable");
    let config = write_config(dir.path(), &names, "")?;
    let text = std::fs::read_to_string(&config)?.replace(
        "connect_timeout_seconds = 20",
        "connect_timeout_seconds = 2",
    );
    std::fs::write(&config, text)?;
    let out = run_until_exit(&config, &format!("127.0.0.1:{}", free_port()?), &names)?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be reached within 2 s"), "{stderr}");
    Ok(())
}

#[test]
fn refuses_an_unknown_setting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let names = Names::new("badconfig");
    let config = write_config(dir.path(), &names, "batch_max_msgs = 3")?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idlink"))
        .args(["run", "--config"])
        .arg(&config)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch_max_msgs"));
    Ok(())
}

#[test]
fn refuses_an_output_topic_that_is_not_compacted() -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let (_serial, broker, _dir, names, config) = setup("policy", "")?;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()?;
    let links = names.topic("device-links");
    let topic =
        NewTopic::new(&links, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "delete");
    let created = runtime().block_on(admin.create_topics(&[topic], &AdminOptions::new()))?;
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let out = run_until_exit(&config, &broker.addr, &names)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started despite a delete-policy output topic"
    );
    assert!(stderr.contains("cleanup.policy=delete"), "{stderr}");
    Ok(())
}

/// In a real-time stream the watermark trails the newest event by the
/// allowed lateness (10 minutes), and a steady stream never lets the
/// idle flush run. A sign-in must still reach `device-links` and
/// `account-devices` at once.
#[test]
fn a_sign_in_is_published_at_once_while_the_stream_flows() -> Result<()> {
    let (_serial, broker, dir, names, config) = setup("realtime", "")?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    let now = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let login_at = chrono::Utc::now();
    let login = format!(
        r#"{{"ts":"{}","kind":"login","device_id":"rt-phone","account_id":"rt-alice","ip":"81.7.7.7"}}"#,
        login_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    rt.block_on(produce(&producer, &names, &[Some(login)]))?;
    // Keep the stream flowing (an event every 100 ms) and watch the
    // outputs until the sign-in shows (the deadline only bounds a failing
    // run); then check the watermark had not reached it.
    let start = std::time::Instant::now();
    let mut i = 0;
    loop {
        let tick = format!(
            r#"{{"ts":"{}","kind":"page_view","device_id":"rt-other-{}","ip":"81.7.8.{}"}}"#,
            now(),
            i % 7,
            i % 200 + 1
        );
        rt.block_on(produce(&producer, &names, &[Some(tick)]))?;
        i += 1;
        if i % 10 == 0 {
            let devices = fold(&read_all(&broker.addr, &names.topic("device-links"))?);
            let accounts = fold(&read_all(&broker.addr, &names.topic("account-devices"))?);
            if devices.contains("\"device_id\":\"rt-phone\"")
                && devices.contains("\"account_id\":\"rt-alice\"")
                && accounts.contains("\"account_id\":\"rt-alice\"")
            {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the sign-in was never published while the stream flowed:\n{}",
            service.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(&service.http, "/metrics")?;
    let watermark = metric(&metrics, "idlink_watermark_seconds");
    assert!(
        watermark < login_at.timestamp() as f64,
        "published before the watermark ({watermark}) passed the sign-in ({login_at})"
    );
    assert!(metric(&metrics, "idlink_reorder_buffer_events") > 0.0);
    Ok(())
}
