//! The naive co-location baseline, used to show how strong the simulated
//! traps are: "link an unsigned device to the signed-in account it met most
//! often on the same address within 30 minutes on two or more days,
//! skipping addresses with more than 8 devices that day".
//!
//! It keeps everything in memory and is meant for default-size scenarios.
//! Privacy requests are honoured only at the end (erased ids dropped, no
//! inferred links to accounts opted out at the end); bots are not detected,
//! which is part of what the baseline demonstrates.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::DateTime;
use serde::Deserialize;

use crate::error::SimError;
use crate::jsonl::for_each_line;
use crate::links::{OutLink, OutRecord};
use crate::timefmt::{DAY_MS, rfc3339_ms};

/// Co-location window.
const WINDOW_MS: i64 = 30 * 60 * 1000;
/// Addresses with more devices than this on a day are ignored.
const MAX_DEVICES_PER_ADDRESS_DAY: usize = 8;
/// Minimum number of distinct days two devices must meet on.
const MIN_DAYS: u32 = 2;

/// The fields of an event line the baseline uses; others are ignored.
#[derive(Deserialize)]
struct RawEvent {
    /// Event time (RFC 3339).
    ts: String,
    /// Event kind; privacy requests are told apart by it.
    kind: String,
    /// Device id (absent on account privacy requests).
    #[serde(default)]
    device_id: Option<String>,
    /// Client address (absent on privacy requests).
    #[serde(default)]
    ip: Option<String>,
    /// Signed-in account, or the target of an account privacy request.
    #[serde(default)]
    account_id: Option<String>,
}

/// String interner: ids become small integers.
#[derive(Default)]
struct Names {
    /// Text to number.
    index: HashMap<String, u32>,
    /// Number to text.
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }

    fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", String::as_str)
    }
}

/// One activity observation.
#[derive(Clone, Copy)]
struct Obs {
    /// UTC day number; co-location is counted per address and day.
    day: i64,
    /// Interned exact address.
    ip: u32,
    /// Event time, Unix ms.
    ts: i64,
    /// Interned device id.
    dev: u32,
    /// Interned signed-in account, if any.
    acct: Option<u32>,
}

/// How two devices met.
#[derive(Clone, Copy)]
struct Meet {
    /// Distinct days with at least one meeting (the rule needs two).
    days: u32,
    /// Last day counted, to count days once.
    last_day: i64,
    /// Unsigned events that had the account within the window ("most often").
    count: u64,
    /// First meeting time, Unix ms.
    first: i64,
    /// Last meeting time, Unix ms.
    last: i64,
}

/// Everything the baseline keeps from the events file.
#[derive(Default)]
struct Input {
    /// Device id interner.
    devices: Names,
    /// Account id interner.
    accounts: Names,
    /// Activity observations (sign-in and sign-out events excluded).
    obs: Vec<Obs>,
    /// First and last time each (device, account) pair was seen signed in.
    logins: HashMap<(u32, u32), (i64, i64)>,
    /// Privacy requests: (effective time, kind, account, device).
    privacy: Vec<(i64, String, Option<u32>, Option<u32>)>,
}

/// Privacy state at the end of the stream.
#[derive(Default)]
struct Privacy {
    /// Erased device ids: left out of the output.
    erased_devs: HashSet<u32>,
    /// Erased accounts: never linked.
    erased_accts: HashSet<u32>,
    /// Accounts opted out at the end: never inferred.
    opted_out: HashSet<u32>,
}

