//! The stages in one process, over append-only streams.
//!
//! Every stream between stages is a log, as a Kafka partition is: senders
//! append, and each stage partition reads its input logs from its own
//! positions. Every input is carried through all the stages before the
//! next is taken. Run this way, the stages show that they end in the graph
//! of one engine however many partitions each has (the property tests),
//! and that a stage partition restored from its snapshot and its positions
//! (a crash: everything it did since is lost, everything it sent stays in
//! the logs and is sent again) changes nothing.
//!
//! A device partition takes the bucket stage's messages only while it
//! waits for them ([`Engine::waiting_for_buckets`]) and new input only
//! while it does not, as a deployment must for replays to repeat; while it
//! waits, it previews the sign-ins of the input it has not taken
//! ([`Engine::preview`]), as a deployment does.

use super::{
    AccountStage, BucketStage, Sent, Shown, StageInput, ToAccounts, ToBuckets, ToDevices,
    partition_of,
};
use crate::addr::AddressClassifier;
use crate::config::Config;
use crate::engine::PrivacyAck;
use crate::engine::{Engine, SnapshotError};
use crate::event::Event;
use std::collections::BTreeMap;

/// Which stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Keyed by device.
    Devices,
    /// Keyed by address bucket.
    Buckets,
    /// Keyed by account.
    Accounts,
}

/// A device partition and where it is in its three input logs
/// (input, evidence, shown), and how far it has previewed its input.
struct DeviceTask {
    engine: Engine,
    at: [usize; 3],
    previewed: usize,
    saved: Option<(Vec<u8>, [usize; 3])>,
}

/// A bucket partition and where it is in its sightings log.
struct BucketTask {
    stage: BucketStage,
    at: usize,
    saved: Option<(Vec<u8>, usize)>,
}

/// An account partition and where it is in its links log.
struct AccountTask {
    stage: AccountStage,
    at: usize,
    saved: Option<(Vec<u8>, usize)>,
}

/// The three stages, `partitions` partitions each, their streams, and the
/// folded output topics.
pub struct Pipeline {
    /// To build and restore partitions.
    config: Config,
    classifier: AddressClassifier,
    devices: Vec<DeviceTask>,
    buckets: Vec<BucketTask>,
    accounts: Vec<AccountTask>,
    /// Per device partition: its input, the bucket stage's messages to
    /// it, and the account stage's.
    inputs: Vec<Vec<StageInput>>,
    /// Offsets given to each input partition's events so far.
    offsets: BTreeMap<u32, i64>,
    evidence: Vec<Vec<Sent<ToDevices>>>,
    shown: Vec<Vec<Shown>>,
    /// Per bucket partition: the device stage's messages to it.
    sightings: Vec<Vec<Sent<ToBuckets>>>,
    /// Per account partition: the device stage's parts of its lines, and
    /// the privacy requests applied.
    links: Vec<Vec<ToAccounts>>,
    /// Privacy acknowledgements published.
    acks: Vec<PrivacyAck>,
    /// `device-links`, folded by key.
    device_links: BTreeMap<String, String>,
    /// `account-devices`, folded by key.
    account_devices: BTreeMap<String, String>,
    /// The bucket stage reads nothing meanwhile (a slow hop): device
    /// partitions wait for it at a day's end while their input grows.
    buckets_held: bool,
    /// Flush rounds requested.
    rounds: u64,
}

impl Pipeline {
    /// A pipeline with `partitions` partitions per stage.
    pub fn new(config: &Config, classifier: &AddressClassifier, partitions: u32) -> Self {
        let n = partitions.max(1);
        let mut p = Pipeline {
            config: config.clone(),
            classifier: classifier.clone(),
            devices: Vec::new(),
            buckets: Vec::new(),
            accounts: Vec::new(),
            inputs: (0..n).map(|_| Vec::new()).collect(),
            offsets: BTreeMap::new(),
            evidence: (0..n).map(|_| Vec::new()).collect(),
            shown: (0..n).map(|_| Vec::new()).collect(),
            sightings: (0..n).map(|_| Vec::new()).collect(),
            links: (0..n).map(|_| Vec::new()).collect(),
            acks: Vec::new(),
            device_links: BTreeMap::new(),
            account_devices: BTreeMap::new(),
            buckets_held: false,
            rounds: 0,
        };
        for k in 0..n {
            p.devices.push(DeviceTask {
                engine: p.fresh_device(k),
                at: [0; 3],
                previewed: 0,
                saved: None,
            });
            p.buckets.push(BucketTask {
                stage: BucketStage::new(config, k, n),
                at: 0,
                saved: None,
            });
            p.accounts.push(AccountTask {
                stage: AccountStage::new(config.linking.max_devices_per_account, n),
                at: 0,
                saved: None,
            });
        }
        p
    }

