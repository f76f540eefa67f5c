//! What every fuzz target shares: the fixed validating clock, the default
//! config, its decoder and its address classifier.

#![allow(dead_code)]

use idlink_core::{AddressClassifier, Config, Decoder, Millis};
use std::sync::LazyLock;

/// The validating clock: 2030-01-01T00:00:00Z.
pub const NOW: Millis = Millis(1_893_456_000_000);

pub static CONFIG: LazyLock<Config> = LazyLock::new(Config::default);
pub static DECODER: LazyLock<Decoder> = LazyLock::new(|| Decoder::new(&CONFIG.input));

/// The default config's classifier, with no exclusion lists.
pub fn classifier() -> AddressClassifier {
    AddressClassifier::new(CONFIG.addresses.ipv6_prefix_len, &[])
}
