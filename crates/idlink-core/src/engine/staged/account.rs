//! The account stage: `account-devices` lines and the account cap.
//!
//! Each device partition sends, for every account whose devices there
//! changed, its part of the account's line ([`AccountPart`]). An account
//! partition merges the parts into the line, applies the device cap
//! (`output::shown_entries`, the same ranking a single engine uses) and
//! tells the device partitions which of their links the account does not
//! show, so that both topics agree.

use super::{AccountPart, Shown, partition_of};
use crate::output::{self, AccountEntry};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped whenever an account partition's snapshot layout changes.
const STAGE_VERSION: u32 = 1;

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
        }
    }

    /// The partition's snapshot (take its outgoing records first).
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&(STAGE_VERSION, self)).unwrap_or_default()
    }

    /// An account partition from its snapshot, applying a cap of
    /// `max_devices`.
    pub fn restore(max_devices: usize, bytes: &[u8]) -> Result<Self, crate::engine::SnapshotError> {
        let found = postcard::take_from_bytes::<u32>(bytes)?.0;
        if found != STAGE_VERSION {
            return Err(crate::engine::SnapshotError::Version { found });
        }
        let (_, mut a) = postcard::from_bytes::<(u32, AccountStage)>(bytes)?;
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

    /// Takes one device partition's part of an account's line.
    pub fn receive(&mut self, part: AccountPart) {
        let view = self.accounts.entry(part.account.clone()).or_default();
        if part.entries.is_empty() {
            view.parts.remove(&part.partition);
        } else {
            view.parts.insert(part.partition, part.entries);
        }
        let entries: Vec<AccountEntry> = view.parts.values().flatten().cloned().collect();
        let shown = output::shown_entries(&entries, self.max_devices);
        let mut visible = vec![false; entries.len()];
        for &i in &shown {
            visible[i] = true;
        }
        let hidden: Vec<Box<str>> = entries
            .iter()
            .zip(&visible)
            .filter(|(_, v)| !**v)
            .map(|(e, _)| e.device_id.clone())
            .collect();
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
        let shown: Vec<AccountEntry> = entries
            .into_iter()
            .zip(visible)
            .filter_map(|(e, v)| v.then_some(e))
            .collect();
        let line = output::account_line(&part.account, &shown);
        if view.parts.is_empty() {
            self.accounts.remove(&part.account);
        }
        self.lines.push((part.account.into(), line));
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
