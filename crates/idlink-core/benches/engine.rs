//! Criterion benchmarks of the core's two hot paths.
//!
//! * `decode/*`: [`Decoder::decode`] over a few thousand realistic JSON
//!   lines shaped like the simulator's (`activity` with and without an
//!   `account_id`, IPv4 and IPv6, `login`), plus a set of lines that are
//!   all rejected (the dead-letter path formats an error message).
//! * `engine/*`: the engine alone on pre-parsed events: `Engine::new`,
//!   `ingest` of ~200k synthetic events (households of devices sharing a
//!   public IPv4 address, some signed in, two days of event time with
//!   slight disorder) and `finish()`. The events are cloned outside the
//!   timed region; the engine is dropped outside it too.
//!
//! * `staged/*`: a bucket partition of the partitioned mode holding
//!   100,000 address buckets, given 200 erasures in one consumed batch:
//!   `privacy_batch` takes the acknowledgements once (as the service does
//!   after every batch: one pass over the buckets), `privacy_one_by_one`
//!   after every request (a pass each, what every request cost before the
//!   bucket stage batched its purges).
//!
//! Inputs are synthesized deterministically in-process (a SplitMix64
//! stream with a fixed seed), so runs are comparable across machines and
//! commits. Each group uses a small sample count and a few seconds of
//! measurement so the whole file runs in well under two minutes; pass
//! `--quick` for an even shorter run:
//!
//! ```text
//! cargo bench -p idlink-core --bench engine -- --quick
//! ```

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use idlink_core::engine::staged::{BucketStage, PrivacyCopy, Progress, Sent, Sighting, ToBuckets};
use idlink_core::{
    AccountId, AddressClassifier, Bucket, Config, Decoder, DeviceId, Engine, Event, EventKind,
    Millis, Platform,
};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// 2026-01-05T00:00:00Z, the simulator's default start.
const START_MS: i64 = 1_767_571_200_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// Lines in the decode corpus.
const DECODE_LINES: usize = 4_000;
/// Events in the engine corpus (approximate; sessions are whole).
const ENGINE_EVENTS: usize = 200_000;

/// A small deterministic generator (SplitMix64): no `rand` dependency,
/// same stream on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A public (usable) IPv4 address from 81.0.0.0–95.255.255.255, outside
/// every non-public and carrier-NAT range.
fn public_v4(rng: &mut Rng) -> Ipv4Addr {
    let v = rng.next() as u32;
    Ipv4Addr::new(
        81 + (v % 15) as u8,
        (v >> 8) as u8,
        (v >> 16) as u8,
        1 + ((v >> 24) % 254) as u8,
    )
}

/// A global-unicast IPv6 address (2a02::/16, a residential-ISP range).
fn public_v6(rng: &mut Rng) -> Ipv6Addr {
    let v = rng.next();
    let w = rng.next();
    Ipv6Addr::new(
        0x2a02,
        (v >> 48) as u16,
        (v >> 32) as u16,
        (v >> 16) as u16,
        (w >> 48) as u16,
        (w >> 32) as u16,
        (w >> 16) as u16,
        w as u16,
    )
}

/// A 22-character web-cookie style id, like the simulator's.
fn cookie_id(rng: &mut Rng) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| ALPHABET[rng.below(64) as usize] as char)
        .collect()
}

/// An RFC 3339 UTC timestamp with milliseconds, as producers send it.
fn rfc3339(ms: i64) -> String {
    Millis(ms).to_string()
}

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "IdlinkNews/5.11.3 (Android 14; SM-A546B)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
];
const ACTIVITY_KINDS: [&str; 4] = ["page_view", "widget_view", "ad_impression", "app_open"];

