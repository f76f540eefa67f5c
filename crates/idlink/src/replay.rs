//! `idlink replay`: recorded event files through the engine, graph out.

use crate::lines::BoundedLines;
use crate::settings::Settings;
use anyhow::{Context, Result, bail};
use idlink_core::{Decoder, Engine, Millis, RejectReason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a replay did, as written to `summary.json`.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Lines read from all inputs (blank lines excluded).
    pub events_read: u64,
    /// Lines that passed validation.
    pub accepted: u64,
    /// Lines rejected, total.
    pub rejected: u64,
    /// Rejections by reason.
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// Activity that arrived behind the watermark.
    pub late_events: u64,
    /// Events dropped because an erase marker covered them.
    pub erased_events: u64,
    /// Privacy requests applied.
    pub privacy_requests: u64,
    /// Sign-in links in the final graph.
    pub login_links: u64,
    /// Inferred links in the final graph.
    pub inferred_links: u64,
    /// Devices with at least one link.
    pub linked_devices: u64,
    /// Accounts with at least one device.
    pub linked_accounts: u64,
    /// Devices held in state at the end.
    pub tracked_devices: u64,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// Of which writing the graph files (sorting and rendering included).
    pub write_seconds: f64,
    /// Input lines per second.
    pub events_per_second: f64,
    /// All engine counters.
    pub engine: idlink_core::EngineStats,
}

/// Options of one replay.
pub struct ReplayArgs<'a> {
    /// Input files; `-` is stdin; `.gz` is decompressed.
    pub inputs: &'a [PathBuf],
    /// Output directory.
    pub out: &'a Path,
    /// Exit non-zero if any line was rejected.
    pub strict: bool,
    /// Write no output files (benchmarks of the engine path).
    pub quiet: bool,
}

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    const BUF: usize = 1 << 20;
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::with_capacity(BUF, io::stdin())));
    }
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(BUF, f));
        return Ok(Box::new(BufReader::with_capacity(BUF, gz)));
    }
    Ok(Box::new(BufReader::with_capacity(BUF, f)))
}

/// One dead-letter record.
#[derive(Serialize)]
struct DeadLetter<'a> {
    file: &'a str,
    line: u64,
    reason: &'static str,
    detail: &'a str,
    raw: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    raw_truncated: bool,
}

/// Runs a replay; returns the summary.
pub fn replay(settings: &Settings, args: &ReplayArgs) -> Result<Summary> {
    let start = Instant::now();
    let decoder = Decoder::new(&settings.core.input);
    let mut engine = Engine::new(&settings.core, settings.classifier.clone());
    let now = Millis(chrono::Utc::now().timestamp_millis());
    std::fs::create_dir_all(args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut dead = BufWriter::new(File::create(args.out.join("dead-letters.jsonl"))?);
    let mut summary = Summary::default();
    let mut by_reason: BTreeMap<RejectReason, u64> = BTreeMap::new();
    let progress = io::stderr().is_terminal();
    let mut buf = Vec::with_capacity(4096);
    for input in args.inputs {
        let name = input.display().to_string();
        let mut reader = BoundedLines::new(open(input)?, settings.core.input.max_message_bytes);
        let mut line_no = 0u64;
        while let Some(line) = reader
            .next_line(&mut buf)
            .with_context(|| format!("reading {name}"))?
        {
            line_no += 1;
            if line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            summary.events_read += 1;
            let decoded = if line.truncated {
                Err(idlink_core::Rejected {
                    reason: RejectReason::TooLarge,
                    detail: format!(
                        "the line exceeds {} bytes",
                        settings.core.input.max_message_bytes
                    ),
                })
            } else {
                decoder.decode(line.bytes, now)
            };
            match decoded {
                Ok(ev) => {
                    summary.accepted += 1;
                    engine.ingest(0, ev);
                }
                Err(rej) => {
                    *by_reason.entry(rej.reason).or_default() += 1;
                    let raw = String::from_utf8_lossy(line.bytes);
                    let rec = DeadLetter {
                        file: &name,
                        line: line_no,
                        reason: rej.reason.as_str(),
                        detail: &rej.detail,
                        raw: &raw,
                        raw_truncated: line.truncated,
                    };
                    serde_json::to_writer(&mut dead, &rec)?;
                    dead.write_all(b"\n")?;
                }
            }
            if progress && summary.events_read % 1_000_000 == 0 {
                eprint!(
                    "\r{name}: {} M lines, {:.0} s",
                    summary.events_read / 1_000_000,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    if progress && summary.events_read >= 1_000_000 {
        eprintln!();
    }
    engine.finish();
    dead.flush()?;
    let (mut linked_devices, mut linked_accounts) = (0, 0);
    let writing = Instant::now();
    if !args.quiet {
        // The engine hands over whole lines in large chunks: no buffering
        // needed on top.
        let path = args.out.join("device-links.jsonl");
        let mut w = File::create(&path)?;
        linked_devices = engine
            .write_device_lines(|chunk| w.write_all(chunk))
            .with_context(|| format!("writing {}", path.display()))?;
        let path = args.out.join("account-devices.jsonl");
        let mut w = File::create(&path)?;
        linked_accounts = engine
            .write_account_lines(|chunk| w.write_all(chunk))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    summary.write_seconds = writing.elapsed().as_secs_f64();
    let stats = engine.stats().clone();
    let (login, inferred) = engine.link_counts();
    summary.rejected = by_reason.values().sum();
    summary.rejected_by_reason = by_reason
        .into_iter()
        .map(|(r, n)| (r.as_str(), n))
        .collect();
    summary.late_events = stats.late_events;
    summary.erased_events = stats.erased_events;
    summary.privacy_requests = stats.privacy_requests;
    summary.login_links = login;
    summary.inferred_links = inferred;
    summary.linked_devices = linked_devices;
    summary.linked_accounts = linked_accounts;
    summary.tracked_devices = engine.device_count() as u64;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.events_per_second = summary.events_read as f64 / summary.seconds.max(1e-9);
    summary.engine = stats;
    let mut w = BufWriter::new(File::create(args.out.join("summary.json"))?);
    serde_json::to_writer_pretty(&mut w, &summary)?;
    w.write_all(b"\n")?;
    w.flush()?;
    print_summary(&summary);
    // The process ends after a replay: freeing the state of a million
    // devices block by block would only delay the exit (about 0.1 s).
    std::mem::forget(engine);
    if args.strict && summary.rejected > 0 {
        bail!(
            "--strict: {} line(s) rejected, see {}",
            summary.rejected,
            args.out.join("dead-letters.jsonl").display()
        );
    }
    Ok(summary)
}

fn print_summary(s: &Summary) {
    eprintln!(
        "replay: {} events read, {} accepted, {} rejected, {} late, {} erased, {} privacy requests",
        s.events_read, s.accepted, s.rejected, s.late_events, s.erased_events, s.privacy_requests
    );
    for (r, n) in &s.rejected_by_reason {
        eprintln!("  rejected {r}: {n}");
    }
    eprintln!(
        "graph: {} devices linked, {} accounts, {} sign-in links, {} inferred links ({} devices tracked)",
        s.linked_devices, s.linked_accounts, s.login_links, s.inferred_links, s.tracked_devices
    );
    eprintln!(
        "speed: {:.2} s ({:.2} s writing the graph), {:.0} events/s",
        s.seconds, s.write_seconds, s.events_per_second
    );
}
