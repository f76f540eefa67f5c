//! Fuzzes the whole core path of a replay: the input is split into lines,
//! each line is decoded with a fixed clock, accepted events go into one
//! engine, and after `finish` every output line is rendered. Checks that
//! nothing panics and that the output is well formed.
//!
//! A few control lines (not JSON, so never events) reach the rest of the
//! engine's API: `!flush`, `!restart` (snapshot and restore), `!idle` /
//! `!active` (the current source), `!source<digit>` (switch the source of
//! the following events) and `!changes` (drain the change log).

#![no_main]

use idlink_core::Engine;
use libfuzzer_sys::fuzz_target;

mod common;
use common::{CONFIG, DECODER, NOW, classifier};
use serde_json::Value;

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("output line is not JSON ({e}): {line}"))
}

fn check_line(line: &str, list: &str) {
    let v = parse(line);
    let Some(items) = v[list].as_array() else {
        panic!("no `{list}` array: {line}")
    };
    assert!(!items.is_empty(), "empty `{list}`: {line}");
    let mut inferred = 0;
    for x in items {
        let c = x["confidence"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (0.0..=1.0).contains(&c),
            "confidence {c} outside [0, 1]: {line}"
        );
        if x["link_type"] == "inferred" {
            inferred += 1;
        }
    }
    assert!(
        inferred <= 1 || list == "devices",
        "more than one inferred link on a device: {line}"
    );
}

fn drain_changes(engine: &mut Engine) {
    let changes = engine.take_changes();
    for line in changes
        .devices
        .iter()
        .chain(&changes.accounts)
        .filter_map(|(_, v)| v.as_ref())
    {
        parse(line);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(&CONFIG, classifier());
    engine.track_changes();
    let mut source = 0u32;
    for line in data.split(|&b| b == b'\n') {
        match line {
            b"!flush" => engine.flush(),
            b"!restart" => {
                let bytes = engine.snapshot();
                engine =
                    Engine::restore(&CONFIG, classifier(), &bytes).expect("own snapshot restores");
                engine.track_changes();
            }
            b"!idle" => engine.set_idle(source, true),
            b"!active" => engine.set_idle(source, false),
            b"!changes" => drain_changes(&mut engine),
            [b'!', b's', b'o', b'u', b'r', b'c', b'e', d @ b'0'..=b'9'] => {
                source = u32::from(d - b'0')
            }
            _ => {
                if let Ok(event) = DECODER.decode(line, NOW) {
                    engine.ingest(source, event);
                }
            }
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
        assert_eq!(
            ack.id_hash.len(),
            64,
            "ack hash is not HMAC-SHA256 hex: {ack:?}"
        );
    }
    drain_changes(&mut engine);
});
