//! Differential fuzzing of the partitioned design: the input's lines are
//! decoded with a fixed clock and fed both to one `Engine` and to the
//! three stages run in one process (`staged::Pipeline`, one to four
//! partitions each, chosen by the first byte). At the end both must hold
//! the same graph and have acknowledged the same privacy requests, as the
//! property tests `the_stages_end_in_one_engines_graph` and
//! `crashed_stage_partitions_end_in_one_engines_graph` state for the
//! events their strategies make.
//!
//! Device events that arrive behind the one engine's watermark are left
//! out of both: which events are late depends on how the input is split
//! over partitions, so a late event's effect is not part of the promise.
//! Late privacy requests are kept (they apply whenever they arrive).
//!
//! Control lines (never valid events): `!flush` (both), and
//! `!save<digit>` / `!crash<digit>` (the pipeline only: snapshot the
//! partition the digit names, or restart it from its last snapshot; the
//! digit's remainder by 3 is the stage, its third the partition).

#![no_main]

use idlink_core::Engine;
use idlink_core::engine::staged::{Pipeline, Stage};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{CONFIG, DECODER, NOW, classifier};
use std::collections::BTreeSet;

/// The stage and partition a control digit names.
fn target(d: u8, partitions: u32) -> (Stage, usize) {
    let d = usize::from(d - b'0');
    let stage = [Stage::Devices, Stage::Buckets, Stage::Accounts][d % 3];
    (stage, d / 3 % partitions as usize)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let partitions = u32::from(first % 4) + 1;
    let mut one = Engine::new(&CONFIG, classifier());
    let mut staged = Pipeline::new(&CONFIG, &classifier(), partitions);
    for line in rest.split(|&b| b == b'\n') {
        match line {
            b"!flush" => {
                one.flush();
                staged.flush();
            }
            [b'!', b's', b'a', b'v', b'e', d @ b'0'..=b'9'] => {
                let (stage, k) = target(*d, partitions);
                staged.checkpoint(stage, k);
            }
            [b'!', b'c', b'r', b'a', b's', b'h', d @ b'0'..=b'9'] => {
                let (stage, k) = target(*d, partitions);
                staged
                    .crash(stage, k)
                    .expect("a partition's snapshot restores");
            }
            _ => {
                let Ok(event) = DECODER.decode(line, NOW) else {
                    continue;
                };
                if event.ts < one.watermark() && !event.kind.is_privacy() {
                    continue;
                }
                one.ingest(0, event.clone());
                staged.ingest(0, event);
            }
        }
    }
    one.finish();
    staged.finish();
    let devices: Vec<String> = one.device_lines().collect();
    let staged_devices: Vec<&str> = staged.device_lines().collect();
    assert_eq!(devices, staged_devices, "device-links differ");
    let accounts: Vec<String> = one.account_lines().collect();
    let staged_accounts: Vec<&str> = staged.account_lines().collect();
    assert_eq!(accounts, staged_accounts, "account-devices differ");
    let acks = |acks: Vec<idlink_core::engine::PrivacyAck>| -> BTreeSet<_> {
        acks.into_iter()
            .map(|a| (a.ts, a.kind, a.subject, a.id_hash))
            .collect()
    };
    assert_eq!(
        acks(one.take_privacy_acks()),
        acks(staged.take_privacy_acks()),
        "acknowledged requests differ"
    );
});
