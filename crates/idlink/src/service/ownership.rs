//! Which instance of a consumer group does the work.
//!
//! The engine's state is the whole graph: co-location joins devices and
//! accounts across every input partition, so the partitions cannot be
//! split between instances without splitting address buckets. One
//! instance per group is therefore *active* and owns every input
//! partition; the others are *standbys* that stay out of the group (so
//! they never trigger a rebalance) and watch its membership, and the first
//! to find the group empty (the active one left, or died and missed its
//! session timeout) restores the newest snapshot and takes over.
//!
//! Two instances can still meet in the group (they start at once, or a
//! paused instance comes back): the assignment then splits the
//! partitions. The one assigned partition 0 of the events topic holds
//! (processes nothing, waits for the others to leave); every other one
//! yields: it leaves the group and becomes a standby again.

use super::config::KafkaConfig;
use super::kafka::client_config;
use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

/// What an assignment asks of this instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Every input partition is ours: process.
    Active,
    /// Another member shares the group and we hold the tie-breaking
    /// partition: process nothing and wait for it to leave.
    Hold,
    /// Another member shares the group and holds the tie-breaking
    /// partition: leave the group.
    Yield,
}

/// The role an assignment gives: all of the `input_partitions` makes this
/// instance active; otherwise partition 0 of `events_topic` breaks the tie.
pub fn role(assigned: &[(String, i32)], input_partitions: usize, events_topic: &str) -> Role {
    if input_partitions > 0 && assigned.len() >= input_partitions {
        Role::Active
    } else if assigned.iter().any(|(t, p)| t == events_topic && *p == 0) {
        Role::Hold
    } else {
        Role::Yield
    }
}

/// Watches the consumer group's membership from outside it.
pub struct GroupWatch {
    /// A client that never joins the group; it only describes it.
    client: BaseConsumer,
    /// The group to watch.
    group: String,
}

impl GroupWatch {
    /// A watcher of `kafka.group_id`.
    pub fn new(kafka: &KafkaConfig) -> Result<GroupWatch> {
        let mut c = client_config(kafka);
        c.set("group.id", format!("{}-watch", kafka.group_id));
        Ok(GroupWatch {
            client: c.create().context("creating the group watcher")?,
            group: kafka.group_id.clone(),
        })
    }

    /// Members of the group, or `None` when the brokers cannot say.
    pub fn members(&self) -> Option<usize> {
        let list = tokio::task::block_in_place(|| {
            self.client
                .fetch_group_list(Some(&self.group), Duration::from_secs(5))
        });
        match list {
            Ok(list) => Some(
                list.groups()
                    .iter()
                    .filter(|g| g.name() == self.group)
                    .filter(|g| !matches!(g.state(), "Empty" | "Dead"))
                    .map(|g| g.members().len().max(1))
                    .sum(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "describing the consumer group failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn every_partition_makes_an_instance_active() {
        let all = parts(&[("e", 0), ("e", 1), ("p", 0)]);
        assert_eq!(role(&all, 3, "e"), Role::Active);
    }

    #[test]
    fn partition_zero_of_the_events_breaks_a_tie() {
        assert_eq!(role(&parts(&[("e", 0), ("p", 0)]), 3, "e"), Role::Hold);
        assert_eq!(role(&parts(&[("e", 1)]), 3, "e"), Role::Yield);
        assert_eq!(role(&parts(&[("p", 0)]), 3, "e"), Role::Yield);
        assert_eq!(role(&[], 3, "e"), Role::Yield);
    }
}
