//! Property tests of the core: the engine's promises that hold for every
//! input, checked on small random event sets, and the decoder's promise
//! never to panic and always to explain a rejection.
//!
//! Scenarios are built from "households": each of four public addresses
//! has a signing device (`dev0`..`dev3`, signed in to `acct0`..`acct3`)
//! and an anonymous one (`dev4`..`dev7`), seen together in short sessions
//! over a few days, mixed with strays, shared, private and carrier-NAT
//! addresses and occasional privacy requests. The engine properties run
//! under the default config and under a lenient one (lower link
//! thresholds), so inferred links occur often enough for the link
//! properties to mean something whatever the defaults are tuned to (see
//! `generator_produces_inferred_links`). A second generator drives the
//! whole API (several sources, idle sources, flush, snapshot/restore,
//! decades-long gaps) under edge configs.
//!
//! Case counts are kept small (the test profile is opt-level 1 and the
//! machine has two cores); raise them locally with `PROPTEST_CASES=3000`.

use idlink_core::engine::PrivacyAck;
use idlink_core::engine::staged::{Pipeline, Stage};
use idlink_core::{
    AccountId, AddressClassifier, Config, Decoder, DeviceId, Engine, EngineStats, Event, EventKind,
    Millis, Platform,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

/// 2026-01-05T00:00:00Z.
const BASE: i64 = 1_767_571_200_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// The validating clock for decoder tests: 2030-01-01T00:00:00Z.
const NOW: Millis = Millis(1_893_456_000_000);
/// 2000-01-01T00:00:00Z, the default `input.min_ts`.
const MIN_TS: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z.
const MAX_SANE_TS: i64 = 4_102_444_800_000;

/// `n` cases, or `PROPTEST_CASES` if set.
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        max_shrink_iters: 4_000,
        // Integration tests have no lib.rs to put regressions beside; a
        // failure prints its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn dev(i: usize) -> DeviceId {
    DeviceId::from(id_text("dev", i).as_str())
}

fn acct(i: usize) -> AccountId {
    AccountId::from(id_text("acct", i).as_str())
}

/// Id number `i`'s text: short text, or a UUID in lower or in upper case
/// (which the engine keeps packed) for one in four each, so every property
/// also runs through packed ids, their order among texts and their text
/// coming back out.
/// (A device's and an account's UUIDs differ in their fourth group: the
/// erase properties look for an erased id's text anywhere in the output.)
fn id_text(prefix: &str, i: usize) -> String {
    let group = if prefix == "dev" { 0x8000 } else { 0x9000 };
    match i % 4 {
        1 => format!("{i:08x}-0000-4000-{group:04x}-{:012x}", i * 7919 + 0xabc),
        3 => format!("{i:08X}-0000-4000-{group:04X}-{:012X}", i * 7919 + 0xabc),
        _ => format!("{prefix}{i}"),
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("test address"))
}

/// The default config with lower link thresholds, so that inferred links
/// are common in small scenarios whatever the defaults are tuned to.
fn lenient() -> Config {
    let mut c = Config::default();
    c.linking.min_score = 0.3;
    c.linking.min_days = 2;
    c.validate().expect("lenient config is valid");
    c
}

/// The default config, or [`lenient`].
fn config_for(lenient_thresholds: bool) -> Config {
    if lenient_thresholds {
        lenient()
    } else {
        Config::default()
    }
}

fn lateness_ms(config: &Config) -> i64 {
    config.time.allowed_lateness_minutes * MINUTE
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// The address of a session: the household's own (household 3 is on IPv6,
/// rotating the interface id inside one /64), a shared public one, a
/// private one or carrier-grade NAT.
fn session_ip(household: usize, mode: u8, host: u8) -> Option<IpAddr> {
    match mode {
        0..=6 if household == 3 => ip(&format!("2a02:1:2:3::{:x}", u16::from(host % 4) + 1)),
        0..=6 => ip(&format!("81.2.3.{}", household + 1)),
        7 => ip("81.2.4.9"),
        8 => ip(["10.0.0.1", "192.168.1.5"][usize::from(host % 2)]),
        _ => ip("100.64.1.1"),
    }
}

/// One sighting inside a session.
#[derive(Clone, Debug)]
struct SightingSpec {
    /// Whether the device is one of the session's household.
    member: bool,
    /// Which of the two (member) or of all eight (stray) devices.
    device: usize,
    /// Whether a signing device is signed in this time.
    signed: bool,
    /// A signing device signed in to a random account instead of its own.
    stray_account: Option<usize>,
    /// Picks login / page_view / logout.
    kind: u8,
    /// Seconds after the session start.
    offset_s: i64,
}

fn sighting_spec() -> impl Strategy<Value = SightingSpec> {
    (
        prop::bool::weighted(0.9),
        0usize..8,
        prop::bool::weighted(0.8),
        prop::option::weighted(0.03, 0usize..4),
        0u8..10,
        prop_oneof![3 => 0i64..90, 1 => 0i64..10 * 60],
    )
        .prop_map(
            |(member, device, signed, stray_account, kind, offset_s)| SightingSpec {
                member,
                device,
                signed,
                stray_account,
                kind,
                offset_s,
            },
        )
}

/// A device event from its parts; signing devices (0..4) sign in to their
/// own account unless told otherwise, anonymous ones (4..8) never do.
fn sighting(
    ts: i64,
    d: usize,
    signed: bool,
    stray: Option<usize>,
    kind: u8,
    addr: Option<IpAddr>,
) -> Event {
    let account = (d < 4 && signed).then(|| acct(stray.unwrap_or(d)));
    let kind = match (account.is_some(), kind) {
        (true, 0..=4) => EventKind::Login,
        (_, 0..=7) => EventKind::Activity,
        _ => EventKind::Logout,
    };
    Event {
        ts: Millis(ts),
        kind,
        device: Some(dev(d)),
        account,
        ip: addr,
        // Fixed per device, as a device's user agent is: computers and
        // phones of both platforms, so that some anonymous phones clash
        // with some accounts' phones and others do not.
        platform: [Platform::Ios, Platform::Unknown, Platform::Android][d % 4 % 3],
    }
}

/// A session: one household on one address at one time of one day.
fn session(days: i64) -> impl Strategy<Value = Vec<Event>> {
    (
        0usize..4,
        0u8..10,
        0..days,
        0i64..24 * 60,
        prop::collection::vec((sighting_spec(), any::<u8>()), 1..8),
    )
        .prop_map(|(h, mode, day, minute, specs)| {
            let start = BASE + day * DAY + minute * MINUTE;
            specs
                .into_iter()
                .map(|(s, host)| {
                    let d = if s.member {
                        h + 4 * (s.device % 2)
                    } else {
                        s.device
                    };
                    sighting(
                        start + s.offset_s * 1000,
                        d,
                        s.signed,
                        s.stray_account,
                        s.kind,
                        session_ip(h, mode, host),
                    )
                })
                .collect()
        })
}

/// A privacy request at a random time.
fn privacy(days: i64) -> impl Strategy<Value = Event> {
    (0u8..4, 0usize..8, 0..days * DAY).prop_map(|(k, who, t)| {
        let ts = Millis(BASE + t);
        match k {
            0 => Event {
                ts,
                kind: EventKind::OptOut,
                device: None,
                account: Some(acct(who % 4)),
                ip: None,
                platform: Platform::Unknown,
            },
            1 => Event {
                ts,
                kind: EventKind::OptIn,
                device: None,
                account: Some(acct(who % 4)),
                ip: None,
                platform: Platform::Unknown,
            },
            2 => Event {
                ts,
                kind: EventKind::Erase,
                device: None,
                account: Some(acct(who % 4)),
                ip: None,
                platform: Platform::Unknown,
            },
            _ => Event {
                ts,
                kind: EventKind::Erase,
                device: Some(dev(who)),
                account: None,
                ip: None,
                platform: Platform::Unknown,
            },
        }
    })
}

/// A stray sighting anywhere in the period.
fn stray(days: i64) -> impl Strategy<Value = Event> {
    (
        0..days * DAY,
        0usize..8,
        any::<bool>(),
        prop::option::weighted(0.2, 0usize..4),
        0u8..10,
        0u8..10,
        any::<u8>(),
    )
        .prop_map(|(t, d, signed, stray, kind, mode, host)| {
            sighting(
                BASE + t,
                d,
                signed,
                stray,
                kind,
                session_ip(usize::from(host % 4), mode, host),
            )
        })
}

/// Sorts by `ts` (stable, so equal-ts events keep generation order).
fn by_ts(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by_key(|e| e.ts);
    events
}

/// Days a scenario spans.
const DAYS: i64 = 6;

/// A scenario over [`DAYS`] days, sorted by `ts`. With `with_privacy`, up to
/// three privacy requests are mixed in.
fn scenario(with_privacy: bool) -> impl Strategy<Value = Vec<Event>> {
    let requests = if with_privacy { 0..4usize } else { 0..1usize };
    (
        prop::collection::vec(session(DAYS), 2..28),
        prop::collection::vec(stray(DAYS), 0..6),
        prop::collection::vec(privacy(DAYS), requests),
    )
        .prop_map(move |(sessions, strays, requests)| {
            let mut all: Vec<Event> = sessions.into_iter().flatten().collect();
            all.extend(strays);
            if with_privacy {
                all.extend(requests);
            }
            by_ts(all)
        })
}

/// A scenario and an arrival order for it in which no event is more than
/// the allowed lateness behind the greatest `ts` that arrived before it:
/// each event's arrival key is `ts + jitter` with `jitter < lateness`, so
/// an event that arrives before another is at most `lateness - 1 ms` newer.
fn scenario_with_disorder(lateness: i64) -> impl Strategy<Value = (Vec<Event>, Vec<usize>)> {
    scenario(true).prop_flat_map(move |events| {
        let n = events.len();
        let jitter = prop_oneof![4 => 0..lateness, 1 => Just(0), 1 => Just(lateness - 1)];
        (
            Just(events),
            prop::collection::vec((jitter, any::<u32>()), n),
        )
            .prop_map(|(events, jitter)| {
                let mut order: Vec<usize> = (0..events.len()).collect();
                order.sort_by_key(|&i| (events[i].ts.0 + jitter[i].0, jitter[i].1));
                (events, order)
            })
    })
}

// ---------------------------------------------------------------------------
// Running the engine and reading its output
// ---------------------------------------------------------------------------

/// Everything an engine run publishes.
#[derive(Debug, Default, PartialEq)]
struct Output {
    devices: Vec<String>,
    accounts: Vec<String>,
    /// Acks without the `removed` counts (which depend on what was still
    /// buffered when the request was applied).
    acks: Vec<AckKey>,
    /// Full acks, serialised, for the clear-text check.
    ack_json: Vec<String>,
    stats: EngineStats,
}

fn classifier(config: &Config) -> AddressClassifier {
    AddressClassifier::new(config.addresses.ipv6_prefix_len, &[])
}

fn engine(config: &Config) -> Engine {
    Engine::new(config, classifier(config))
}

/// An ack without its `removed` counts.
type AckKey = (Millis, &'static str, &'static str, String);

fn ack_key(a: &PrivacyAck) -> AckKey {
    (a.ts, a.kind, a.subject, a.id_hash.clone())
}

/// What a bulk writer (`Engine::write_device_lines` or
/// `write_account_lines`) hands its sink, as lines, checked against the
/// count it returns.
fn written(
    write: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), ()>) -> Result<u64, ()>,
) -> Vec<String> {
    let mut bytes = Vec::new();
    let n = write(&mut |chunk| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })
    .expect("writing to memory cannot fail");
    let text = String::from_utf8(bytes).expect("lines are UTF-8");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "every line ends in a newline"
    );
    assert_eq!(lines.len() as u64, n, "the count is the lines'");
    lines
}

