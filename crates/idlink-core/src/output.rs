//! The published formats: `device-links` and `account-devices` lines.
//!
//! Field names and order are a contract with the consuming teams (see
//! README.md). Arrays are sorted by id, timestamps are UTC RFC 3339 with
//! milliseconds, numbers are rounded to four decimals, and buckets appear
//! only as keyed hashes, so the same state always renders the same bytes.

use crate::engine::intern::Slots;
use crate::engine::score::{decay, round4};
use crate::engine::state::{Account, Device, Evidence, WEIGHT_ONE};
use crate::ids::Key;
use crate::keyed::tag_hex;
use crate::time::{Millis, format_day, serialize_rfc3339};
use serde::Serialize;

/// One line of `device-links`.
#[derive(Serialize)]
struct DeviceLine<'a> {
    device_id: Key<'a>,
    links: Vec<Link<'a>>,
}

/// One link of a device.
#[derive(Serialize)]
struct Link<'a> {
    account_id: Key<'a>,
    link_type: &'static str,
    confidence: f64,
    #[serde(serialize_with = "serialize_rfc3339")]
    first_seen: Millis,
    #[serde(serialize_with = "serialize_rfc3339")]
    last_seen: Millis,
    evidence: LinkEvidence,
}

/// Why a link exists.
#[derive(Serialize)]
#[serde(untagged)]
enum LinkEvidence {
    /// The device signed in to the account.
    SignIn {
        /// Always `"sign_in"`.
        signal: &'static str,
        /// Signed-in events seen.
        events: u32,
    },
    /// The device was repeatedly seen beside the account's signed-in use.
    CoLocation {
        /// Always `"co_location"`.
        signal: &'static str,
        /// The account's score (see ARCHITECTURE.md).
        score: f64,
        /// The account's share of all the device's evidence.
        share: f64,
        /// Distinct days of evidence.
        days: u16,
        /// Distinct address buckets of evidence.
        buckets: u16,
        /// Distinct days of close use: the device seen minutes from the
        /// account's signed-in use (`linking.close_gap_minutes`).
        close_days: u16,
        /// Days the device was seen at all over the same window.
        active_days: u16,
        /// `close_days / active_days`, the share of the device's days
        /// spent beside the account.
        coverage: f64,
        /// The strongest supporting bucket-days.
        support: Vec<Support>,
    },
}

/// One supporting bucket-day of an inferred link.
#[derive(Serialize)]
struct Support {
    /// Keyed hash of the address bucket (never the address).
    bucket: String,
    /// UTC day.
    day: String,
    /// Smallest gap between the device and the account's signed-in use.
    gap_seconds: u16,
    /// Distinct devices on the bucket that day.
    bucket_devices: u8,
    /// Distinct signed-in accounts on the bucket that day.
    bucket_accounts: u8,
    /// Weight after decay to the decision day.
    weight: f64,
}

/// One line of `account-devices`.
#[derive(Serialize)]
struct AccountLine<'a> {
    account_id: Key<'a>,
    devices: Vec<AccountDevice<'a>>,
}

/// One device of an account.
#[derive(Serialize)]
struct AccountDevice<'a> {
    device_id: &'a str,
    link_type: &'static str,
    confidence: f64,
    #[serde(serialize_with = "serialize_rfc3339")]
    last_seen: Millis,
}

fn fixed(x: u32) -> f64 {
    round4(f64::from(x) / f64::from(WEIGHT_ONE))
}

/// Appends a rendered line (no newline) to `out`; false (and nothing
/// appended) for `None`. The bulk writers reuse one buffer for every line.
fn append_line<T: Serialize>(out: &mut Vec<u8>, line: Option<T>) -> bool {
    let Some(line) = line else {
        return false;
    };
    let len = out.len();
    // Serializing into memory fails only on a non-string map key, which
    // these records do not have; undo a partial line all the same.
    let written = serde_json::to_writer(&mut *out, &line).is_ok();
    if !written {
        out.truncate(len);
    }
    written
}

/// What a device's line says, for [`device_line`] and
/// [`write_device_line`].
pub(crate) struct DeviceArgs<'a, 's> {
    /// The device's id.
    pub id: Key<'a>,
    /// Its state, buffered sign-ins merged in.
    pub dev: &'a Device,
    /// The accounts, for their ids.
    pub accounts: &'a Slots<Account>,
    /// Whether an account (slot) shows this device (its device cap).
    pub shown: &'s mut dyn FnMut(u32) -> bool,
    /// `linking.horizon_days`, to decay the supporting evidence.
    pub horizon_days: i64,
    /// `linking.max_support`: supporting bucket-days listed.
    pub max_support: usize,
}

/// Renders a device's line, or `None` if it shows no links.
pub(crate) fn device_line(args: DeviceArgs<'_, '_>) -> Option<String> {
    serde_json::to_string(&device_record(args)?).ok()
}

/// Appends a device's line (no newline) to `out`; false if it shows no
/// links.
pub(crate) fn write_device_line(out: &mut Vec<u8>, args: DeviceArgs<'_, '_>) -> bool {
    append_line(out, device_record(args))
}

