//! Synthetic traffic for idlink: a population simulator that writes an
//! `events.jsonl` stream plus the ground truth behind it, an evaluator that
//! scores a `device-links.jsonl` file against that truth, and a naive
//! co-location baseline to show how hard the generated traps are.
//!
//! The simulator is deterministic for a given [`Scenario`] (same seed, same
//! bytes) and streams one simulated day at a time so that million-device
//! scenarios stay fast and memory-light.

pub mod baseline;
pub mod evaluate;
pub mod scenario;

mod activity;
mod agents;
mod bots;
mod disorder;
mod error;
mod event;
mod ids;
mod jsonl;
mod links;
mod net;
mod population;
mod privacy;
mod rng;
mod timefmt;
mod truth;

pub use baseline::naive_baseline;
pub use error::SimError;
pub use evaluate::{Evaluation, PairCount, WrongLink, evaluate};
pub use scenario::{Scenario, SimStats};
pub use truth::{AccountTruth, DeviceTruth, ScenarioTruth, Truth};
