//! Scenario output: determinism, the event contract and truth consistency.

mod common;

use std::collections::{HashMap, HashSet};

use chrono::DateTime;
use common::Scratch;
use idlink_sim::{Scenario, Truth};
use serde_json::Value;

fn small(seed: u64) -> Scenario {
    Scenario {
        people: 500,
        days: 5,
        seed,
        ..Scenario::default()
    }
}

fn ts_ms(v: &Value) -> i64 {
    let s = v.get("ts").and_then(Value::as_str).expect("ts is a string");
    assert_eq!(s.len(), 24, "ts {s} has milliseconds and Z");
    assert!(s.ends_with('Z'), "ts {s} is UTC");
    DateTime::parse_from_rfc3339(s)
        .expect("ts parses")
        .timestamp_millis()
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

#[test]
fn same_seed_gives_identical_bytes_and_other_seeds_differ() {
    let a = Scratch::new("det-a");
    let b = Scratch::new("det-b");
    let c = Scratch::new("det-c");
    let s = Scenario {
        people: 80,
        days: 3,
        seed: 42,
        ..Scenario::default()
    };
    let sa = s.write(a.dir()).expect("write a");
    let sb = s.write(b.dir()).expect("write b");
    assert_eq!(sa, sb);
    for f in ["events.jsonl", "truth.json"] {
        let x = std::fs::read(a.path(f)).expect("read");
        let y = std::fs::read(b.path(f)).expect("read");
        assert!(x == y, "{f} differs between two runs with the same seed");
    }
    Scenario { seed: 43, ..s }.write(c.dir()).expect("write c");
    let x = std::fs::read(a.path("events.jsonl")).expect("read");
    let z = std::fs::read(c.path("events.jsonl")).expect("read");
    assert!(x != z, "a different seed should give different events");
}

/// Synchronized households: deterministic, different from independent
/// schedules, recorded in the truth, and a percentage.
#[test]
fn household_sync_moves_home_sessions_and_is_recorded() {
    let (a, b, c) = (
        Scratch::new("sync-a"),
        Scratch::new("sync-b"),
        Scratch::new("sync-c"),
    );
    let synced = Scenario {
        household_sync_percent: 100,
        ..small(5)
    };
    synced.write(a.dir()).expect("write a");
    synced.write(b.dir()).expect("write b");
    small(5).write(c.dir()).expect("write c");
    let read = |d: &Scratch, f: &str| std::fs::read(d.path(f)).expect("read");
    assert!(read(&a, "events.jsonl") == read(&b, "events.jsonl"));
    assert!(read(&a, "events.jsonl") != read(&c, "events.jsonl"));
    let truth = |d: &Scratch| -> Value {
        serde_json::from_slice(&read(d, "truth.json")).expect("truth parses")
    };
    assert_eq!(truth(&a)["scenario"]["household_sync_percent"], 100);
    // Independent schedules keep the field out, so their bytes never moved.
    assert!(
        truth(&c)["scenario"]
            .get("household_sync_percent")
            .is_none()
    );
    let over = Scenario {
        household_sync_percent: 101,
        ..small(5)
    };
    assert!(over.write(a.dir()).is_err());
}

/// Phones with a browser id of their own: every such id belongs to its
/// phone's owners, is never signed in, is seen with one phone platform,
/// takes over part of the phone's activity without changing it, and only
/// exists when asked for.
#[test]
fn phone_browsers_are_the_phones_second_id() {
    let (a, c) = (Scratch::new("browsers-a"), Scratch::new("browsers-c"));
    Scenario {
        phone_browser_percent: 100,
        ..small(6)
    }
    .write(a.dir())
    .expect("write a");
    small(6).write(c.dir()).expect("write c");
    let truth = |d: &Scratch| -> Value {
        serde_json::from_slice(&std::fs::read(d.path("truth.json")).expect("read"))
            .expect("truth parses")
    };
    let browsers = |t: &Value| -> HashSet<String> {
        t["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .filter(|d| str_field(d, "profile").is_some_and(|p| p.ends_with("+phone-browser")))
            .map(|d| {
                assert_eq!(d["signed_in"].as_array().map(Vec::len), Some(0));
                str_field(d, "device_id").expect("id").to_string()
            })
            .collect()
    };
    let (ta, tc) = (truth(&a), truth(&c));
    assert_eq!(ta["scenario"]["phone_browser_percent"], 100);
    assert!(tc["scenario"].get("phone_browser_percent").is_none());
    assert!(browsers(&tc).is_empty());
    let ids = browsers(&ta);
    assert!(ids.len() > 20, "{} browser ids", ids.len());
    // Per id: the platforms it is seen with.
    let mut platforms: HashMap<String, HashSet<&str>> = HashMap::new();
    let mut seen = 0;
    let events = std::fs::read_to_string(a.path("events.jsonl")).expect("read");
    for line in events.lines() {
        let v: Value = serde_json::from_str(line).expect("event parses");
        let Some(d) = str_field(&v, "device_id").filter(|d| ids.contains(*d)) else {
            continue;
        };
        if v.get("ip").is_none() {
            // A privacy request naming the id.
            continue;
        }
        seen += 1;
        assert!(
            v.get("account_id").is_none(),
            "a phone's browser never signs in"
        );
        assert_ne!(
            str_field(&v, "source"),
            Some("app"),
            "a browser, not the app"
        );
        let ua = str_field(&v, "user_agent").expect("user agent");
        let platform = if ua.contains("iPhone") {
            "ios"
        } else if ua.contains("Android") {
            "android"
        } else {
            "other"
        };
        platforms.entry(d.to_string()).or_default().insert(platform);
    }
    assert!(seen > ids.len(), "browser ids are used");
    // The same activity as without browsers: some of it under other ids.
    let activity = |d: &Scratch| {
        let text = std::fs::read_to_string(d.path("events.jsonl")).expect("read");
        let mut times: Vec<(String, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("event parses"))
            .filter(|v| v.get("ip").is_some())
            .map(|v| {
                (
                    ts_ms(&v).to_string(),
                    str_field(&v, "ip").unwrap_or("").to_string(),
                )
            })
            .collect();
        times.sort();
        times
    };
    assert!(
        activity(&a) == activity(&c),
        "browsers change who, not when or where"
    );
    for (d, p) in &platforms {
        assert!(p.len() == 1 && !p.contains("other"), "{d} is seen as {p:?}");
    }
    let over = Scenario {
        phone_browser_percent: 101,
        ..small(6)
    };
    assert!(over.write(a.dir()).is_err());
}

#[test]
fn rejects_empty_scenarios() {
    let dir = Scratch::new("empty");
    assert!(
        Scenario {
            people: 0,
            ..small(1)
        }
        .write(dir.dir())
        .is_err()
    );
    assert!(
        Scenario {
            days: 0,
            ..small(1)
        }
        .write(dir.dir())
        .is_err()
    );
}

#[test]
fn events_follow_the_contract_and_truth_is_consistent() {
    let dir = Scratch::new("contract");
    let stats = small(7).write(dir.dir()).expect("write scenario");
    let text = std::fs::read_to_string(dir.path("events.jsonl")).expect("read events");
    let truth = Truth::read(&dir.path("truth.json")).expect("read truth");

    let start = DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
        .expect("start")
        .timestamp_millis();
    let end = start + 5 * 86_400_000;
    let activity = ["page_view", "widget_view", "app_open", "ad_impression"];
    let mut lines = 0u64;
    let mut privacy = 0u64;
    let mut event_ids = HashSet::new();
    let mut max_activity_ts = start;
    let mut worst_disorder = 0i64;
    let mut late_privacy = 0;
    let mut seen_devices: HashMap<String, Vec<(i64, Option<String>)>> = HashMap::new();
    let mut account_events: HashMap<String, Vec<i64>> = HashMap::new();
    let mut erase_ts: HashMap<String, i64> = HashMap::new();
    let (mut v4, mut v6) = (0, 0);
    let mut sources = HashSet::new();
    for line in text.lines() {
        lines += 1;
        let v: Value = serde_json::from_str(line).expect("every line is JSON");
        let ts = ts_ms(&v);
        assert!((start..end).contains(&ts), "ts inside the scenario: {line}");
        let kind = str_field(&v, "kind").expect("kind");
        if let Some(id) = str_field(&v, "event_id") {
            assert!(event_ids.insert(id.to_string()), "duplicate event_id {id}");
        }
        match kind {
            "opt_out" | "opt_in" | "erase" => {
                privacy += 1;
                if ts < max_activity_ts - 3_600_000 {
                    late_privacy += 1;
                }
                let acct = str_field(&v, "account_id");
                let dev = str_field(&v, "device_id");
                assert!(
                    acct.is_some() != dev.is_some(),
                    "privacy request names one target: {line}"
                );
                assert!(
                    kind == "erase" || acct.is_some(),
                    "opt requests carry account_id: {line}"
                );
                if kind == "erase" {
                    erase_ts.insert(acct.or(dev).unwrap_or_default().to_string(), ts);
                }
            }
            _ => {
                assert!(
                    kind == "login" || kind == "logout" || activity.contains(&kind),
                    "unknown kind {kind}"
                );
                let dev = str_field(&v, "device_id").expect("device_id");
                assert!(
                    (dev.len() == 22
                        && dev
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
                        || (dev.len() == 36 && dev.matches('-').count() == 4),
                    "device id shape: {dev}"
                );
                let ip = str_field(&v, "ip").expect("ip");
                match ip.parse::<std::net::IpAddr>().expect("ip parses") {
                    std::net::IpAddr::V4(_) => v4 += 1,
                    std::net::IpAddr::V6(_) => v6 += 1,
                }
                sources.insert(str_field(&v, "source").expect("source").to_string());
                assert!(
                    str_field(&v, "user_agent").is_some_and(|u| !u.is_empty()),
                    "user_agent"
                );
                let acct = str_field(&v, "account_id").map(str::to_string);
                if kind == "login" || kind == "logout" {
                    assert!(acct.is_some(), "{kind} carries the account: {line}");
                }
                if let Some(a) = &acct {
                    account_events.entry(a.clone()).or_default().push(ts);
                }
                seen_devices
                    .entry(dev.to_string())
                    .or_default()
                    .push((ts, acct));
                worst_disorder = worst_disorder.max(max_activity_ts - ts);
                max_activity_ts = max_activity_ts.max(ts);
            }
        }
    }
    assert_eq!(lines, stats.events);
    assert_eq!(privacy, stats.privacy_requests);
    assert!(privacy > 0, "a 500-person scenario has privacy requests");
    assert!(late_privacy > 0, "some privacy requests are written late");
    assert!(worst_disorder > 0, "the stream is slightly out of order");
    assert!(
        worst_disorder <= 5 * 60_000,
        "disorder stays within five minutes: {worst_disorder} ms"
    );
    assert!(v4 > 0 && v6 > 0, "both address families appear");
    for s in ["web", "app", "partner", "ads"] {
        assert!(sources.contains(s), "source {s} appears");
    }

    // Truth: sorted, consistent with the events.
    assert_eq!(truth.devices.len() as u64, stats.devices);
    assert!(
        truth
            .devices
            .windows(2)
            .all(|w| w[0].device_id < w[1].device_id),
        "devices sorted"
    );
    for list in [
        &truth.opted_out,
        &truth.erased_accounts,
        &truth.erased_devices,
    ] {
        assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "lists sorted and unique"
        );
    }
    let mut bots = 0;
    for d in &truth.devices {
        assert!(d.owners.windows(2).all(|w| w[0] < w[1]));
        assert!(d.signed_in.windows(2).all(|w| w[0] < w[1]));
        for a in &d.signed_in {
            assert!(
                d.owners.contains(a),
                "{}: signed_in {a} is an owner",
                d.device_id
            );
        }
        let events = seen_devices
            .get(&d.device_id)
            .expect("every truth device appears in events");
        let mut signed: Vec<String> = events.iter().filter_map(|(_, a)| a.clone()).collect();
        signed.sort();
        signed.dedup();
        assert_eq!(
            signed, d.signed_in,
            "signed_in of {} matches the events",
            d.device_id
        );
        if d.bot {
            bots += 1;
            assert!(d.owners.is_empty() && d.signed_in.is_empty());
        }
        assert!(!d.profile.is_empty());
    }
    assert!(bots > 0, "there are bots");
    assert_eq!(
        seen_devices.len(),
        truth.devices.len(),
        "every event device is in truth"
    );
    assert!(
        truth.devices.iter().any(|d| d.signed_in.len() > 1),
        "some shared device has several sign-ins"
    );
    assert!(
        truth
            .devices
            .iter()
            .any(|d| d.profile.starts_with("household-nonsigner"))
    );
    assert!(
        truth
            .devices
            .iter()
            .any(|d| d.profile.starts_with("owner-unsigned"))
    );

    // Erased ids are silent after their erase time.
    for id in &truth.erased_devices {
        let at = erase_ts
            .get(id)
            .copied()
            .expect("erased device has an erase request");
        if let Some(evs) = seen_devices.get(id) {
            assert!(
                evs.iter().all(|(t, _)| *t < at),
                "erased device {id} has events after its erase"
            );
        }
    }
    for a in &truth.erased_accounts {
        let at = erase_ts
            .get(a)
            .copied()
            .expect("erased account has an erase request");
        if let Some(ts) = account_events.get(a) {
            assert!(
                ts.iter().all(|t| *t < at),
                "erased account {a} has events after its erase"
            );
        }
    }
}

#[test]
fn stats_display_is_readable() {
    let s = idlink_sim::SimStats {
        events: 10,
        devices: 3,
        accounts: 2,
        privacy_requests: 1,
    };
    assert_eq!(
        s.to_string(),
        "events: 10, devices: 3, accounts: 2, privacy requests: 1"
    );
    let json = serde_json::to_value(s).expect("serialize");
    assert_eq!(json["privacy_requests"], 1);
}
