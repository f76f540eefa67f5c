//! Generates a scenario, optionally runs the naive baseline on it and
//! scores it. Handy for timing and for tuning the traps:
//!
//! `cargo run --release -p idlink-sim --example sim -- --people 2000 --days 30 --seed 1 --out /tmp/sim --baseline`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use idlink_sim::{Scenario, evaluate, naive_baseline};

fn main() -> ExitCode {
    let mut scenario = Scenario::default();
    let mut out = PathBuf::from("sim-out");
    let mut baseline = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        let ok = match arg.as_str() {
            "--people" => value().parse().map(|v| scenario.people = v).is_ok(),
            "--days" => value().parse().map(|v| scenario.days = v).is_ok(),
            "--seed" => value().parse().map(|v| scenario.seed = v).is_ok(),
            "--out" => {
                out = PathBuf::from(value());
                true
            }
            "--baseline" => {
                baseline = true;
                true
            }
            _ => false,
        };
        if !ok {
            eprintln!("usage: sim [--people N] [--days N] [--seed N] [--out DIR] [--baseline]");
            return ExitCode::FAILURE;
        }
    }
    let t = Instant::now();
    match scenario.write(&out) {
        Ok(stats) => println!("{stats} in {:.2?}", t.elapsed()),
        Err(e) => {
            eprintln!("simulation failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    if baseline {
        let links = out.join("baseline-links.jsonl");
        let t = Instant::now();
        let result = naive_baseline(&out.join("events.jsonl"), &links).and_then(|n| {
            println!("baseline: {n} inferred links in {:.2?}", t.elapsed());
            evaluate(&out.join("truth.json"), &links)
        });
        match result {
            Ok(eval) => print!("{eval}"),
            Err(e) => {
                eprintln!("baseline failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