/// Runs the naive rule over `events` and writes `out` in the
/// `device-links.jsonl` format (login links for devices that signed in,
/// inferred links for the others). Returns the number of inferred links.
///
/// # Errors
/// [`SimError::Io`] when a file cannot be read or written,
/// [`SimError::Parse`] for a malformed event line.
pub fn naive_baseline(events: &Path, out: &Path) -> Result<u64, SimError> {
    let mut input = read_events(events)?;
    let privacy = final_privacy(&mut input.privacy);
    let signed_devs: HashSet<u32> = input.logins.keys().map(|&(d, _)| d).collect();
    let meets = co_locations(&mut input.obs, &signed_devs);
    let best = best_accounts(&meets, &privacy, &input.accounts);
    let (records, inferred) = build_records(&input, &privacy, &best);
    let mut w = BufWriter::new(File::create(out)?);
    for r in &records {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(inferred)
}

fn read_events(path: &Path) -> Result<Input, SimError> {
    let mut input = Input::default();
    let mut ips = Names::default();
    for_each_line(path, |_, line| {
        let ev: RawEvent = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let ts = DateTime::parse_from_rfc3339(&ev.ts)
            .map_err(|e| format!("bad ts {:?}: {e}", ev.ts))?
            .timestamp_millis();
        let dev = ev.device_id.as_deref().map(|d| input.devices.id(d));
        let acct = ev.account_id.as_deref().map(|a| input.accounts.id(a));
        if matches!(ev.kind.as_str(), "opt_out" | "opt_in" | "erase") {
            input.privacy.push((ts, ev.kind, acct, dev));
            return Ok(());
        }
        let (Some(dev), Some(ip)) = (dev, ev.ip.as_deref()) else {
            return Err(format!("{} event without device_id or ip", ev.kind));
        };
        if let Some(a) = acct {
            let e = input.logins.entry((dev, a)).or_insert((ts, ts));
            e.0 = e.0.min(ts);
            e.1 = e.1.max(ts);
        }
        if ev.kind != "login" && ev.kind != "logout" {
            let day = ts.div_euclid(DAY_MS as i64);
            input.obs.push(Obs {
                day,
                ip: ips.id(ip),
                ts,
                dev,
                acct,
            });
        }
        Ok(())
    })?;
    Ok(input)
}

/// Applies the privacy requests in effective-time order.
fn final_privacy(requests: &mut [(i64, String, Option<u32>, Option<u32>)]) -> Privacy {
    requests.sort_by_key(|p| p.0);
    let mut state = Privacy::default();
    for (_, kind, acct, dev) in requests.iter() {
        match (kind.as_str(), acct, dev) {
            ("erase", Some(a), _) => {
                state.erased_accts.insert(*a);
            }
            ("erase", None, Some(d)) => {
                state.erased_devs.insert(*d);
            }
            ("opt_out", Some(a), _) => {
                state.opted_out.insert(*a);
            }
            ("opt_in", Some(a), _) => {
                state.opted_out.remove(a);
            }
            _ => {}
        }
    }
    state
}

/// The account each unsigned device met most often (on two or more days).
fn best_accounts(
    meets: &HashMap<(u32, u32), Meet>,
    privacy: &Privacy,
    accounts: &Names,
) -> HashMap<u32, (u32, Meet)> {
    let mut best: HashMap<u32, (u32, Meet)> = HashMap::new();
    for (&(dev, acct), m) in meets {
        if m.days < MIN_DAYS
            || privacy.erased_accts.contains(&acct)
            || privacy.opted_out.contains(&acct)
        {
            continue;
        }
        // Ties go to the smaller account id so the output is deterministic.
        let key = |a: u32, m: &Meet| (m.count, m.days, std::cmp::Reverse(accounts.name(a)));
        if best
            .get(&dev)
            .is_none_or(|(a, b)| key(acct, m) > key(*a, b))
        {
            best.insert(dev, (acct, *m));
        }
    }
    best
}

/// Output records sorted by device id, and the number of inferred links.
fn build_records(
    input: &Input,
    privacy: &Privacy,
    best: &HashMap<u32, (u32, Meet)>,
) -> (Vec<OutRecord>, u64) {
    let mut records: HashMap<u32, OutRecord> = HashMap::new();
    let mut logins: Vec<_> = input.logins.iter().collect();
    logins.sort_by_key(|(k, _)| **k);
    for (&(dev, acct), &(first, last)) in logins {
        if privacy.erased_accts.contains(&acct) {
            continue;
        }
        if let Some(r) = record(&mut records, &privacy.erased_devs, &input.devices, dev) {
            r.links.push(OutLink {
                account_id: input.accounts.name(acct).to_string(),
                link_type: "login",
                confidence: 1.0,
                first_seen: rfc3339_ms(first),
                last_seen: rfc3339_ms(last),
                evidence: serde_json::json!({"rule": "signed in"}),
            });
        }
    }
    let mut inferred = 0u64;
    for (&dev, &(acct, m)) in best {
        if let Some(r) = record(&mut records, &privacy.erased_devs, &input.devices, dev) {
            inferred += 1;
            r.links.push(OutLink {
                account_id: input.accounts.name(acct).to_string(),
                link_type: "inferred",
                confidence: 0.5,
                first_seen: rfc3339_ms(m.first),
                last_seen: rfc3339_ms(m.last),
                evidence: serde_json::json!({
                    "rule": "naive co-location", "days": m.days, "meetings": m.count
                }),
            });
        }
    }
    let mut records: Vec<OutRecord> = records.into_values().collect();
    records.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    (records, inferred)
}

/// The output record of `dev`, created on first use; `None` for erased
/// devices, which must not appear in the output.
fn record<'a>(
    records: &'a mut HashMap<u32, OutRecord>,
    erased: &HashSet<u32>,
    devices: &Names,
    dev: u32,
) -> Option<&'a mut OutRecord> {
    if erased.contains(&dev) {
        return None;
    }
    Some(records.entry(dev).or_insert_with(|| OutRecord {
        device_id: devices.name(dev).to_string(),
        links: Vec::new(),
    }))
}

