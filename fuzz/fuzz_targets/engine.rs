//! Fuzzes the whole core path of a replay: the input is split into lines,
//! each line is decoded with a fixed clock, accepted events go into one
//! engine (source 0), and after `finish` every output line is rendered.
//! Checks that nothing panics and that the output is well formed.

#![no_main]

use idlink_core::{AddressClassifier, Config, Decoder, Engine, Millis};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;

/// The validating clock: 2030-01-01T00:00:00Z.
const NOW: Millis = Millis(1_893_456_000_000);

static CONFIG: LazyLock<Config> = LazyLock::new(Config::default);
static DECODER: LazyLock<Decoder> = LazyLock::new(|| Decoder::new(&CONFIG.input));

fn check_line(line: &str, list: &str) {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"));
    let Some(items) = v[list].as_array() else { panic!("no `{list}` array: {line}") };
    assert!(!items.is_empty(), "empty `{list}`: {line}");
    let mut inferred = 0;
    for x in items {
        let c = x["confidence"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&c), "confidence {c} outside [0, 1]: {line}");
        if x["link_type"] == "inferred" {
            inferred += 1;
        }
    }
    assert!(inferred <= 1 || list == "devices", "more than one inferred link on a device: {line}");
}

fuzz_target!(|data: &[u8]| {
    let config = &*CONFIG;
    let mut engine = Engine::new(config, AddressClassifier::new(config.addresses.ipv6_prefix_len, &[]));
    engine.track_changes();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(event) = DECODER.decode(line, NOW) {
            engine.ingest(0, event);
        }
    }
    engine.finish();
    for line in engine.device_lines() {
        check_line(&line, "links");
    }
    for line in engine.account_lines() {
        check_line(&line, "devices");
    }
    for ack in engine.take_privacy_acks() {
        assert_eq!(ack.id_hash.len(), 64, "ack hash is not HMAC-SHA256 hex: {ack:?}");
    }
    let changes = engine.take_changes();
    for line in changes.devices.iter().chain(&changes.accounts).filter_map(|(_, v)| v.as_ref()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("change is not JSON ({e}): {line}"));
    }
});
