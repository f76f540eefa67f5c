//! The naive baseline: its rule on hand-made events, and a full run on a
//! small scenario scored by the evaluator.

mod common;

use common::Scratch;
use idlink_sim::{Scenario, evaluate, naive_baseline};
use serde_json::Value;

fn ev(ts: &str, kind: &str, dev: &str, ip: &str, acct: Option<&str>) -> String {
    let acct = acct
        .map(|a| format!(",\"account_id\":\"{a}\""))
        .unwrap_or_default();
    format!(
        "{{\"ts\":\"{ts}\",\"kind\":\"{kind}\",\"device_id\":\"{dev}\",\"ip\":\"{ip}\"{acct},\"source\":\"web\",\"user_agent\":\"t\"}}\n"
    )
}

fn links_of(path: &std::path::Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).expect("read links");
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("links line is JSON");
        let dev = v["device_id"].as_str().expect("device_id").to_string();
        for l in v["links"].as_array().expect("links") {
            assert!(
                l["first_seen"].is_string()
                    && l["last_seen"].is_string()
                    && l["confidence"].is_number()
            );
            out.push((
                dev.clone(),
                l["account_id"].as_str().expect("account").to_string(),
                l["link_type"].as_str().expect("type").to_string(),
            ));
        }
    }
    out
}

#[test]
fn naive_rule_needs_two_days_and_small_addresses() {
    let dir = Scratch::new("baseline-rule");
    let mut events = String::new();
    // Day 1 and 2: "lap" meets a1's phone within 30 minutes at 24.1.1.1.
    events += &ev(
        "2026-01-05T20:00:00.000Z",
        "login",
        "phone",
        "24.1.1.1",
        Some("a1"),
    );
    events += &ev(
        "2026-01-05T20:00:01.000Z",
        "page_view",
        "phone",
        "24.1.1.1",
        Some("a1"),
    );
    events += &ev(
        "2026-01-05T20:10:00.000Z",
        "page_view",
        "lap",
        "24.1.1.1",
        None,
    );
    events += &ev(
        "2026-01-06T21:00:00.000Z",
        "page_view",
        "phone",
        "24.1.1.1",
        Some("a1"),
    );
    events += &ev(
        "2026-01-06T21:25:00.000Z",
        "page_view",
        "lap",
        "24.1.1.1",
        None,
    );
    // "tab" meets a1 on one day only.
    events += &ev(
        "2026-01-05T20:05:00.000Z",
        "page_view",
        "tab",
        "24.1.1.1",
        None,
    );
    // "far" is on the address on two days but never within 30 minutes.
    events += &ev(
        "2026-01-05T22:00:00.000Z",
        "page_view",
        "far",
        "24.1.1.1",
        None,
    );
    events += &ev(
        "2026-01-06T23:00:00.000Z",
        "page_view",
        "far",
        "24.1.1.1",
        None,
    );
    // A crowded address: a2 plus 9 unsigned devices on both days.
    for day in ["05", "06"] {
        events += &ev(
            &format!("2026-01-{day}T10:00:00.000Z"),
            "page_view",
            "p2",
            "38.0.0.1",
            Some("a2"),
        );
        for i in 0..9 {
            events += &ev(
                &format!("2026-01-{day}T10:01:00.000Z"),
                "page_view",
                &format!("crowd{i}"),
                "38.0.0.1",
                None,
            );
        }
    }
    // Privacy: opted-out a3 is never inferred; erased device disappears.
    for day in ["05", "06"] {
        events += &ev(
            &format!("2026-01-{day}T08:00:00.000Z"),
            "page_view",
            "p3",
            "90.0.0.9",
            Some("a3"),
        );
        events += &ev(
            &format!("2026-01-{day}T08:01:00.000Z"),
            "page_view",
            "x3",
            "90.0.0.9",
            None,
        );
    }
    events += "{\"ts\":\"2026-01-06T09:00:00.000Z\",\"kind\":\"opt_out\",\"account_id\":\"a3\"}\n";
    events += "{\"ts\":\"2026-01-06T09:00:00.000Z\",\"kind\":\"erase\",\"device_id\":\"p2\"}\n";
    let events = dir.write("events.jsonl", &events);
    let out = dir.path("links.jsonl");
    let inferred = naive_baseline(&events, &out).expect("baseline");
    let links = links_of(&out);
    assert_eq!(inferred, 1, "{links:?}");
    assert!(
        links.contains(&("lap".into(), "a1".into(), "inferred".into())),
        "{links:?}"
    );
    assert!(
        links.contains(&("phone".into(), "a1".into(), "login".into())),
        "{links:?}"
    );
    assert!(
        links.contains(&("p3".into(), "a3".into(), "login".into())),
        "{links:?}"
    );
    assert!(
        !links
            .iter()
            .any(|l| l.0 == "tab" || l.0 == "far" || l.0.starts_with("crowd")),
        "{links:?}"
    );
    assert!(
        !links.iter().any(|l| l.0 == "p2" || l.0 == "x3"),
        "{links:?}"
    );
}

#[test]
fn bad_event_lines_are_reported() {
    let dir = Scratch::new("baseline-bad");
    let events = dir.write(
        "events.jsonl",
        "{\"ts\":\"yesterday\",\"kind\":\"page_view\",\"device_id\":\"d\",\"ip\":\"1.2.3.4\"}\n",
    );
    let err = naive_baseline(&events, &dir.path("out.jsonl")).expect_err("bad ts");
    assert!(err.to_string().contains(":1:"), "{err}");
}

#[test]
fn baseline_runs_on_a_scenario_and_is_fooled_by_the_traps() {
    let dir = Scratch::new("baseline-scenario");
    Scenario {
        people: 400,
        days: 8,
        seed: 3,
        ..Scenario::default()
    }
    .write(dir.dir())
    .expect("scenario");
    let out = dir.path("links.jsonl");
    let inferred = naive_baseline(&dir.path("events.jsonl"), &out).expect("baseline");
    assert!(inferred > 0);
    let e = evaluate(&dir.path("truth.json"), &out).expect("evaluate");
    assert_eq!(e.inferred_links, inferred);
    assert_eq!(e.login_precision, 1.0, "sign-ins are always right");
    assert!(
        e.inferred_precision < 0.8,
        "the naive rule must be fooled: {e}"
    );
    assert!(e.inferred_correct > 0, "but it finds some true links: {e}");
    assert!(
        e.violations.iter().all(|v| v.starts_with("bot device")),
        "privacy is honoured: {:?}",
        e.violations
    );
}