fn collect(mut e: Engine) -> Output {
    e.finish();
    let acks: Vec<PrivacyAck> = e.take_privacy_acks();
    let devices: Vec<String> = e.device_lines().collect();
    let accounts: Vec<String> = e.account_lines().collect();
    // Replay's files come from the bulk writers: the same lines.
    assert_eq!(written(|sink| e.write_device_lines(sink)), devices);
    assert_eq!(written(|sink| e.write_account_lines(sink)), accounts);
    Output {
        devices,
        accounts,
        acks: acks.iter().map(ack_key).collect(),
        ack_json: acks
            .iter()
            .map(|a| serde_json::to_string(a).expect("ack serialises"))
            .collect(),
        stats: e.stats().clone(),
    }
}

/// Ingests `events` in the given order from source 0 and finishes.
fn run_in_order(config: &Config, events: &[Event], order: &[usize]) -> Output {
    let mut e = engine(config);
    for &i in order {
        e.ingest(0, events[i].clone());
    }
    collect(e)
}

fn run(config: &Config, events: &[Event]) -> Output {
    let order: Vec<usize> = (0..events.len()).collect();
    run_in_order(config, events, &order)
}

/// The largest lag behind the greatest `ts` already ingested, over an
/// arrival order.
fn max_lag(events: &[Event], order: &[usize]) -> i64 {
    let mut max_ts = i64::MIN;
    let mut lag = 0;
    for &i in order {
        let ts = events[i].ts.0;
        max_ts = max_ts.max(ts);
        lag = lag.max(max_ts - ts);
    }
    lag
}

/// One link as published, from either view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LinkRow {
    device: String,
    account: String,
    link_type: String,
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"))
}

