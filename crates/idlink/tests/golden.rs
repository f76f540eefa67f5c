//! Golden replay tests: each scenario under `tests/golden/` is replayed
//! and its three output files compared byte for byte with the reviewed
//! files in its `expected/` folder.
//!
//! A mismatch writes what the replay produced to the scenario's `actual/`
//! folder (ignored by git) and fails: review the difference, and only if
//! the new output is right, copy it over `expected/` in the same commit as
//! the change that explains it.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: [&str; 3] = [
    "device-links.jsonl",
    "account-devices.jsonl",
    "dead-letters.jsonl",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn replay(dir: &Path, out: &Path, extra: &[&str]) -> Result<std::process::Output> {
    let config = root().join("config/default.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_idlink"))
        .current_dir(dir)
        .args(["replay", "--input", "input.jsonl", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("IDLINK_LOG", "warn")
        .env_remove("IDLINK_HASH_SECRET")
        .output()
        .context("running idlink replay")?;
    Ok(output)
}

fn scenarios() -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("tests/golden"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.jsonl").exists())
        .collect();
    dirs.sort();
    Ok(dirs)
}

#[test]
fn golden_scenarios_match_their_reviewed_output() -> Result<()> {
    let mut failures = Vec::new();
    let dirs = scenarios()?;
    assert!(dirs.len() >= 10, "golden scenarios missing: {dirs:?}");
    for dir in dirs {
        let tmp = tempfile::tempdir()?;
        let out = replay(&dir, tmp.path(), &[])?;
        assert!(
            out.status.success(),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for f in FILES {
            let actual = std::fs::read(tmp.path().join(f))?;
            let expected = std::fs::read(dir.join("expected").join(f)).unwrap_or_default();
            if actual != expected {
                let keep = dir.join("actual");
                std::fs::create_dir_all(&keep)?;
                std::fs::write(keep.join(f), &actual)?;
                failures.push(format!(
                    "{}/{f} differs (see {})",
                    dir.display(),
                    keep.join(f).display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn the_same_input_gives_the_same_bytes() -> Result<()> {
    let dir = root().join("tests/golden/household-single");
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    replay(&dir, a.path(), &[])?;
    replay(&dir, b.path(), &[])?;
    for f in FILES {
        assert_eq!(
            std::fs::read(a.path().join(f))?,
            std::fs::read(b.path().join(f))?,
            "{f}"
        );
    }
    Ok(())
}

#[test]
fn strict_fails_on_rejected_lines_and_the_summary_counts_them() -> Result<()> {
    let dir = root().join("tests/golden/bad-lines");
    let tmp = tempfile::tempdir()?;
    let out = replay(&dir, tmp.path(), &[])?;
    assert!(out.status.success());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("summary.json"))?)?;
    assert_eq!(summary["rejected"], 16);
    assert_eq!(summary["accepted"], 1);
    assert_eq!(summary["rejected_by_reason"]["invalid_json"], 2);
    let out = replay(&dir, tmp.path(), &["--strict"])?;
    assert!(!out.status.success(), "--strict must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected"));
    Ok(())
}

#[test]
fn gzip_and_stdin_inputs_are_read() -> Result<()> {
    use std::io::Write;
    let src = std::fs::read(root().join("tests/golden/household-single/input.jsonl"))?;
    let tmp = tempfile::tempdir()?;
    let gz = tmp.path().join("input.jsonl.gz");
    let mut enc =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz)?, flate2::Compression::fast());
    enc.write_all(&src)?;
    enc.finish()?;
    let config = root().join("config/default.toml");
    let run = |input: &str, out: &str| -> Result<Vec<u8>> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_idlink"))
            .current_dir(tmp.path())
            .args(["replay", "--input", input, "--out", out, "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&src)?;
        }
        assert!(child.wait()?.success());
        Ok(std::fs::read(
            tmp.path().join(out).join("device-links.jsonl"),
        )?)
    };
    let a = run("input.jsonl.gz", "gz")?;
    let b = run("-", "stdin")?;
    assert_eq!(a, b);
    assert!(String::from_utf8_lossy(&a).contains("\"inferred\""));
    Ok(())
}
