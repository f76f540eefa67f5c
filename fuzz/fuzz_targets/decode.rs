//! Fuzzes the input contract: any bytes either decode into an event that
//! satisfies the contract or are rejected with a reason and a non-empty
//! explanation, exactly as the serde_json-only reference decodes them.
//! Never a panic.

#![no_main]

use idlink_core::{EventKind, Millis};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{CONFIG, DECODER, NOW};

fuzz_target!(|data: &[u8]| {
    let decoded = DECODER.decode(data, NOW);
    assert_eq!(
        decoded,
        DECODER.decode_reference(data, NOW),
        "the fast path and serde_json disagree"
    );
    match decoded {
        Ok(e) => {
            let input = &CONFIG.input;
            let floor = Millis::parse_rfc3339(&input.min_ts).expect("default min_ts parses");
            assert!(e.ts >= floor, "accepted ts {} before the floor", e.ts);
            assert!(
                e.ts <= NOW.saturating_add(input.max_future_skew_minutes * 60_000),
                "accepted ts {} in the future",
                e.ts
            );
            let ids = e
                .device
                .iter()
                .map(|d| d.to_string())
                .chain(e.account.iter().map(|a| a.to_string()));
            for id in ids {
                let id = id.as_str();
                assert!(
                    !id.is_empty() && id.len() <= input.max_id_bytes,
                    "bad id length: {id:?}"
                );
                assert!(
                    !id.chars().any(char::is_control),
                    "control characters in {id:?}"
                );
                assert!(!DECODER.is_junk(id), "junk id accepted: {id:?}");
            }
            match e.kind {
                EventKind::OptOut | EventKind::OptIn => {
                    assert!(
                        e.account.is_some() && e.device.is_none() && e.ip.is_none(),
                        "{e:?}"
                    )
                }
                EventKind::Erase => assert!(
                    e.account.is_some() != e.device.is_some() && e.ip.is_none(),
                    "{e:?}"
                ),
                EventKind::Login => assert!(
                    e.device.is_some() && e.account.is_some() && e.ip.is_some(),
                    "{e:?}"
                ),
                EventKind::Logout | EventKind::Activity => {
                    assert!(e.device.is_some() && e.ip.is_some(), "{e:?}")
                }
            }
        }
        Err(r) => {
            assert!(
                !r.detail.trim().is_empty(),
                "rejected as {} without a detail",
                r.reason
            );
        }
    }
});