fn str_field<'a>(v: &'a Value, name: &str, line: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` is not a string in {line}"))
}

fn confidence(v: &Value, line: &str) -> f64 {
    let c = v["confidence"]
        .as_f64()
        .unwrap_or_else(|| panic!("`confidence` is not a number in {line}"));
    assert!(
        (0.0..=1.0).contains(&c),
        "confidence {c} outside [0, 1] in {line}"
    );
    c
}

/// Checks the per-line invariants that hold under any config and returns
/// the links of both views.
fn check_lines(out: &Output) -> (BTreeSet<LinkRow>, BTreeSet<LinkRow>) {
    let mut from_devices = BTreeSet::new();
    let mut previous: Option<String> = None;
    for line in &out.devices {
        let v = parse(line);
        let d = str_field(&v, "device_id", line).to_owned();
        assert!(
            previous.as_ref().is_none_or(|p| *p < d),
            "device lines not sorted by id / duplicated: {d}"
        );
        previous = Some(d.clone());
        let links = v["links"]
            .as_array()
            .unwrap_or_else(|| panic!("no links array: {line}"));
        assert!(!links.is_empty(), "a device line without links: {line}");
        let mut seen = BTreeSet::new();
        let mut inferred = 0;
        for l in links {
            let a = str_field(l, "account_id", line).to_owned();
            assert!(
                seen.insert(a.clone()),
                "account {a} linked twice on one device: {line}"
            );
            let t = str_field(l, "link_type", line).to_owned();
            let c = confidence(l, line);
            match t.as_str() {
                "login" => assert_eq!(c, 1.0, "login link with confidence {c}: {line}"),
                "inferred" => inferred += 1,
                other => panic!("unknown link_type {other}: {line}"),
            }
            from_devices.insert(LinkRow {
                device: d.clone(),
                account: a,
                link_type: t,
            });
        }
        assert!(
            inferred <= 1,
            "{inferred} inferred links on one device: {line}"
        );
    }
    let mut from_accounts = BTreeSet::new();
    let mut previous: Option<String> = None;
    for line in &out.accounts {
        let v = parse(line);
        let a = str_field(&v, "account_id", line).to_owned();
        assert!(
            previous.as_ref().is_none_or(|p| *p < a),
            "account lines not sorted by id / duplicated: {a}"
        );
        previous = Some(a.clone());
        let devices = v["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("no devices array: {line}"));
        assert!(
            !devices.is_empty(),
            "an account line without devices: {line}"
        );
        for x in devices {
            confidence(x, line);
            from_accounts.insert(LinkRow {
                device: str_field(x, "device_id", line).to_owned(),
                account: a.clone(),
                link_type: str_field(x, "link_type", line).to_owned(),
            });
        }
    }
    (from_devices, from_accounts)
}

/// An erase of one of the ids scenarios use (`dev(0)`..`dev(7)` for
/// `target` below 8, else `acct(0)`..`acct(3)`), `after` ms after the
/// last event that names it: the id, and the request.
fn erase_after(events: &[Event], target: usize, after: i64) -> (String, Event) {
    let (id, erase_device) = if target < 8 {
        (dev(target).to_string(), true)
    } else {
        (acct(target - 8).to_string(), false)
    };
    let mentions = |e: &Event| {
        e.device.as_ref().is_some_and(|d| *d.text() == *id)
            || e.account.as_ref().is_some_and(|a| *a.text() == *id)
    };
    let last = events
        .iter()
        .filter(|e| mentions(e))
        .map(|e| e.ts.0)
        .max()
        .unwrap_or(BASE);
    let request = Event {
        ts: Millis(last + after),
        kind: EventKind::Erase,
        device: erase_device.then(|| DeviceId::from(id.as_str())),
        account: (!erase_device).then(|| AccountId::from(id.as_str())),
        ip: None,
        platform: Platform::Unknown,
    };
    (id, request)
}

/// Input partitions of the partitioned properties: device events by
/// device over the first three, privacy requests on the fourth.
const PARTITIONS: usize = 4;

/// The partition `idlink run` would read `e` from.
fn partition_of(e: &Event) -> usize {
    match &e.device {
        _ if e.kind.is_privacy() => PARTITIONS - 1,
        Some(d) => d.text().bytes().map(usize::from).sum::<usize>() % (PARTITIONS - 1),
        None => PARTITIONS - 1,
    }
}

/// `events` split over the partitions, each in its order.
fn by_partition(events: &[Event]) -> Vec<VecDeque<&Event>> {
    let mut queues = vec![VecDeque::new(); PARTITIONS];
    for e in events {
        queues[partition_of(e)].push_back(e);
    }
    queues
}

/// Drains `queues` into `e`, each partition in order, taking the next
/// event from the partition `picks[k]` names (the next non-empty one
/// after it). With `idle_when_drained`, a partition with nothing (left)
/// to read is idle, as in the service: it does not hold the watermark
/// back.
fn interleave(
    e: &mut Engine,
    queues: &mut [VecDeque<&Event>],
    picks: &[usize],
    k: &mut usize,
    idle_when_drained: bool,
) {
    let idle = |e: &mut Engine, queues: &[VecDeque<&Event>]| {
        for (p, q) in queues.iter().enumerate() {
            if idle_when_drained && q.is_empty() {
                e.set_idle(p as u32, true);
            }
        }
    };
    idle(e, queues);
    while queues.iter().any(|q| !q.is_empty()) {
        let mut p = picks[*k % picks.len()] % PARTITIONS;
        *k += 1;
        while queues[p].is_empty() {
            p = (p + 1) % PARTITIONS;
        }
        if let Some(ev) = queues[p].pop_front() {
            e.ingest(p as u32, ev.clone());
        }
        idle(e, queues);
    }
}

/// Snapshots `e` and replaces it with an engine restored from the bytes,
/// publishing incrementally as before: a crash or a handover.
fn restart(e: &mut Engine, config: &Config) {
    let bytes = e.snapshot();
    *e = Engine::restore(config, classifier(config), &bytes).expect("a snapshot restores");
    e.track_changes();
}

/// Every string anywhere in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(xs) => xs.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                strings(x, out);
            }
        }
        _ => {}
    }
}

fn ids_in_events(events: &[Event]) -> (BTreeSet<String>, BTreeSet<String>) {
    let devices = events
        .iter()
        .filter_map(|e| e.device.as_ref())
        .map(DeviceId::to_string)
        .collect();
    let accounts = events
        .iter()
        .filter_map(|e| e.account.as_ref())
        .map(AccountId::to_string)
        .collect();
    (devices, accounts)
}

fn inferred_count(out: &Output) -> usize {
    out.devices
        .iter()
        .map(|l| l.matches(r#""link_type":"inferred""#).count())
        .sum()
}

// ---------------------------------------------------------------------------
// Engine properties
// ---------------------------------------------------------------------------

/// The generator is useful only if inferred links actually occur; this
/// keeps the link properties below from passing vacuously.
#[test]
fn household_is_inferred() {
    let mut events = Vec::new();
    for day in 0..4 {
        let t = BASE + day * DAY + 19 * 60 * MINUTE;
        events.push(sighting(t, 0, true, None, 0, ip("81.2.3.1")));
        events.push(sighting(t + 30_000, 4, false, None, 5, ip("81.2.3.1")));
    }
    let out = run(&lenient(), &events);
    assert_eq!(inferred_count(&out), 1, "{out:#?}");
}

/// The generator is useful only if inferred links actually occur; this
/// keeps the link properties below from passing vacuously. The engine
/// properties run under both the default and the [`lenient`] config.
#[test]
fn generator_produces_inferred_links() {
    let mut runner = TestRunner::deterministic();
    let strategy = scenario(false);
    let n = 64;
    let (mut default_inferred, mut lenient_inferred, mut with_login) = (0, 0, 0);
    for _ in 0..n {
        let events = strategy.new_tree(&mut runner).expect("generates").current();
        let out = run(&Config::default(), &events);
        default_inferred += usize::from(inferred_count(&out) > 0);
        with_login += usize::from(
            out.devices
                .iter()
                .any(|l| l.contains(r#""link_type":"login""#)),
        );
        lenient_inferred += usize::from(inferred_count(&run(&lenient(), &events)) > 0);
    }
    eprintln!(
        "scenarios with an inferred link: {default_inferred}/{n} (default config), \
         {lenient_inferred}/{n} (lenient); with a sign-in link: {with_login}/{n}"
    );
    assert!(
        with_login > n / 2,
        "only {with_login}/{n} scenarios have a sign-in link"
    );
    assert!(
        lenient_inferred >= n / 4,
        "only {lenient_inferred}/{n} scenarios have an inferred link"
    );
}

proptest! {
    #![proptest_config(cases(64))]

    /// Any arrival order within the allowed lateness gives the same
    /// published output as the sorted order.
    #[test]
    fn order_within_lateness_does_not_matter(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let lateness = lateness_ms(&config);
        prop_assert!(max_lag(&events, &order) < lateness, "the generator broke the lateness bound");
        let sorted = run(&config, &events);
        let shuffled = run_in_order(&config, &events, &order);
        prop_assert_eq!(shuffled.stats.late_events, 0);
        prop_assert_eq!(shuffled.stats.late_privacy_requests, 0);
        prop_assert_eq!(&sorted.devices, &shuffled.devices);
        prop_assert_eq!(&sorted.accounts, &shuffled.accounts);
        prop_assert_eq!(&sorted.acks, &shuffled.acks);
        // Everything but the count of events dropped for an erase marker
        // (an event purged from the buffer is not counted there) is equal.
        let mut a = sorted.stats.clone();
        let mut b = shuffled.stats.clone();
        a.erased_events = 0;
        b.erased_events = 0;
        prop_assert_eq!(a, b);
    }

    /// The same input gives the same bytes, twice over.
    #[test]
    fn same_input_same_bytes(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let first = run_in_order(&config, &events, &order);
        let second = run_in_order(&config, &events, &order);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(first.ack_json, second.ack_json);
    }

    /// After an erase whose `ts` follows every event naming the id, the id
    /// is in no published line and no acknowledgement shows it in clear,
    /// whether the erase arrives in order or any time later or earlier.
    #[test]
    fn erase_leaves_no_trace(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        target in 0usize..12,
        after in prop_oneof![Just(0i64), 1i64..DAY, Just(3 * DAY)],
        arrival in any::<prop::sample::Index>(),
        anywhere in any::<bool>(),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let (id, request) = erase_after(&events, target, after);
        // Arrive anywhere that keeps the whole order within lateness.
        let mut all = events.clone();
        all.push(request.clone());
        let lateness = lateness_ms(&config);
        let k = all.len() - 1;
        let mut ord = order.clone();
        let pos = arrival.index(ord.len() + 1);
        ord.insert(pos, k);
        // Privacy requests are never late, so with `anywhere` the erase
        // may also arrive long after its `ts` (or long before it).
        if !anywhere && max_lag(&all, &ord) >= lateness {
            ord.retain(|&i| i != k);
            let p = ord.iter().position(|&i| all[i].ts > request.ts).unwrap_or(ord.len());
            ord.insert(p, k);
            prop_assert!(max_lag(&all, &ord) < lateness);
        }
        let out = run_in_order(&config, &all, &ord);
        let quoted = format!("\"{id}\"");
        for line in out.devices.iter().chain(&out.accounts) {
            let mut found = Vec::new();
            strings(&parse(line), &mut found);
            prop_assert!(!found.contains(&id), "erased {} is still in {}", id, line);
            prop_assert!(!line.contains(&quoted), "erased {} is still in {}", id, line);
        }
        prop_assert!(out.acks.iter().any(|a| a.1 == "erase" && a.0 == request.ts), "no ack for the erase");
        for ack in &out.ack_json {
            prop_assert!(!ack.contains(&id), "ack shows {} in clear: {}", id, ack);
        }
    }

    /// The precision guards of the default config, and the two published
    /// views agreeing with each other.
    #[test]
    fn links_respect_the_guards(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        prop_assert!(!config.linking.infer_for_signed_in_devices);
        let out = run_in_order(&config, &events, &order);
        let (from_devices, from_accounts) = check_lines(&out);
        let (known_devices, known_accounts) = ids_in_events(&events);
        let mut per_device: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for l in &from_devices {
            prop_assert!(known_accounts.contains(&l.account), "link to unknown account {:?}", l);
            prop_assert!(known_devices.contains(&l.device), "link of unknown device {:?}", l);
            let c = per_device.entry(&l.device).or_default();
            if l.link_type == "login" { c.0 += 1 } else { c.1 += 1 }
        }
        for (d, (logins, inferred)) in per_device {
            prop_assert!(inferred <= 1, "{} has {} inferred links", d, inferred);
            prop_assert!(logins == 0 || inferred == 0, "{} has a sign-in link and an inferred one", d);
        }
        // An account whose last privacy request is an opt-out has no
        // inferred device.
        for a in &known_accounts {
            let mut state_opted = false;
            let mut reqs: Vec<&Event> = events
                .iter()
                .filter(|e| e.kind.is_privacy() && e.account.as_ref().is_some_and(|x| *x.text() == **a))
                .collect();
            reqs.sort_by_key(|e| (e.ts, e.kind.priority()));
            for r in reqs {
                state_opted = r.kind == EventKind::OptOut;
            }
            if state_opted {
                prop_assert!(
                    !from_devices.iter().any(|l| &l.account == a && l.link_type == "inferred"),
                    "opted-out {} has an inferred device", a
                );
            }
        }
        prop_assert_eq!(from_devices, from_accounts, "device-links and account-devices disagree");
    }

    /// Publishing incrementally (`take_changes` after every few events)
    /// ends with the same records as the full snapshot.
    #[test]
    fn incremental_changes_match_the_snapshot(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        every in 1usize..8,
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let mut e = engine(&config);
        e.track_changes();
        let mut devices: BTreeMap<String, String> = BTreeMap::new();
        let mut accounts: BTreeMap<String, String> = BTreeMap::new();
        let apply = publish;
        for (n, &i) in order.iter().enumerate() {
            e.ingest(0, events[i].clone());
            if n % every == 0 {
                apply(&mut e, &mut devices, &mut accounts);
            }
        }
        e.finish();
        apply(&mut e, &mut devices, &mut accounts);
        let snapshot_devices: Vec<String> = e.device_lines().collect();
        let snapshot_accounts: Vec<String> = e.account_lines().collect();
        prop_assert_eq!(devices.into_values().collect::<Vec<_>>(), snapshot_devices);
        prop_assert_eq!(accounts.into_values().collect::<Vec<_>>(), snapshot_accounts);
    }
}

proptest! {
    #![proptest_config(cases(64))]

    /// Snapshotting at any point and carrying on in an engine restored
    /// from the bytes publishes exactly what the uninterrupted engine does.
    #[test]
    fn snapshot_and_restore_are_invisible(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        cut in any::<prop::sample::Index>(),
        flush_at_cut in prop::bool::weighted(0.25),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let cut = cut.index(order.len() + 1);
        let drive = |restart: bool| {
            let mut e = engine(&config);
            for &i in &order[..cut] {
                e.ingest(0, events[i].clone());
            }
            if flush_at_cut {
                e.flush();
            }
            let early: Vec<AckKey> = e.take_privacy_acks().iter().map(ack_key).collect();
            if restart {
                let bytes = e.snapshot();
                e = Engine::restore(&config, classifier(&config), &bytes)
                    .expect("own snapshot restores");
            }
            for &i in &order[cut..] {
                e.ingest(0, events[i].clone());
            }
            let mut out = collect(e);
            out.acks.splice(0..0, early);
            out
        };
        let straight = drive(false);
        let restarted = drive(true);
        prop_assert_eq!(&straight.devices, &restarted.devices);
        prop_assert_eq!(&straight.accounts, &restarted.accounts);
        prop_assert_eq!(&straight.acks, &restarted.acks);
        prop_assert_eq!(&straight.stats, &restarted.stats);
    }
}

/// Applies `take_changes` to a published view.
fn publish(
    e: &mut Engine,
    devices: &mut BTreeMap<String, String>,
    accounts: &mut BTreeMap<String, String>,
) {
    let c = e.take_changes();
    for (k, v) in c.devices {
        match v {
            Some(v) => devices.insert(k, v),
            None => devices.remove(&k),
        };
    }
    for (k, v) in c.accounts {
        match v {
            Some(v) => accounts.insert(k, v),
            None => accounts.remove(&k),
        };
    }
}

/// Device lines and account lines.
type Graph = (Vec<String>, Vec<String>);

/// Drives `events` (in order) through a change-tracking engine, publishing
/// after each, and returns the published view and the final snapshot.
fn incremental_and_snapshot(events: &[Event]) -> (Graph, Graph) {
    let mut e = engine(&Config::default());
    e.track_changes();
    let (mut devices, mut accounts) = (BTreeMap::new(), BTreeMap::new());
    for ev in events {
        e.ingest(0, ev.clone());
        publish(&mut e, &mut devices, &mut accounts);
    }
    e.finish();
    publish(&mut e, &mut devices, &mut accounts);
    let snapshot = (e.device_lines().collect(), e.account_lines().collect());
    (
        (
            devices.into_values().collect(),
            accounts.into_values().collect(),
        ),
        snapshot,
    )
}

/// Erasing a device empties its account; the day's sweep then frees the
/// account slot, and the account's published line (naming the erased
/// device) must still be retracted.
#[test]
fn erased_device_retracts_its_account_line() {
    let events = [
        // dev0 signs in to acct2; the next event releases it and both
        // lines are published.
        sighting(BASE + 60 * MINUTE, 0, true, Some(2), 0, ip("81.2.3.1")),
        sighting(BASE + 120 * MINUTE, 5, false, None, 5, ip("81.2.3.9")),
        // dev0 is erased.
        Event {
            ts: Millis(BASE + DAY - MINUTE),
            kind: EventKind::Erase,
            device: Some(dev(0)),
            account: None,
            ip: None,
            platform: Platform::Unknown,
        },
        // The erase and the close of day 0 are released by one ingest, so
        // no publish happens between them.
        sighting(BASE + DAY + 5 * MINUTE, 5, false, None, 5, ip("81.2.3.9")),
        sighting(BASE + DAY + 30 * MINUTE, 5, false, None, 5, ip("81.2.3.9")),
    ];
    let (published, snapshot) = incremental_and_snapshot(&events);
    assert_eq!(published, snapshot);
}

/// A sign-in link that expires (`login_link_ttl_days`) in the same sweep
/// that evicts its idle device must be retracted from the incremental
/// output.
///
/// Known core bug, reported and not fixed here: `sweep` frees the device
/// slot with `self.devices.remove(d)` (engine/mod.rs) without recording a
/// tombstone, and `take_changes` skips freed slots, so the device's last
/// `device-links` line stays published. (Accounts are freed through
/// `free_account`, which does record one.)
#[test]
fn expired_login_link_is_retracted() {
    let events = [
        sighting(BASE + 60 * MINUTE, 0, true, None, 0, ip("81.2.3.1")),
        sighting(BASE + 401 * DAY, 5, false, None, 5, ip("81.2.3.9")),
    ];
    let (published, snapshot) = incremental_and_snapshot(&events);
    assert_eq!(published, snapshot);
}

// ---------------------------------------------------------------------------
// Robustness: huge gaps, many sources, odd configs
// ---------------------------------------------------------------------------

/// A valid config with some settings pushed to their edges.
fn edgy_config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(0i64), Just(10), Just(7 * 24 * 60)],
        prop_oneof![Just(1i64), Just(30), Just(24 * 60)],
        (
            1u32..3,
            1i64..3,
            0.01f64..2.0,
            prop_oneof![Just(0.51f64), Just(0.8), Just(1.0)],
        ),
        (2u32..12, 1u32..4, 1u32..600, 1u32..9),
        (any::<bool>(), 1usize..9, 1usize..9, 0usize..4, 1i64..=400),
        prop_oneof![Just(32u8), Just(64), Just(128)],
        (
            prop_oneof![Just(0.0f64), Just(5.0), Just(2000.0)],
            prop_oneof![Just(0.0f64), Just(0.5), Just(1.0)],
        ),
    )
        .prop_map(
            |(
                late,
                window,
                (min_days, horizon, min_score, min_share),
                (bdev, bacc, bev, bbuck),
                (infer, mapd, mdpa, sup, ttl),
                v6,
                (close_gap, coverage),
            )| {
                let mut c = Config::default();
                c.time.allowed_lateness_minutes = late;
                c.linking.window_minutes = window;
                c.linking.evidence_horizon_days = horizon.max(i64::from(min_days));
                c.linking.min_days = min_days;
                c.linking.min_score = min_score;
                c.linking.min_share = min_share;
                c.linking.close_gap_minutes = close_gap;
                c.linking.min_coverage = coverage;
                c.linking.infer_for_signed_in_devices = infer;
                c.linking.max_accounts_per_device = mapd;
                c.linking.max_devices_per_account = mdpa;
                c.linking.max_support = sup;
                c.linking.login_link_ttl_days = ttl;
                c.addresses.max_devices_per_bucket_day = bdev;
                c.addresses.max_accounts_per_bucket_day = bacc;
                c.addresses.ipv6_prefix_len = v6;
                c.bots.max_events_per_day = bev;
                c.bots.max_buckets_per_day = bbuck;
                c.validate().expect("generated config is valid");
                c
            },
        )
}

/// What a driver may do to an engine.
#[derive(Clone, Debug)]
enum Step {
    Ingest(u32, Event),
    AdvanceTo(Millis),
    TakeChanges,
    TakeAcks,
    AddSource(u32),
    RemoveSource(u32),
    SetIdle(u32, bool),
    Flush,
    /// Snapshot and restore (in the restarting run; nothing otherwise).
    Restart,
}

/// Any device event or privacy request in 2000..2100, with gaps from
/// milliseconds to decades, from one of three sources.
fn wild_steps() -> impl Strategy<Value = Vec<Step>> {
    let gap = prop_oneof![
        4 => 0i64..MINUTE,
        3 => 0i64..DAY,
        1 => 0i64..400 * DAY,
        1 => 0i64..30 * 365 * DAY,
        1 => -40 * 365 * DAY..0,
    ];
    let addr = prop_oneof![
        Just("81.2.3.1"),
        Just("81.2.3.2"),
        Just("2a02:1:2:3::1"),
        Just("2a02:1:2:4::1"),
        Just("10.0.0.1"),
        Just("100.64.1.1"),
        Just("0.0.0.0"),
        Just("::"),
        Just("::ffff:81.2.3.1"),
        Just("255.255.255.255"),
    ];
    let step = (
        gap,
        0u8..40,
        0u32..3,
        0usize..8,
        prop::option::of(0usize..4),
        addr,
    );
    prop::collection::vec(step, 1..120).prop_map(|raw| {
        let mut t = BASE;
        raw.into_iter()
            .map(|(gap, op, source, d, a, addr)| {
                t = (t + gap).clamp(MIN_TS, MAX_SANE_TS);
                let ts = Millis(t);
                let event =
                    |kind, device: Option<DeviceId>, account: Option<AccountId>, ip| Event {
                        ts,
                        kind,
                        device,
                        account,
                        ip,
                        platform: Platform::Unknown,
                    };
                match op {
                    0 => Step::AdvanceTo(ts),
                    1 => Step::TakeChanges,
                    2 => Step::TakeAcks,
                    3 => Step::AddSource(source),
                    4 => Step::RemoveSource(source),
                    22 => Step::SetIdle(source, d % 2 == 0),
                    23 => Step::Flush,
                    24 | 25 => Step::Restart,
                    5 => Step::Ingest(
                        source,
                        event(EventKind::OptOut, None, Some(acct(d % 4)), None),
                    ),
                    6 => Step::Ingest(
                        source,
                        event(EventKind::OptIn, None, Some(acct(d % 4)), None),
                    ),
                    7 => Step::Ingest(
                        source,
                        event(EventKind::Erase, None, Some(acct(d % 4)), None),
                    ),
                    8 => Step::Ingest(source, event(EventKind::Erase, Some(dev(d)), None, None)),
                    9..=18 => Step::Ingest(
                        source,
                        event(
                            EventKind::Login,
                            Some(dev(d)),
                            Some(acct(a.unwrap_or(d % 4))),
                            ip(addr),
                        ),
                    ),
                    19..=21 => Step::Ingest(
                        source,
                        event(EventKind::Logout, Some(dev(d)), a.map(acct), ip(addr)),
                    ),
                    _ => Step::Ingest(
                        source,
                        event(
                            EventKind::Activity,
                            Some(dev(d)),
                            a.filter(|_| op % 3 == 0).map(acct),
                            ip(addr),
                        ),
                    ),
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(cases(64))]

    /// No panic on any sequence of calls, under edge configs, and the
    /// output is still well formed.
    #[test]
    fn no_panic_on_wild_input(config in edgy_config(), steps in wild_steps()) {
        let (out, used, _) = drive(&config, &steps, false);
        let (from_devices, from_accounts) = check_lines(&out);
        let (known_devices, known_accounts) = ids_in_events(&used);
        for l in &from_devices {
            prop_assert!(known_accounts.contains(&l.account), "link to unknown account {:?}", l);
            prop_assert!(known_devices.contains(&l.device), "link of unknown device {:?}", l);
        }
        // The account cap holds on both topics, and they agree.
        let mut per_account: BTreeMap<&str, usize> = BTreeMap::new();
        for l in &from_accounts {
            *per_account.entry(&l.account).or_default() += 1;
        }
        for (a, n) in per_account {
            prop_assert!(
                n <= config.linking.max_devices_per_account,
                "{} shows {} devices", a, n
            );
        }
        prop_assert_eq!(from_devices, from_accounts, "device-links and account-devices disagree");
    }

    /// Snapshot and restore anywhere in a wild call sequence change
    /// nothing that is published.
    #[test]
    fn restarts_are_invisible_on_wild_input(config in edgy_config(), steps in wild_steps()) {
        let (straight, _, acks_a) = drive(&config, &steps, false);
        let (restarted, _, acks_b) = drive(&config, &steps, true);
        prop_assert_eq!(&straight.devices, &restarted.devices);
        prop_assert_eq!(&straight.accounts, &restarted.accounts);
        prop_assert_eq!(acks_a, acks_b);
        prop_assert_eq!(&straight.stats, &restarted.stats);
    }

    /// Over years of event time (links expire, idle state is evicted) and
    /// under small caps (a device moves into or out of an account's view)
    /// incremental publishing still ends with the snapshot's records.
    #[test]
    fn incremental_changes_match_the_snapshot_on_wild_input(
        config in edgy_config(),
        steps in wild_steps(),
    ) {
        let mut e = engine(&config);
        e.track_changes();
        let (mut devices, mut accounts) = (BTreeMap::new(), BTreeMap::new());
        for step in &steps {
            step_engine(&mut e, step);
            publish(&mut e, &mut devices, &mut accounts);
        }
        e.finish();
        publish(&mut e, &mut devices, &mut accounts);
        let snapshot_devices: Vec<String> = e.device_lines().collect();
        let snapshot_accounts: Vec<String> = e.account_lines().collect();
        prop_assert_eq!(devices.into_values().collect::<Vec<_>>(), snapshot_devices);
        prop_assert_eq!(accounts.into_values().collect::<Vec<_>>(), snapshot_accounts);
    }
}

/// Applies one step other than `Restart`.
fn step_engine(e: &mut Engine, step: &Step) {
    match step {
        Step::Ingest(s, ev) => {
            e.ingest(*s, ev.clone());
        }
        Step::AdvanceTo(t) => e.advance_to(*t),
        Step::TakeChanges => {
            let c = e.take_changes();
            for line in c
                .devices
                .iter()
                .chain(&c.accounts)
                .filter_map(|(_, v)| v.as_ref())
            {
                parse(line);
            }
        }
        Step::TakeAcks | Step::Restart => {}
        Step::AddSource(s) => e.add_source(*s),
        Step::RemoveSource(s) => e.remove_source(*s),
        Step::SetIdle(s, idle) => e.set_idle(*s, *idle),
        Step::Flush => e.flush(),
    }
}

/// Runs a step sequence (snapshotting and restoring at `Restart` steps
/// if `restart`), finishes, and returns the output, the events ingested
/// and every ack in order.
fn drive(config: &Config, steps: &[Step], restart: bool) -> (Output, Vec<Event>, Vec<AckKey>) {
    let mut e = engine(config);
    e.track_changes();
    let mut used = Vec::new();
    let mut acks: Vec<AckKey> = Vec::new();
    let take_acks = |e: &mut Engine, acks: &mut Vec<AckKey>| {
        acks.extend(e.take_privacy_acks().iter().map(ack_key));
    };
    for step in steps {
        match step {
            Step::Ingest(_, ev) => used.push(ev.clone()),
            Step::TakeAcks => take_acks(&mut e, &mut acks),
            Step::Restart => {
                take_acks(&mut e, &mut acks);
                if restart {
                    let bytes = e.snapshot();
                    e = Engine::restore(config, classifier(config), &bytes)
                        .expect("own snapshot restores");
                    e.track_changes();
                }
            }
            _ => {}
        }
        step_engine(&mut e, step);
    }
    let out = collect(e);
    acks.extend(out.acks.iter().cloned());
    (out, used, acks)
}

proptest! {
    #![proptest_config(cases(256))]

    /// Restoring arbitrary or truncated bytes fails cleanly or succeeds,
    /// never panics.
    #[test]
    fn restore_survives_garbage(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        steps in wild_steps(),
        cut in any::<prop::sample::Index>(),
    ) {
        let config = Config::default();
        let _ = Engine::restore(&config, classifier(&config), &bytes);
        let mut e = engine(&config);
        for step in &steps {
            step_engine(&mut e, step);
        }
        let snapshot = e.snapshot();
        let truncated = &snapshot[..cut.index(snapshot.len())];
        let restored = Engine::restore(&config, classifier(&config), truncated);
        prop_assert!(restored.is_err(), "a truncated snapshot restored");
    }
}

// ---------------------------------------------------------------------------
// Decoder properties
// ---------------------------------------------------------------------------

fn decoder() -> Decoder {
    Decoder::new(&Config::default().input)
}

/// What an accepted event always satisfies.
fn check_accepted(d: &Decoder, e: &Event) -> Result<(), TestCaseError> {
    let max_future = NOW.0 + Config::default().input.max_future_skew_minutes * MINUTE;
    prop_assert!(
        e.ts.0 >= MIN_TS && e.ts.0 <= max_future,
        "accepted ts {} out of range",
        e.ts.0
    );
    for id in e
        .device
        .iter()
        .map(DeviceId::to_string)
        .chain(e.account.iter().map(AccountId::to_string))
    {
        prop_assert!(!id.is_empty() && id.len() <= 256, "bad id length {:?}", id);
        prop_assert!(
            !id.chars().any(char::is_control),
            "control characters in {:?}",
            id
        );
        prop_assert!(!d.is_junk(&id), "junk id accepted: {:?}", id);
    }
    match e.kind {
        EventKind::OptOut | EventKind::OptIn => {
            prop_assert!(
                e.account.is_some() && e.device.is_none() && e.ip.is_none(),
                "{:?}",
                e
            )
        }
        EventKind::Erase => prop_assert!(
            e.account.is_some() != e.device.is_some() && e.ip.is_none(),
            "{:?}",
            e
        ),
        EventKind::Login => prop_assert!(
            e.device.is_some() && e.account.is_some() && e.ip.is_some(),
            "{:?}",
            e
        ),
        EventKind::Logout | EventKind::Activity => {
            prop_assert!(e.device.is_some() && e.ip.is_some(), "{:?}", e)
        }
    }
    Ok(())
}

/// An accepted event written back in the contract's form.
fn encode(e: &Event) -> String {
    let mut m = serde_json::Map::new();
    m.insert("ts".into(), Value::from(e.ts.0));
    let kind = match e.kind {
        EventKind::Activity => "page_view",
        k => k.as_str(),
    };
    m.insert("kind".into(), Value::from(kind));
    if let Some(d) = &e.device {
        m.insert("device_id".into(), Value::from(d.to_string()));
    }
    if let Some(a) = &e.account {
        m.insert("account_id".into(), Value::from(a.to_string()));
    }
    if let Some(ip) = e.ip {
        m.insert("ip".into(), Value::from(ip.to_string()));
    }
    Value::Object(m).to_string()
}

fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    let d = decoder();
    match d.decode(bytes, NOW) {
        Ok(e) => {
            check_accepted(&d, &e)?;
            let again = d.decode(encode(&e).as_bytes(), NOW);
            prop_assert_eq!(
                again.as_ref(),
                Ok(&e),
                "re-encoded event does not decode the same"
            );
        }
        Err(r) => {
            prop_assert!(
                !r.detail.trim().is_empty(),
                "empty detail for {:?}",
                r.reason
            );
            prop_assert!(!r.to_string().is_empty());
        }
    }
    Ok(())
}

/// A JSON value of any type, biased towards the shapes the contract uses.
fn json_value() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        Just("2026-01-05T18:00:00Z".to_owned()),
        Just("2026-01-05T18:00:00.123+01:00".to_owned()),
        Just("2026-01-05 18:00:00Z".to_owned()),
        Just("2026-01-05T18:00:00".to_owned()),
        Just("9999-12-31T23:59:59Z".to_owned()),
        Just("1969-12-31T23:59:59-23:59".to_owned()),
        Just("+262143-01-01T00:00:00Z".to_owned()),
        Just("login".to_owned()),
        Just("logout".to_owned()),
        Just("page_view".to_owned()),
        Just("opt_out".to_owned()),
        Just("opt_in".to_owned()),
        Just("erase".to_owned()),
        Just("d1".to_owned()),
        Just("gerät-ü".to_owned()),
        Just("".to_owned()),
        Just("  ".to_owned()),
        Just("null".to_owned()),
        Just("NONE".to_owned()),
        Just("0000-0000".to_owned()),
        Just("a\u{1}b".to_owned()),
        Just("\u{2028}".to_owned()),
        Just("x".repeat(256)),
        Just("x".repeat(257)),
        Just("é".repeat(129)),
        Just("81.2.3.4".to_owned()),
        Just("2a02::1".to_owned()),
        Just("::ffff:10.0.0.1".to_owned()),
        Just("fe80::1%eth0".to_owned()),
        Just("999.1.1.1".to_owned()),
        "[ -~]{0,12}",
        "\\PC{0,8}",
    ]
    .prop_map(|s| Value::from(s).to_string());
    let number = prop_oneof![
        Just(i64::MIN.to_string()),
        Just(i64::MAX.to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        Just("1767632400000.0".to_owned()),
        (BASE - 10 * DAY..BASE + 10 * DAY).prop_map(|x| x.to_string()),
        (NOW.0..NOW.0 + 2 * DAY).prop_map(|x| x.to_string()),
        any::<i64>().prop_map(|x| x.to_string()),
        any::<f64>().prop_map(|x| Value::from(x).to_string()),
    ];
    let leaf = prop_oneof![
        6 => text,
        3 => number,
        1 => Just("null".to_owned()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|xs| format!("[{}]", xs.join(","))),
            prop::collection::vec(("[a-z_]{1,4}", inner), 0..3).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", Value::from(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// An object with the contract's fields (and others, and duplicates) set
/// to values of any type.
fn json_object() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("ts"),
        Just("kind"),
        Just("device_id"),
        Just("ip"),
        Just("account_id"),
        Just("event_id"),
        Just("source"),
        Just("user_agent"),
        Just("extra"),
        Just("TS"),
    ];
    prop::collection::vec((key, json_value()), 0..9).prop_map(|fields| {
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

/// A well-formed event line with one field possibly replaced.
fn mostly_valid_line() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("login"),
            Just("logout"),
            Just("page_view"),
            Just("opt_out"),
            Just("opt_in"),
            Just("erase")
        ],
        BASE..BASE + 10 * DAY,
        prop::option::of(Just("d1")),
        prop::option::of(Just("a1")),
        prop::option::of(prop_oneof![
            Just("81.2.3.4"),
            Just("2a02::1"),
            Just("bogus")
        ]),
        prop::option::of((
            "ts|kind|device_id|account_id|ip|event_id|source|user_agent",
            json_value(),
        )),
        "[ \t\r\n]{0,2}",
    )
        .prop_map(|(kind, ts, device, account, ip, replace, pad)| {
            let mut fields = vec![
                ("ts", ts.to_string()),
                ("kind", Value::from(kind).to_string()),
            ];
            if let Some(d) = device {
                fields.push(("device_id", Value::from(d).to_string()));
            }
            if let Some(a) = account {
                fields.push(("account_id", Value::from(a).to_string()));
            }
            if let Some(i) = ip {
                fields.push(("ip", Value::from(i).to_string()));
            }
            let mut body: Vec<String> = Vec::new();
            for (k, v) in &fields {
                match &replace {
                    Some((rk, rv)) if rk == k => body.push(format!("\"{k}\":{rv}")),
                    _ => body.push(format!("\"{k}\":{v}")),
                }
            }
            if let Some((rk, rv)) = &replace
                && !fields.iter().any(|(k, _)| k == rk)
            {
                body.push(format!("\"{rk}\":{rv}"));
            }
            format!("{pad}{{{}}}{pad}", body.join(","))
        })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Arbitrary bytes never panic; rejections always say why.
    #[test]
    fn decoder_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_decode(&bytes)?;
    }

    /// JSON-looking noise never panics either.
    #[test]
    fn decoder_survives_json_noise(text in "[{}\\[\\]\":,0-9a-z_ .+\\-\\\\eE]{0,64}") {
        check_decode(text.as_bytes())?;
    }

    /// Objects with every field of any type: decoded events satisfy the
    /// contract and survive a round trip; rejections say why.
    #[test]
    fn decoder_checks_every_field(text in json_object()) {
        check_decode(text.as_bytes())?;
    }

    /// Mostly valid lines reach every validation rule.
    #[test]
    fn decoder_checks_valid_lines(text in mostly_valid_line()) {
        check_decode(text.as_bytes())?;
    }
}

/// Oversized and edge-sized messages are rejected before parsing.
#[test]
fn decoder_size_limits() {
    let d = decoder();
    let limit = Config::default().input.max_message_bytes;
    let line = |len: usize| {
        let head = format!(
            r#"{{"ts":{},"kind":"page_view","device_id":"d1","ip":"81.2.3.4","pad":""#,
            BASE
        );
        let pad = "x".repeat(len - head.len() - 2);
        format!("{head}{pad}\"}}")
    };
    assert_eq!(line(limit).len(), limit);
    assert!(d.decode(line(limit).as_bytes(), NOW).is_ok());
    let r = d.decode(line(limit + 1).as_bytes(), NOW).unwrap_err();
    assert_eq!(r.reason, idlink_core::RejectReason::TooLarge);
    assert!(!r.detail.is_empty());
}

proptest! {
    // Cheap cases, and the failures they guard against need a privacy
    // request right after a flush in an open day: many cases.
    #![proptest_config(cases(2000))]

    /// What `idlink run` does besides ingesting (flushing whenever it has
    /// caught up, so the open day counts provisionally; handing out
    /// changes and acks after every batch; restarting from a snapshot)
    /// changes nothing in the final graph on input in `ts` order, privacy
    /// requests included: the real close takes back what a provisional
    /// one wrote, and no freed slot is still referred to.
    #[test]
    fn what_run_does_besides_ingesting_is_invisible(
        events in scenario(true),
        flushes in prop::collection::vec(any::<bool>(), 64),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let straight = run(&config, &events);
        let mut e = engine(&config);
        e.track_changes();
        for (i, ev) in events.iter().enumerate() {
            e.ingest(0, ev.clone());
            if flushes[i % flushes.len()] {
                e.flush();
            }
            // Handing out changes and acks (which runs pending privacy
            // purges early) as the service does after every batch.
            if flushes[(i + 7) % flushes.len()] {
                e.take_changes();
                e.take_privacy_acks();
            }
            // A restart from a snapshot, as after a crash or a handover.
            if flushes[(i + 13) % flushes.len()] && flushes[(i + 29) % flushes.len()] {
                restart(&mut e, &config);
            }
        }
        let flushed = collect(e);
        prop_assert_eq!(&straight.devices, &flushed.devices);
        prop_assert_eq!(&straight.accounts, &flushed.accounts);
    }

    /// Events split over partitions as `idlink run` reads them (device
    /// events by device over three partitions, privacy requests on a
    /// fourth), each partition in `ts` order and the partitions
    /// interleaved any way, give replay's graph.
    #[test]
    fn partitions_interleaved_any_way_give_replays_graph(
        events in scenario(true),
        picks in prop::collection::vec(0usize..4, 256),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let straight = run(&config, &events);
        let mut queues = by_partition(&events);
        let mut e = engine(&config);
        for p in 0..PARTITIONS {
            e.add_source(p as u32);
        }
        interleave(&mut e, &mut queues, &picks, &mut 0, true);
        let split = collect(e);
        prop_assert_eq!(&straight.devices, &split.devices);
        prop_assert_eq!(&straight.accounts, &split.accounts);
    }

    /// After every published batch, not only at the end, the two output
    /// topics agree: a consumer of `device-links` and one of
    /// `account-devices` never see different links (sign-ins published at
    /// once and the account cap included).
    #[test]
    fn the_topics_agree_after_every_batch(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        every in 1usize..6,
        cap in 1usize..4,
    ) {
        let mut config = config_for(true);
        config.linking.max_devices_per_account = cap;
        config.linking.max_accounts_per_device = cap;
        let mut e = engine(&config);
        e.track_changes();
        let (mut devices, mut accounts) = (BTreeMap::new(), BTreeMap::new());
        for (n, &i) in order.iter().enumerate() {
            e.ingest(0, events[i].clone());
            if n % every == 0 {
                publish(&mut e, &mut devices, &mut accounts);
                let out = Output {
                    devices: devices.values().cloned().collect(),
                    accounts: accounts.values().cloned().collect(),
                    ..Output::default()
                };
                let (from_devices, from_accounts) = check_lines(&out);
                if from_devices != from_accounts {
                    for l in from_devices.symmetric_difference(&from_accounts) {
                        eprintln!("DIFF {:?}\n folded dev {:?}\n fresh  dev {:?}\n folded acc {:?}\n fresh  acc {:?}",
                            l, devices.get(&l.device), e.device_line(&l.device), accounts.get(&l.account), e.account_line(&l.account));
                    }
                }
                prop_assert_eq!(from_devices, from_accounts, "the topics disagree after event {}", n);
            }
        }
    }

    /// An erase is acknowledged only in a batch whose published changes
    /// already remove every trace of the id: a consumer that sees the ack
    /// on `privacy-acks` finds the id in neither topic (the service
    /// publishes a batch's changes and acks together, changes first).
    #[test]
    fn an_acknowledged_erase_is_already_gone(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        target in 0usize..12,
        after in prop_oneof![Just(0i64), 1i64..DAY],
        arrival in any::<prop::sample::Index>(),
        every in 1usize..5,
    ) {
        let config = config_for(true);
        let (id, request) = erase_after(&events, target, after);
        let mut all = events.clone();
        all.push(request.clone());
        let mut ord = order.clone();
        ord.insert(arrival.index(ord.len() + 1), all.len() - 1);
        let mut e = engine(&config);
        e.track_changes();
        let (mut devices, mut accounts) = (BTreeMap::new(), BTreeMap::new());
        let quoted = format!("\"{id}\"");
        let mut acked = false;
        for (n, &i) in ord.iter().enumerate() {
            e.ingest(0, all[i].clone());
            if n % every != 0 && n + 1 != ord.len() {
                continue;
            }
            publish(&mut e, &mut devices, &mut accounts);
            acked |= e
                .take_privacy_acks()
                .iter()
                .any(|a| a.kind == "erase" && a.ts == request.ts);
            if acked {
                for line in devices.values().chain(accounts.values()) {
                    prop_assert!(
                        !line.contains(&quoted),
                        "{} is acknowledged erased but still published: {}", id, line
                    );
                }
            }
        }
        e.finish();
        publish(&mut e, &mut devices, &mut accounts);
        acked |= e
            .take_privacy_acks()
            .iter()
            .any(|a| a.kind == "erase" && a.ts == request.ts);
        prop_assert!(acked, "the erase was never acknowledged");
        for line in devices.values().chain(accounts.values()) {
            prop_assert!(!line.contains(&quoted), "{} still published: {}", id, line);
        }
    }

    /// `idlink run` as it meets a live stream: events arrive in waves, each
    /// spread over partitions (device events by device over three, privacy
    /// requests on a fourth), every partition in order and the partitions
    /// interleaved any way; after each wave the service has caught up, so
    /// it flushes and hands out changes and acks, and now and then it
    /// restarts from a snapshot. The final graph is replay's. (No partition
    /// goes idle: in the service that takes `source_idle_seconds` of
    /// silence, and an idle partition that wakes with events older than
    /// the others' is overtaken by design.)
    #[test]
    fn a_live_stream_in_waves_gives_replays_graph(
        events in scenario(true),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        picks in prop::collection::vec(0usize..4, 256),
        restarts in prop::collection::vec(any::<bool>(), 8),
        lenient_thresholds in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let straight = run(&config, &events);
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(events.len() + 1)).collect();
        bounds.push(events.len());
        bounds.sort_unstable();
        let mut e = engine(&config);
        e.track_changes();
        for p in 0..PARTITIONS {
            e.add_source(p as u32);
        }
        let (mut from, mut k) = (0, 0);
        for (w, &to) in bounds.iter().enumerate() {
            let mut queues = by_partition(&events[from..to]);
            from = to;
            interleave(&mut e, &mut queues, &picks, &mut k, false);
            e.flush();
            e.take_changes();
            e.take_privacy_acks();
            if restarts[w % restarts.len()] {
                restart(&mut e, &config);
            }
        }
        let live = collect(e);
        prop_assert_eq!(&straight.devices, &live.devices);
        prop_assert_eq!(&straight.accounts, &live.accounts);
    }
}

// ---------------------------------------------------------------------------
// The staged engine (ARCHITECTURE.md, "Partitioned scale-out")
// ---------------------------------------------------------------------------

/// Runs `events` in `order` through one engine and through the three
/// stages with `partitions` partitions each, flushing both after every
/// `flush_every`-th event, and at the end flushing both (as `idlink run`
/// ends, caught up) or ending the input. Returns the engine's graph (its
/// state), its
/// published changes folded after every event, and the stages' folded
/// outputs.
fn one_and_staged(
    config: &Config,
    events: &[Event],
    order: &[usize],
    partitions: u32,
    flush_every: Option<usize>,
    faults: &[Fault],
    flush_at_end: bool,
) -> (Graph, Graph, Graph, [BTreeSet<AckKey>; 2]) {
    let mut one = engine(config);
    one.track_changes();
    let mut p = Pipeline::new(config, &classifier(config), partitions);
    let (mut devices, mut accounts) = (BTreeMap::new(), BTreeMap::new());
    let stages = [Stage::Devices, Stage::Buckets, Stage::Accounts];
    for (n, &i) in order.iter().enumerate() {
        one.ingest(0, events[i].clone());
        p.ingest(0, events[i].clone());
        if flush_every.is_some_and(|f| (n + 1) % f == 0) {
            one.flush();
            p.flush();
        }
        for f in faults.iter().filter(|f| f.after == n) {
            let (stage, k) = (stages[f.stage % 3], f.partition % partitions as usize);
            if f.stage == 4 {
                p.hold_buckets(f.crash);
            } else if f.stage == 3 {
                p.resend_inputs(f.partition * 3);
            } else if f.crash {
                p.crash(stage, k)
                    .expect("a stage partition's snapshot restores");
            } else {
                p.checkpoint(stage, k);
            }
        }
        publish(&mut one, &mut devices, &mut accounts);
    }
    p.hold_buckets(false);
    if flush_at_end {
        // Where `idlink run` ends: caught up, the open day provisional.
        one.flush();
        p.flush();
    } else {
        one.finish();
        p.finish();
    }
    publish(&mut one, &mut devices, &mut accounts);
    let state: Graph = (one.device_lines().collect(), one.account_lines().collect());
    let folded: Graph = (
        devices.into_values().collect(),
        accounts.into_values().collect(),
    );
    let staged: Graph = (
        p.device_lines().map(str::to_owned).collect(),
        p.account_lines().map(str::to_owned).collect(),
    );
    let acks = [
        one.take_privacy_acks().iter().map(ack_key).collect(),
        p.take_privacy_acks().iter().map(ack_key).collect(),
    ];
    (state, folded, staged, acks)
}

/// A device partition that waits for the bucket stage (a day close)
/// takes no input, but the sign-ins read meanwhile are published at once
/// (previewed); one that an erasure read before it covers (its device or
/// account, at or before the erasure's `ts`) is not, while the others read
/// after the erasure are; and the graph at the end is one engine's.
#[test]
fn sign_ins_read_while_waiting_for_a_day_close_are_published_at_once() {
    let config = Config::default();
    let mut p = Pipeline::new(&config, &classifier(&config), 2);
    let shows = |p: &Pipeline, d: usize, a: usize| {
        p.device_lines()
            .any(|l| l.contains(&dev(d).to_string()) && l.contains(&acct(a).to_string()))
    };
    p.hold_buckets(true);
    let mut events = vec![
        sighting(BASE + 60 * MINUTE, 5, false, None, 5, ip("81.2.3.9")),
        // Past the end of day 0 by more than the lateness: every device
        // partition releases day 0 and waits for its close.
        sighting(BASE + DAY + 30 * MINUTE, 6, false, None, 5, ip("81.2.3.7")),
        sighting(BASE + DAY + 31 * MINUTE, 0, true, None, 0, ip("81.2.3.1")),
    ];
    for ev in &events {
        p.ingest(0, ev.clone());
    }
    assert!(
        p.device_partitions().all(Engine::waiting_for_buckets),
        "the bucket stage is held: the day cannot close"
    );
    assert!(shows(&p, 0, 0), "a sign-in read while waiting is published");
    // An erasure read while waiting holds back the previews it covers:
    // those sign-ins never show, even for a moment. (They are behind the
    // watermark: the erasure is applied as it is taken, and they are
    // dropped as they are.) A sign-in of another account, or of the
    // erased account after the erasure's `ts`, shows at once.
    let erase = Event {
        ts: Millis(BASE + DAY + 21 * MINUTE),
        kind: EventKind::Erase,
        device: None,
        account: Some(acct(1)),
        ip: None,
        platform: Platform::Unknown,
    };
    let covered = sighting(BASE + DAY + 20 * MINUTE, 1, true, None, 0, ip("81.2.3.2"));
    let other = sighting(BASE + DAY + 36 * MINUTE, 2, true, None, 0, ip("81.2.3.3"));
    let covered_too = sighting(
        BASE + DAY + 10 * MINUTE,
        3,
        true,
        Some(1),
        0,
        ip("81.2.3.4"),
    );
    let later = sighting(
        BASE + DAY + 40 * MINUTE,
        0,
        true,
        Some(1),
        0,
        ip("81.2.3.5"),
    );
    for ev in [erase, covered, other, covered_too, later] {
        p.ingest(0, ev.clone());
        events.push(ev);
    }
    assert!(!shows(&p, 1, 1), "the erasure covers this sign-in");
    assert!(!shows(&p, 3, 1), "the erasure covers this sign-in");
    assert!(shows(&p, 2, 2), "a sign-in of another account shows");
    assert!(shows(&p, 0, 1), "a sign-in after the erasure's ts shows");
    p.hold_buckets(false);
    assert!(shows(&p, 0, 0) && shows(&p, 2, 2) && shows(&p, 0, 1));
    assert!(!shows(&p, 1, 1) && !shows(&p, 3, 1));
    let mut one = engine(&config);
    for ev in &events {
        one.ingest(0, ev.clone());
    }
    one.finish();
    p.finish();
    let one: Vec<String> = one.device_lines().collect();
    let staged: Vec<String> = p.device_lines().map(str::to_owned).collect();
    assert_eq!(one, staged);
}

/// A stage partition snapshotting itself, or crashing and restarting
/// from its last snapshot, after the `after`-th event; or (stage 3) the
/// router sending the last records of every device partition again; or
/// (stage 4) the bucket stage held (`crash`) or released, so that device
/// partitions wait at a day's end while their input grows.
#[derive(Clone, Debug)]
struct Fault {
    after: usize,
    stage: usize,
    partition: usize,
    crash: bool,
}

fn faults() -> impl Strategy<Value = Vec<Fault>> {
    prop::collection::vec(
        (0usize..160, 0usize..5, 0usize..4, any::<bool>()).prop_map(
            |(after, stage, partition, crash)| Fault {
                after,
                stage,
                partition,
                crash,
            },
        ),
        0..16,
    )
}

proptest! {
    #![proptest_config(cases(256))]

    /// The stages, one to four partitions each, end in the graph of one
    /// engine: for any arrival order within the lateness, privacy
    /// requests in order or late, flushes anywhere, and caps that bind.
    #[test]
    fn the_stages_end_in_one_engines_graph(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        partitions in 1u32..5,
        lenient_thresholds in any::<bool>(),
        flush_every in prop::option::of(1usize..40),
        cap in prop::option::of(1usize..4),
        flush_at_end in any::<bool>(),
    ) {
        let mut config = config_for(lenient_thresholds);
        if let Some(cap) = cap {
            // Caps that bind: the account stage applies the device cap.
            config.linking.max_devices_per_account = cap;
            config.linking.max_accounts_per_device = cap;
        }
        let (state, folded, staged, [one_acks, staged_acks]) =
            one_and_staged(&config, &events, &order, partitions, flush_every, &[], flush_at_end);
        prop_assert_eq!(&state, &folded, "one engine's topics differ from its state");
        prop_assert_eq!(&folded, &staged);
        // Every request is acknowledged once every stage has applied it.
        prop_assert_eq!(one_acks, staged_acks);
    }

    /// Stage partitions that snapshot themselves at any time and crash at
    /// any time (restarting from their last snapshot and reading their
    /// input streams again from its positions), and a router that sends
    /// records again, end in the same graph.
    #[test]
    fn crashed_stage_partitions_end_in_one_engines_graph(
        (events, order) in scenario_with_disorder(lateness_ms(&Config::default())),
        partitions in 1u32..5,
        lenient_thresholds in any::<bool>(),
        flush_every in prop::option::of(1usize..40),
        faults in faults(),
        flush_at_end in any::<bool>(),
    ) {
        let config = config_for(lenient_thresholds);
        let (_, folded, staged, [one_acks, staged_acks]) =
            one_and_staged(&config, &events, &order, partitions, flush_every, &faults, flush_at_end);
        prop_assert_eq!(&folded, &staged);
        prop_assert_eq!(one_acks, staged_acks);
    }
}