fn device_record<'a>(args: DeviceArgs<'a, '_>) -> Option<DeviceLine<'a>> {
    let DeviceArgs {
        id,
        dev,
        accounts,
        shown,
        horizon_days,
        max_support,
    } = args;
    let mut links: Vec<Link> = dev
        .logins
        .iter()
        .filter(|l| shown(l.account))
        .map(|l| Link {
            account_id: accounts.id(l.account),
            link_type: "login",
            confidence: 1.0,
            first_seen: l.first_seen,
            last_seen: l.last_seen,
            evidence: LinkEvidence::SignIn {
                signal: "sign_in",
                events: l.events,
            },
        })
        .collect();
    if let Some(i) = dev.inferred.as_ref().filter(|i| shown(i.account)) {
        let mut support: Vec<(f64, &Evidence)> = dev
            .evidence
            .iter()
            .filter(|e| e.account == i.account)
            .map(|e| {
                (
                    round4(
                        f64::from(e.weight) / f64::from(WEIGHT_ONE)
                            * decay(e.day, i.decided_day, horizon_days),
                    ),
                    e,
                )
            })
            .filter(|(w, _)| *w > 0.0)
            .collect();
        support.sort_by(|(wa, a), (wb, b)| {
            wb.total_cmp(wa)
                .then(b.day.cmp(&a.day))
                .then(a.bucket.cmp(&b.bucket))
        });
        support.truncate(max_support);
        links.push(Link {
            account_id: accounts.id(i.account),
            link_type: "inferred",
            confidence: fixed(i.confidence.into()),
            first_seen: i.first_seen,
            last_seen: i.last_seen,
            evidence: LinkEvidence::CoLocation {
                signal: "co_location",
                score: fixed(i.score),
                share: fixed(i.share.into()),
                days: i.days,
                buckets: i.buckets,
                close_days: i.close_days,
                active_days: i.active_days,
                coverage: round4(f64::from(i.close_days) / f64::from(i.active_days.max(1))),
                support: support
                    .into_iter()
                    .map(|(w, e)| Support {
                        bucket: tag_hex(e.bucket),
                        day: format_day(i64::from(e.day)),
                        gap_seconds: e.gap_s,
                        bucket_devices: e.bucket_devices,
                        bucket_accounts: e.bucket_accounts,
                        weight: w,
                    })
                    .collect(),
            },
        });
    }
    if links.is_empty() {
        return None;
    }
    links.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    Some(DeviceLine {
        device_id: id,
        links,
    })
}

/// One device on an account's line, and where the account's device cap
/// ranks it. A device stage builds these for the accounts of its devices;
/// an account stage merges them from every partition and ranks them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AccountEntry {
    /// The device.
    pub device_id: Box<str>,
    /// A sign-in link (else an inferred one).
    pub login: bool,
    /// Confidence in fixed point (`WEIGHT_ONE` is 1.0).
    pub confidence: u32,
    /// Last use, as published.
    pub last_seen: Millis,
    /// The cap's order, greatest first: sign-in links before inferred
    /// ones, then confidence, then last use. A sign-in ranks by its
    /// state; a buffered one only when it is a new link, because a
    /// buffered refresh of a known link publishes nothing until it is
    /// applied (`engine/early.rs`), so it must not move the boundary.
    pub rank: (bool, u32, Millis),
}

/// The entry of device `d` (state `dev`) on account `a`'s line, if it
/// shows one: `buffered` is the latest buffered sign-in of `d` to `a` and
/// the time a buffered-only link ranks by; `inferred_hidden` whether
/// buffered sign-ins hide `d`'s inferred link.
pub(crate) fn account_entry(
    a: u32,
    id: Key<'_>,
    dev: &Device,
    buffered: Option<(Millis, Millis)>,
    inferred_hidden: bool,
) -> Option<AccountEntry> {
    let login = dev.login(a).map(|l| l.last_seen);
    if let Some(last) = login.max(buffered.map(|b| b.0)) {
        let ranked = login.or(buffered.map(|b| b.1)).unwrap_or(last);
        return Some(AccountEntry {
            device_id: id.into(),
            login: true,
            confidence: WEIGHT_ONE,
            last_seen: last,
            rank: (true, WEIGHT_ONE, ranked),
        });
    }
    if inferred_hidden {
        return None;
    }
    let i = dev.inferred.as_ref().filter(|i| i.account == a)?;
    Some(AccountEntry {
        device_id: id.into(),
        login: false,
        confidence: i.confidence.into(),
        last_seen: i.last_seen,
        rank: (false, i.confidence.into(), i.last_seen),
    })
}

/// Which of an account's `entries` it shows under a cap of `max`
/// (indexes into `entries`): all of them at or below the cap, else the
/// `max` best ranked (ties: the smaller device id).
pub fn shown_entries(entries: &[AccountEntry], max: usize) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..entries.len()).collect();
    if ranked.len() > max {
        ranked.sort_unstable_by(|&x, &y| {
            let (x, y) = (&entries[x], &entries[y]);
            y.rank
                .cmp(&x.rank)
                .then_with(|| x.device_id.cmp(&y.device_id))
        });
        ranked.truncate(max);
    }
    ranked
}

/// Renders an account's line from its shown entries (in any order), or
/// `None` if there are none.
pub fn account_line(id: Key<'_>, entries: &[AccountEntry]) -> Option<String> {
    serde_json::to_string(&account_record(id, entries)?).ok()
}

/// Appends an account's line (no newline) to `out`; false if it has no
/// entries.
pub(crate) fn write_account_line(out: &mut Vec<u8>, id: Key<'_>, entries: &[AccountEntry]) -> bool {
    append_line(out, account_record(id, entries))
}

fn account_record<'a>(id: Key<'a>, entries: &'a [AccountEntry]) -> Option<AccountLine<'a>> {
    if entries.is_empty() {
        return None;
    }
    let mut out: Vec<AccountDevice> = entries
        .iter()
        .map(|e| AccountDevice {
            device_id: &e.device_id,
            link_type: if e.login { "login" } else { "inferred" },
            confidence: if e.login { 1.0 } else { fixed(e.confidence) },
            last_seen: e.last_seen,
        })
        .collect();
    out.sort_by(|x, y| x.device_id.cmp(y.device_id));
    Some(AccountLine {
        account_id: id,
        devices: out,
    })
}
