//! The stages in one process: every stream is a queue, and every input is
//! carried through all the stages before the next is taken. This is what
//! a deployment over Kafka topics does with each stream on a topic; run in
//! one process it shows that the stages, however many partitions each
//! has, end in the graph of one engine (the property tests).
//!
//! A device partition takes the bucket stage's messages only while it
//! waits for them ([`Engine::waiting_for_buckets`]) and new input only
//! while it does not, as a deployment must for replays to repeat.

use super::{AccountStage, BucketStage, ToBuckets, ToDevices, bucket_partition, partition_of};
use crate::addr::AddressClassifier;
use crate::config::Config;
use crate::engine::Engine;
use crate::event::Event;
use crate::time::Millis;
use std::collections::{BTreeMap, VecDeque};

/// Input of a device partition, in the order its stream carries it.
#[derive(Debug)]
enum Input {
    /// One of its device events, or a privacy request (every partition's).
    Event(u32, Event),
    /// How far an input partition has got.
    Watermark(u32, Millis),
    /// Everything was read: release and count the open day so far.
    Flush,
    /// The input ended.
    Finish,
}

/// The three stages, `partitions` partitions each, and the folded output
/// topics.
pub struct Pipeline {
    /// Device stage partitions.
    devices: Vec<Engine>,
    /// Each device partition's input stream, not yet taken.
    inputs: Vec<VecDeque<Input>>,
    /// Each device partition's stream from the bucket stage, not yet taken.
    evidence: Vec<VecDeque<ToDevices>>,
    /// Bucket stage partitions.
    buckets: Vec<BucketStage>,
    /// Account stage partitions.
    accounts: Vec<AccountStage>,
    /// `device-links`, folded by key.
    device_links: BTreeMap<String, String>,
    /// `account-devices`, folded by key.
    account_devices: BTreeMap<String, String>,
}

impl Pipeline {
    /// A pipeline with `partitions` partitions per stage.
    pub fn new(config: &Config, classifier: &AddressClassifier, partitions: u32) -> Self {
        let n = partitions.max(1);
        let devices = (0..n)
            .map(|k| {
                let mut e = Engine::device_stage(config, classifier.clone(), k, n);
                e.track_changes();
                e
            })
            .collect();
        Pipeline {
            devices,
            inputs: (0..n).map(|_| VecDeque::new()).collect(),
            evidence: (0..n).map(|_| VecDeque::new()).collect(),
            buckets: (0..n).map(|k| BucketStage::new(config, k, n)).collect(),
            accounts: (0..n)
                .map(|_| AccountStage::new(config.linking.max_devices_per_account, n))
                .collect(),
            device_links: BTreeMap::new(),
            account_devices: BTreeMap::new(),
        }
    }

    fn n(&self) -> u32 {
        self.devices.len() as u32
    }

    /// Takes one input event from input partition `source`: a device event
    /// goes to its device's partition, a privacy request to all; every
    /// device partition hears how far `source` has got.
    pub fn ingest(&mut self, source: u32, event: Event) {
        let n = self.n();
        let owner = match (&event.device, event.kind.is_privacy()) {
            (Some(d), false) => Some(partition_of(d.as_str().as_bytes(), n)),
            _ => None,
        };
        for (k, q) in self.inputs.iter_mut().enumerate() {
            if owner.is_none_or(|o| o == k as u32) {
                q.push_back(Input::Event(source, event.clone()));
            } else {
                q.push_back(Input::Watermark(source, event.ts));
            }
        }
        self.pump();
    }

    /// Every input read: every partition releases what it holds and the
    /// open day counts provisionally (`Engine::flush`).
    pub fn flush(&mut self) {
        for q in &mut self.inputs {
            q.push_back(Input::Flush);
        }
        self.pump();
    }

    /// End of input: the last day closes (`Engine::finish`).
    pub fn finish(&mut self) {
        for q in &mut self.inputs {
            q.push_back(Input::Finish);
        }
        self.pump();
    }

    /// Moves messages between the stages until none is left.
    fn pump(&mut self) {
        let n = self.n();
        loop {
            let mut moved = false;
            for k in 0..self.devices.len() {
                let e = &mut self.devices[k];
                loop {
                    let next = if e.waiting_for_buckets() {
                        self.evidence[k].pop_front().map(|m| e.deliver(m))
                    } else {
                        self.inputs[k].pop_front().map(|i| match i {
                            Input::Event(s, ev) => {
                                e.ingest(s, ev);
                            }
                            Input::Watermark(s, ts) => e.observe(s, ts),
                            Input::Flush => e.flush(),
                            Input::Finish => e.finish(),
                        })
                    };
                    if next.is_none() {
                        break;
                    }
                    moved = true;
                }
                for msg in self.devices[k].take_for_buckets() {
                    moved = true;
                    match &msg {
                        ToBuckets::Sighting(s) => {
                            let b = bucket_partition(s.bucket, n) as usize;
                            self.buckets[b].receive(k as u32, msg);
                        }
                        _ => {
                            for b in &mut self.buckets {
                                b.receive(k as u32, msg.clone());
                            }
                        }
                    }
                }
            }
            for b in 0..self.buckets.len() {
                for (k, msg) in self.buckets[b].take_for_devices() {
                    moved = true;
                    self.evidence[k as usize].push_back(msg);
                }
            }
            for k in 0..self.devices.len() {
                let changes = self.devices[k].take_changes();
                for (key, line) in changes.devices {
                    fold(&mut self.device_links, key, line);
                }
                for part in self.devices[k].take_account_parts() {
                    moved = true;
                    let a = partition_of(part.account.as_bytes(), n) as usize;
                    self.accounts[a].receive(part);
                }
            }
            for a in 0..self.accounts.len() {
                for (key, line) in self.accounts[a].take_lines() {
                    fold(&mut self.account_devices, key, line);
                }
                for (k, msg) in self.accounts[a].take_for_devices() {
                    moved = true;
                    self.devices[k as usize].deliver_shown(msg);
                }
            }
            if !moved {
                return;
            }
        }
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
    pub fn device_partitions(&self) -> &[Engine] {
        &self.devices
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