    fn n(&self) -> u32 {
        self.inputs.len() as u32
    }

    fn fresh_device(&self, k: u32) -> Engine {
        let mut e = Engine::device_stage(&self.config, self.classifier.clone(), k, self.n());
        e.track_changes();
        e
    }

    /// Takes one input event from input partition `source`: a device event
    /// goes to its device's partition, a privacy request to all; every
    /// device partition hears how far `source` has got.
    pub fn ingest(&mut self, source: u32, event: Event) {
        let n = self.n();
        let owner = match (&event.device, event.kind.is_privacy()) {
            (Some(d), false) => Some(partition_of(d.text().as_bytes(), n)),
            _ => None,
        };
        let offset = self.offsets.entry(source).or_insert(-1);
        *offset += 1;
        for (k, log) in self.inputs.iter_mut().enumerate() {
            if owner.is_none_or(|o| o == k as u32) {
                log.push(StageInput::Event {
                    source,
                    offset: *offset,
                    event: event.clone(),
                });
            } else {
                log.push(StageInput::Watermark {
                    source,
                    ts: event.ts,
                    idle: false,
                });
            }
        }
        self.pump();
    }

    /// Every input read: every partition releases what it holds and the
    /// open day counts provisionally (`Engine::flush`). The request
    /// reaches the device partitions one after another, as it does over
    /// Kafka, where each takes it when it gets to it: the bucket stage
    /// hears one partition's flush while the others still hold events.
    pub fn flush(&mut self) {
        // Numbered by the requests so far, not by the flushes completed: a
        // partition that waits has not taken the last request yet.
        self.rounds += 1;
        let n = self.rounds;
        for k in 0..self.devices.len() {
            self.inputs[k].push(StageInput::Flush { n });
            self.pump();
        }
    }

    /// End of input: the last day closes (`Engine::finish`).
    pub fn finish(&mut self) {
        for log in &mut self.inputs {
            log.push(StageInput::Finish);
        }
        self.pump();
    }

    /// The router restarts from an older position: the last `count`
    /// records of every device partition's input are sent again.
    pub fn resend_inputs(&mut self, count: usize) {
        for log in &mut self.inputs {
            let again: Vec<StageInput> = log[log.len().saturating_sub(count)..].to_vec();
            log.extend(again);
        }
        self.pump();
    }

    /// Holds the bucket stage (it reads nothing until released) or
    /// releases it: over Kafka, the sightings and the evidence a day close
    /// needs take their time, and device partitions wait meanwhile.
    pub fn hold_buckets(&mut self, held: bool) {
        self.buckets_held = held;
        self.pump();
    }

    /// Snapshots partition `k` of `stage` with its positions.
    pub fn checkpoint(&mut self, stage: Stage, k: usize) {
        match stage {
            Stage::Devices => {
                if let Some(t) = self.devices.get_mut(k) {
                    t.saved = Some((t.engine.stage_snapshot(), t.at));
                }
                // The snapshot ran the pending purge: publish what it changed.
                self.pump();
            }
            Stage::Buckets => {
                if let Some(t) = self.buckets.get_mut(k) {
                    t.saved = Some((t.stage.snapshot(), t.at));
                }
            }
            Stage::Accounts => {
                if let Some(t) = self.accounts.get_mut(k) {
                    t.saved = Some((t.stage.snapshot(), t.at));
                }
            }
        }
    }

    /// Partition `k` of `stage` crashes and restarts from its snapshot
    /// (or from nothing): what it did since is lost, what it sent stays.
    pub fn crash(&mut self, stage: Stage, k: usize) -> Result<(), SnapshotError> {
        match stage {
            Stage::Devices => {
                let fresh = self.fresh_device(k as u32);
                if let Some(t) = self.devices.get_mut(k) {
                    (t.engine, t.at) = match &t.saved {
                        Some((bytes, at)) => (
                            Engine::restore_stage(&self.config, self.classifier.clone(), bytes)?,
                            *at,
                        ),
                        None => (fresh, [0; 3]),
                    };
                    t.previewed = t.at[0];
                }
            }
            Stage::Buckets => {
                let n = self.n();
                if let Some(t) = self.buckets.get_mut(k) {
                    (t.stage, t.at) = match &t.saved {
                        Some((bytes, at)) => (BucketStage::restore(&self.config, bytes)?, *at),
                        None => (BucketStage::new(&self.config, k as u32, n), 0),
                    };
                }
            }
            Stage::Accounts => {
                let (max, n) = (self.config.linking.max_devices_per_account, self.n());
                if let Some(t) = self.accounts.get_mut(k) {
                    (t.stage, t.at) = match &t.saved {
                        Some((bytes, at)) => (AccountStage::restore(max, bytes)?, *at),
                        None => (AccountStage::new(max, n), 0),
                    };
                }
            }
        }
        self.pump();
        Ok(())
    }