/// Valid lines: ~60% unsigned IPv4 activity, ~15% signed-in IPv4
/// activity, ~15% IPv6 activity (half signed in), ~10% logins; some with
/// epoch-millisecond `ts`, some without the optional fields.
fn valid_lines(n: usize) -> Vec<String> {
    let mut rng = Rng(0x1d11_0001);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ts_ms = START_MS + (i as i64) * 1_500 + rng.below(60_000) as i64;
        let ts = if rng.chance(0.1) {
            ts_ms.to_string()
        } else {
            format!("\"{}\"", rfc3339(ts_ms))
        };
        let device = cookie_id(&mut rng);
        let account = format!("acct-{:06}", rng.below(200_000));
        let roll = rng.below(100);
        let (kind, ip, signed_in) = match roll {
            0..60 => (
                ACTIVITY_KINDS[rng.below(4) as usize],
                IpAddr::V4(public_v4(&mut rng)),
                false,
            ),
            60..75 => (
                ACTIVITY_KINDS[rng.below(4) as usize],
                IpAddr::V4(public_v4(&mut rng)),
                true,
            ),
            75..90 => (
                ACTIVITY_KINDS[rng.below(4) as usize],
                IpAddr::V6(public_v6(&mut rng)),
                roll.is_multiple_of(2),
            ),
            _ => ("login", IpAddr::V4(public_v4(&mut rng)), true),
        };
        let mut line = format!(r#"{{"ts":{ts},"kind":"{kind}","device_id":"{device}","ip":"{ip}""#);
        if signed_in {
            line.push_str(&format!(r#","account_id":"{account}""#));
        }
        if rng.chance(0.8) {
            let ua = USER_AGENTS[rng.below(USER_AGENTS.len() as u64) as usize];
            let source = if ua.starts_with("Idlink") {
                "app"
            } else {
                "web"
            };
            line.push_str(&format!(
                r#","event_id":"ev-{:016x}","source":"{source}","user_agent":"{ua}""#,
                rng.next()
            ));
        }
        line.push('}');
        out.push(line);
    }
    out
}

/// Lines that are all rejected, across the common dead-letter reasons.
fn rejected_lines(n: usize) -> Vec<String> {
    let mut rng = Rng(0x1d11_0002);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ts = rfc3339(START_MS + (i as i64) * 1_500);
        let device = cookie_id(&mut rng);
        let ip = public_v4(&mut rng);
        let line = match i % 6 {
            0 => format!(r#"{{"ts":"{ts}","kind":"page_view","device_id":"null","ip":"{ip}"}}"#),
            1 => format!(
                r#"{{"ts":"{ts}","kind":"page_view","device_id":"{device}","ip":"999.{}.1.1"}}"#,
                rng.below(256)
            ),
            2 => format!(r#"{{"ts":"{ts}","kind":"page_view","device_id":"{device}"}}"#),
            3 => format!(r#"{{"ts":"{ts}","kind":"login","device_id":"{device}","ip":"{ip}"}}"#),
            4 => format!(r#"{{"ts":"{ts}","kind":"page_view","device_id":"{device}","ip":"{ip}""#),
            _ => format!(
                r#"{{"ts":"yesterday","kind":"page_view","device_id":"{device}","ip":"{ip}"}}"#
            ),
        };
        out.push(line);
    }
    out
}

fn bench_decode(c: &mut Criterion) {
    let config = Config::default();
    let decoder = Decoder::new(&config.input);
    // Two days after the corpus start: every valid `ts` is in the past.
    let now = Millis(START_MS + 2 * DAY);
    let valid = valid_lines(DECODE_LINES);
    let rejected = rejected_lines(DECODE_LINES);
    assert!(
        valid
            .iter()
            .all(|l| decoder.decode(l.as_bytes(), now).is_ok()),
        "valid corpus must decode"
    );
    assert!(
        rejected
            .iter()
            .all(|l| decoder.decode(l.as_bytes(), now).is_err()),
        "rejected corpus must not decode"
    );
    let bytes: usize = valid.iter().map(String::len).sum();
    eprintln!(
        "decode corpus: {} valid lines, {} bytes/line on average",
        valid.len(),
        bytes / valid.len()
    );

    let mut g = c.benchmark_group("decode");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(valid.len() as u64));
    g.bench_function("valid_mix", |b| {
        b.iter(|| {
            for l in &valid {
                let _ = black_box(decoder.decode(black_box(l.as_bytes()), now));
            }
        })
    });
    g.throughput(Throughput::Elements(rejected.len() as u64));
    g.bench_function("rejected_mix", |b| {
        b.iter(|| {
            for l in &rejected {
                let _ = black_box(decoder.decode(black_box(l.as_bytes()), now));
            }
        })
    });
    g.finish();
}

/// Shape of the synthetic population for the engine bench.
struct Population {
    /// Device ids per household.
    households: Vec<Household>,
}

struct Household {
    /// The household's public IPv4 address.
    ip: IpAddr,
    /// Its devices.
    devices: Vec<DeviceId>,
    /// Its account, if anyone in it has one.
    account: Option<AccountId>,
}

impl Population {
    /// `n` households of 1–4 devices; 60% have an account.
    fn new(n: usize, rng: &mut Rng) -> Self {
        let households = (0..n)
            .map(|h| {
                let devices = (0..1 + rng.below(4))
                    .map(|_| DeviceId::from(cookie_id(rng).as_str()))
                    .collect();
                let account = rng
                    .chance(0.6)
                    .then(|| AccountId::from(format!("acct-{h:06}").as_str()));
                Household {
                    ip: IpAddr::V4(public_v4(rng)),
                    devices,
                    account,
                }
            })
            .collect();
        Population { households }
    }
}

/// ~`target` device events over two days: sessions of 2–8 events at a
/// household, spread over up to 20 minutes, from one or two of its
/// devices, signed in ~35% of the time when the household has an account
/// (the first event of a signed-in session is a login). Events are then
/// ordered by `ts` and locally shuffled (adjacent swaps, at most a few
/// seconds apart) so the reorder buffer has real work but nothing is
/// late. A few households roam to another address (a phone on mobile
/// data, a café).
fn engine_events(target: usize) -> Vec<Event> {
    let mut rng = Rng(0x1d11_0003);
    let pop = Population::new(target / 20, &mut rng);
    let span = 2 * DAY - 30 * MINUTE;
    let mut events = Vec::with_capacity(target + 8);
    while events.len() < target {
        let h = &pop.households[rng.below(pop.households.len() as u64) as usize];
        let start = START_MS + rng.below(span as u64) as i64;
        let signed = h.account.is_some() && rng.chance(0.35);
        let n = 2 + rng.below(7);
        let roam = rng.chance(0.05).then(|| IpAddr::V4(public_v4(&mut rng)));
        for k in 0..n {
            let dev = &h.devices[rng.below(h.devices.len() as u64) as usize];
            let ts = start + (k as i64) * rng.below(3 * MINUTE as u64) as i64;
            let account = (signed && k % 2 == 0).then(|| h.account.clone()).flatten();
            let kind = if account.is_some() && k == 0 {
                EventKind::Login
            } else {
                EventKind::Activity
            };
            events.push(Event {
                ts: Millis(ts),
                kind,
                device: Some(dev.clone()),
                account,
                ip: Some(roam.unwrap_or(h.ip)),
                platform: Platform::Unknown,
            });
        }
    }
    events.sort_by_key(|e| e.ts);
    // Slight disorder: swap neighbours that are close in time.
    for i in 1..events.len() {
        if rng.chance(0.2) && events[i].ts.0 - events[i - 1].ts.0 < 5_000 {
            events.swap(i - 1, i);
        }
    }
    events
}

fn bench_engine(c: &mut Criterion) {
    let config = Config::default();
    let events = engine_events(ENGINE_EVENTS);
    let run = |events: Vec<Event>| {
        let mut engine = Engine::new(&config, AddressClassifier::new(64, &[]));
        for ev in events {
            black_box(engine.ingest(0, ev));
        }
        engine.finish();
        engine
    };
    // Sanity: the population links and nothing is late.
    let probe = run(events.clone());
    assert_eq!(
        probe.stats().late_events,
        0,
        "synthetic disorder must stay within the lateness bound"
    );
    assert!(
        probe.link_counts().0 > 0,
        "synthetic population must produce sign-in links"
    );
    eprintln!(
        "engine corpus: {} events, {} devices, {} accounts, links (sign-in, inferred) = {:?}",
        events.len(),
        probe.device_count(),
        probe.account_count(),
        probe.link_counts()
    );
    let mut probe = probe;
    let snapshot = probe.snapshot();
    eprintln!(
        "snapshot of that state: {} bytes ({:.0} per device)",
        snapshot.len(),
        snapshot.len() as f64 / probe.device_count().max(1) as f64
    );

    let mut g = c.benchmark_group("engine");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("ingest_finish_200k", |b| {
        b.iter_batched(|| events.clone(), run, BatchSize::LargeInput);
    });
    // State to bytes and back, what a restart or a partition move costs.
    g.throughput(Throughput::Bytes(snapshot.len() as u64));
    g.bench_function("snapshot", |b| b.iter(|| black_box(probe.snapshot())));
    g.bench_function("restore", |b| {
        b.iter(|| {
            black_box(Engine::restore(
                &config,
                AddressClassifier::new(64, &[]),
                &snapshot,
            ))
        })
    });
    g.finish();
}

/// Buckets in the `staged/*` bucket partition.
const STAGED_BUCKETS: u32 = 100_000;
/// Erasures in its batch.
const STAGED_ERASURES: u32 = 200;

/// A bucket partition fed by one device partition: each of
/// [`STAGED_BUCKETS`] addresses sees a signed-in phone and an unsigned
/// laptop in the first hour of a day, all released; returns its snapshot
/// and the messages numbered so far.
fn staged_bucket_state(config: &Config) -> (Vec<u8>, u64) {
    let mut stage = BucketStage::new(config, 0, 1);
    let mut seq = 0;
    let mut send = |stage: &mut BucketStage, msg| {
        seq += 1;
        stage.receive(Sent { from: 0, seq, msg });
    };
    let day = Millis(START_MS).day() as i32;
    send(
        &mut stage,
        staged_progress(i32::MIN, Millis(START_MS), Some(Millis(START_MS)), true),
    );
    for i in 0..STAGED_BUCKETS {
        let ts = START_MS + i64::from(i) % 60 * MINUTE / 60;
        for (device, account) in [
            (format!("p{i}"), Some(format!("a{i}"))),
            (format!("l{i}"), None),
        ] {
            send(
                &mut stage,
                ToBuckets::Sighting(Sighting {
                    bucket: Bucket::v4(0x5100_0000 + i),
                    device: device.into(),
                    signed_in: account.is_some(),
                    account: account.map(Into::into),
                    ts: Millis(ts),
                    priority: 3,
                    bot: false,
                    platform: Platform::Unknown,
                }),
            );
        }
    }
    send(
        &mut stage,
        staged_progress(day, Millis(START_MS + 60 * MINUTE), None, false),
    );
    stage.take_for_devices();
    stage.take_applied();
    (stage.snapshot(), seq)
}

fn staged_progress(day: i32, upto: Millis, next: Option<Millis>, ended: bool) -> ToBuckets {
    ToBuckets::Progress(Progress {
        day,
        upto,
        next,
        ended,
        flushes: 0,
        finished: false,
    })
}

/// [`STAGED_ERASURES`] device erasures, each followed by the progress
/// that releases it, numbered after the state's `seq` messages.
fn staged_erasures(seq: u64) -> Vec<Sent<ToBuckets>> {
    let day = Millis(START_MS).day() as i32;
    (0..STAGED_ERASURES)
        .flat_map(|i| {
            let ts = START_MS + 61 * MINUTE + i64::from(i);
            let erase = ToBuckets::Privacy(PrivacyCopy {
                event: Event {
                    ts: Millis(ts),
                    kind: EventKind::Erase,
                    device: Some(DeviceId::from(format!("p{}", i * 7).as_str())),
                    account: None,
                    ip: None,
                    platform: Platform::Unknown,
                },
                late: false,
                released_to: Millis::MIN,
            });
            [erase, staged_progress(day, Millis(ts + 1), None, false)]
        })
        .zip(seq + 1..)
        .map(|(msg, seq)| Sent { from: 0, seq, msg })
        .collect()
}

fn bench_staged(c: &mut Criterion) {
    let config = Config::default();
    let (state, seq) = staged_bucket_state(&config);
    let erasures = staged_erasures(seq);
    let restore = || BucketStage::restore(&config, &state).expect("the bench's snapshot restores");
    let probe = restore();
    eprintln!(
        "staged corpus: a bucket partition of {} buckets ({} snapshot bytes), {} erasures",
        probe.bucket_count(),
        state.len(),
        STAGED_ERASURES
    );
    let mut g = c.benchmark_group("staged");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(u64::from(STAGED_ERASURES)));
    let run = |stage: &mut BucketStage, ack_every_message: bool| {
        let mut acks = 0;
        for m in &erasures {
            stage.receive(m.clone());
            if ack_every_message {
                acks += stage.take_applied().len();
            }
        }
        acks += stage.take_applied().len();
        assert_eq!(
            acks, STAGED_ERASURES as usize,
            "every erasure is acknowledged"
        );
        stage.privacy_purges()
    };
    assert_eq!(run(&mut restore(), false), 1, "one pass for the batch");
    g.bench_function("privacy_batch", |b| {
        b.iter_batched(restore, |mut s| run(&mut s, false), BatchSize::LargeInput);
    });
    g.bench_function("privacy_one_by_one", |b| {
        b.iter_batched(restore, |mut s| run(&mut s, true), BatchSize::LargeInput);
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_engine, bench_staged);
criterion_main!(benches);