/// Counts, per (unsigned device, account), the meetings within the window
/// on the same address and day, skipping crowded addresses.
fn co_locations(obs: &mut [Obs], signed_devs: &HashSet<u32>) -> HashMap<(u32, u32), Meet> {
    obs.sort_unstable_by_key(|o| (o.day, o.ip, o.ts, o.dev));
    let mut meets: HashMap<(u32, u32), Meet> = HashMap::new();
    let mut group_devs: Vec<u32> = Vec::new();
    let mut signed: Vec<(i64, u32)> = Vec::new();
    let mut in_window: Vec<u32> = Vec::new();
    for group in obs.chunk_by(|a, b| a.day == b.day && a.ip == b.ip) {
        group_devs.clear();
        group_devs.extend(group.iter().map(|o| o.dev));
        group_devs.sort_unstable();
        group_devs.dedup();
        if group_devs.len() > MAX_DEVICES_PER_ADDRESS_DAY {
            continue;
        }
        signed.clear();
        signed.extend(group.iter().filter_map(|o| o.acct.map(|a| (o.ts, a))));
        if signed.is_empty() {
            continue;
        }
        let mut lo = 0usize;
        for o in group
            .iter()
            .filter(|o| o.acct.is_none() && !signed_devs.contains(&o.dev))
        {
            while signed.get(lo).is_some_and(|s| s.0 < o.ts - WINDOW_MS) {
                lo += 1;
            }
            in_window.clear();
            for s in signed
                .iter()
                .skip(lo)
                .take_while(|s| s.0 <= o.ts + WINDOW_MS)
            {
                in_window.push(s.1);
            }
            in_window.sort_unstable();
            in_window.dedup();
            for &a in &in_window {
                let m = meets.entry((o.dev, a)).or_insert(Meet {
                    days: 0,
                    last_day: i64::MIN,
                    count: 0,
                    first: o.ts,
                    last: o.ts,
                });
                if m.last_day != o.day {
                    m.days += 1;
                    m.last_day = o.day;
                }
                m.count += 1;
                m.first = m.first.min(o.ts);
                m.last = m.last.max(o.ts);
            }
        }
    }
    meets
}