    /// Moves messages between the stages until none is left.
    fn pump(&mut self) {
        let n = self.n();
        loop {
            let mut moved = false;
            for k in 0..self.devices.len() {
                moved |= self.run_device(k, n);
            }
            // A held bucket stage reads nothing (`hold_buckets`).
            let buckets = if self.buckets_held {
                0
            } else {
                self.buckets.len()
            };
            for b in 0..buckets {
                let t = &mut self.buckets[b];
                while let Some(msg) = self.sightings[b].get(t.at) {
                    t.stage.receive(msg.clone());
                    t.at += 1;
                    moved = true;
                }
                for (k, msg) in t.stage.take_for_devices() {
                    self.evidence[k as usize].push(msg);
                    moved = true;
                }
                for (a, msg) in t.stage.take_applied() {
                    self.links[a as usize].push(msg);
                    moved = true;
                }
            }
            for a in 0..self.accounts.len() {
                let t = &mut self.accounts[a];
                while let Some(part) = self.links[a].get(t.at) {
                    t.stage.receive(part.clone());
                    t.at += 1;
                    moved = true;
                }
                for (key, line) in t.stage.take_lines() {
                    fold(&mut self.account_devices, key, line);
                }
                self.acks.extend(t.stage.take_acks());
                for (k, msg) in t.stage.take_for_devices() {
                    self.shown[k as usize].push(msg);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Lets device partition `k` take what it may and publishes what it
    /// sends; returns whether anything moved.
    fn run_device(&mut self, k: usize, n: u32) -> bool {
        let t = &mut self.devices[k];
        let mut moved = false;
        loop {
            let e = &mut t.engine;
            if e.waiting_for_buckets() {
                let Some(msg) = self.evidence[k].get(t.at[1]) else {
                    // Sign-ins read meanwhile are shown at once, but for
                    // those an erasure read before them covers.
                    t.previewed = t.previewed.max(t.at[0]);
                    while let Some(input) = self.inputs[k].get(t.previewed) {
                        moved |= e.preview(input);
                        t.previewed += 1;
                    }
                    break;
                };
                e.deliver(msg.clone());
                t.at[1] += 1;
            } else {
                let Some(input) = self.inputs[k].get(t.at[0]) else {
                    break;
                };
                e.take_input(input.clone());
                t.at[0] += 1;
            }
            moved = true;
        }
        // What the account stage shows changes only the published lines.
        while let Some(msg) = self.shown[k].get(t.at[2]) {
            t.engine.deliver_shown(msg.clone());
            t.at[2] += 1;
            moved = true;
        }
        for (b, msg) in t.engine.take_for_buckets() {
            self.sightings[b as usize].push(msg);
            moved = true;
        }
        for (key, line) in t.engine.take_changes().devices {
            fold(&mut self.device_links, key, line);
        }
        for part in t.engine.take_account_parts() {
            let a = partition_of(part.account.as_bytes(), n) as usize;
            self.links[a].push(ToAccounts::Part(part));
            moved = true;
        }
        for (a, msg) in t.engine.take_applied() {
            self.links[a as usize].push(msg);
            moved = true;
        }
        moved
    }

    /// Takes the privacy acknowledgements published so far.
    pub fn take_privacy_acks(&mut self) -> Vec<PrivacyAck> {
        std::mem::take(&mut self.acks)
    }

    /// The folded `device-links` topic, sorted by device id.
    pub fn device_lines(&self) -> impl Iterator<Item = &str> {
        self.device_links.values().map(String::as_str)
    }

    /// The folded `account-devices` topic, sorted by account id.
    pub fn account_lines(&self) -> impl Iterator<Item = &str> {
        self.account_devices.values().map(String::as_str)
    }

    /// The device stage's partitions, for statistics.
    pub fn device_partitions(&self) -> impl Iterator<Item = &Engine> {
        self.devices.iter().map(|t| &t.engine)
    }
}

/// Applies one record to a folded topic.
fn fold(topic: &mut BTreeMap<String, String>, key: String, line: Option<String>) {
    match line {
        Some(l) => {
            topic.insert(key, l);
        }
        None => {
            topic.remove(&key);
        }
    }
}
