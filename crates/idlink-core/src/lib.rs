//! The pure core of idlink.
//!
//! Everything that decides what the device graph looks like lives here:
//! the input contract and its validation ([`decode`]), address
//! classification ([`addr`]), configuration ([`config`]), and the event-time
//! linking engine ([`engine`]). The crate performs no I/O and never reads the
//! wall clock: callers hand it bytes and a notion of "now" for validation,
//! and take rendered output lines back. The build enforces this boundary:
//! there is no tokio, rdkafka or file-system code among its dependencies.

pub mod addr;
pub mod agent;
pub mod config;
pub mod decode;
pub mod engine;
pub mod event;
mod format;
pub mod ids;
pub mod keyed;
pub mod output;
pub mod time;

pub use addr::{AddressClass, AddressClassifier, Bucket};
pub use agent::Platform;
pub use config::{Config, ConfigError};
pub use decode::{Decoder, RejectReason, Rejected};
pub use engine::{Engine, EngineStats, Ingested};
pub use event::{Event, EventKind, PrivacyTarget};
pub use ids::{AccountId, DeviceId};
pub use keyed::KeyedHasher;
pub use time::Millis;
