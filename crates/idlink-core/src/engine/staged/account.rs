//! The account stage: `account-devices` lines and the account cap.
//!
//! Each device partition sends, for every account whose devices there
//! changed, its part of the account's line ([`AccountPart`]). An account
//! partition merges the parts into the line, applies the device cap
//! (`output::shown_entries`, the same ranking a single engine uses) and
//! tells the device partitions which of their links the account does not
//! show, so that both topics agree.

use super::{AccountPart, Applied, Shown, ToAccounts, partition_of};
use crate::engine::snapshot::read_versioned;
use crate::engine::{PrivacyAck, Removed};
use crate::event::EventKind;
use crate::ids::Key;
use crate::output::{self, AccountEntry};
use crate::time::Millis;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped whenever an account partition's snapshot layout changes, with
/// what each layout still read lacks (the layout before had no added
/// fields, and was read as one without the phone platform).
const STAGE_VERSIONS: &[(u32, u8)] = &[(1, 0), (0, crate::format::PLATFORM)];

/// A privacy request: `ts`, kind, about a device, id hash.
type Request = (Millis, EventKind, bool, String);

/// Acknowledged requests remembered, so that one applied again (by a
/// restored partition) is not acknowledged twice; the oldest go first.
const ACKED_KEPT: usize = 100_000;

/// What an account partition keeps per account.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AccountView {
    /// Entries by sending device partition.
    parts: BTreeMap<u32, Vec<AccountEntry>>,
    /// Devices the account does not show (over its cap).
    hidden: Vec<Box<str>>,
}

/// One partition of the account stage. Its snapshot is its serde form,
/// without the cap, which comes from the config.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccountStage {
    /// Devices an account shows at most.
    #[serde(skip)]
    max_devices: usize,
    /// Device partitions, to address `Shown` messages.
    device_partitions: u32,
    /// Accounts with devices.
    accounts: FxHashMap<Box<str>, AccountView>,
    /// Changed `account-devices` records: `(account, line or tombstone)`.
    #[serde(skip)]
    lines: Vec<(String, Option<String>)>,
    /// Messages for device partitions.
    #[serde(skip)]
    out: Vec<(u32, Shown)>,
    /// Privacy requests of this partition's id hashes, waiting for every
    /// device and bucket partition to apply them: who has, and the sum
    /// of what they removed.
    applying: BTreeMap<Request, (Vec<(u8, u32)>, Removed)>,
    /// Requests acknowledged (by `ts`, oldest first).
    acked: std::collections::BTreeSet<Request>,
    /// Acknowledgements to publish.
    #[serde(skip)]
    acks: Vec<PrivacyAck>,
}

impl AccountStage {
    /// An account partition applying a cap of `max_devices` devices.
    pub fn new(max_devices: usize, device_partitions: u32) -> Self {
        AccountStage {
            max_devices,
            device_partitions: device_partitions.max(1),
            accounts: FxHashMap::default(),
            lines: Vec::new(),
            out: Vec::new(),
            applying: BTreeMap::new(),
            acked: Default::default(),
            acks: Vec::new(),
        }
    }

    /// The partition's snapshot (take its outgoing records first).
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&(STAGE_VERSIONS[0].0, self)).unwrap_or_default()
    }

    /// An account partition from its snapshot, applying a cap of
    /// `max_devices`.
    pub fn restore(max_devices: usize, bytes: &[u8]) -> Result<Self, crate::engine::SnapshotError> {
        let mut a: AccountStage = read_versioned(bytes, STAGE_VERSIONS)?;
        a.max_devices = max_devices;
        Ok(a)
    }

    /// Accounts held.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether no account is held.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Takes a message for this account partition.
    pub fn receive(&mut self, msg: ToAccounts) {
        match msg {
            ToAccounts::Part(p) => self.take_part(p),
            ToAccounts::Applied(a) => self.take_applied(a),
        }
    }

    /// Notes a partition's application of a privacy request; the request
    /// is acknowledged once every device and bucket partition has applied
    /// it (each counted once, however often a restored partition says so).
    fn take_applied(&mut self, a: Applied) {
        let key: Request = (a.ts, a.kind, a.device, a.id_hash);
        if self.acked.contains(&key) {
            return;
        }
        let entry = self.applying.entry(key.clone()).or_default();
        if entry.0.contains(&a.by) {
            return;
        }
        entry.0.push(a.by);
        entry.1.add(&a.removed);
        if entry.0.len() < 2 * self.device_partitions as usize {
            return;
        }
        let Some((_, removed)) = self.applying.remove(&key) else {
            return;
        };
        self.acks.push(PrivacyAck {
            ts: key.0,
            kind: key.1.as_str(),
            subject: if key.2 { "device" } else { "account" },
            id_hash: key.3.clone(),
            removed,
        });
        self.acked.insert(key);
        while self.acked.len() > ACKED_KEPT {
            self.acked.pop_first();
        }
    }

    /// Takes the acknowledgements of fully applied privacy requests.
    pub fn take_acks(&mut self) -> Vec<PrivacyAck> {
        std::mem::take(&mut self.acks)
    }

    /// Takes one device partition's part of an account's line.
    fn take_part(&mut self, part: AccountPart) {
        let view = self.accounts.entry(part.account.clone()).or_default();
        if part.entries.is_empty() {
            view.parts.remove(&part.partition);
        } else {
            view.parts.insert(part.partition, part.entries);
        }
        let (hidden, line) = render(&part.account, view, self.max_devices);
        let n = self.device_partitions;
        let mut tell = |device: &str, shown: bool| {
            self.out.push((
                partition_of(device.as_bytes(), n),
                Shown {
                    device: device.into(),
                    account: part.account.clone(),
                    shown,
                },
            ));
        };
        for d in hidden.iter().filter(|d| !view.hidden.contains(d)) {
            tell(d, false);
        }
        for d in view.hidden.iter().filter(|d| !hidden.contains(d)) {
            tell(d, true);
        }
        view.hidden = hidden;
        if view.parts.is_empty() {
            self.accounts.remove(&part.account);
        }
        self.lines.push((part.account.into(), line));
    }

    /// Renders these accounts' `account-devices` records again with the
    /// next [`AccountStage::take_lines`]: the line of an account it holds,
    /// a tombstone for one it does not.
    pub fn republish(&mut self, accounts: &[Box<str>]) {
        for id in accounts {
            let line = self
                .accounts
                .get(id)
                .and_then(|view| render(id, view, self.max_devices).1);
            self.lines.push((id.to_string(), line));
        }
    }

    /// Takes the changed `account-devices` records.
    pub fn take_lines(&mut self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut self.lines)
    }

    /// Takes the messages for device partitions: `(partition, message)`.
    pub fn take_for_devices(&mut self) -> Vec<(u32, Shown)> {
        std::mem::take(&mut self.out)
    }
}

/// An account's line from its parts, capped at `max_devices`, and the
/// devices the cap hides.
fn render(
    account: &str,
    view: &AccountView,
    max_devices: usize,
) -> (Vec<Box<str>>, Option<String>) {
    let entries: Vec<AccountEntry> = view.parts.values().flatten().cloned().collect();
    let shown = output::shown_entries(&entries, max_devices);
    let mut visible = vec![false; entries.len()];
    for &i in &shown {
        visible[i] = true;
    }
    let mut hidden = Vec::new();
    let mut lines = Vec::with_capacity(shown.len());
    for (e, v) in entries.into_iter().zip(visible) {
        if v {
            lines.push(e);
        } else {
            hidden.push(e.device_id.clone());
        }
    }
    (hidden, output::account_line(Key::of(account), &lines))
}
