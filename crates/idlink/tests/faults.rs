//! Fault tests of `idlink run` against a real broker: crashes at random
//! points, and a broker outage. Each ends by comparing the folded output
//! topics with `idlink replay` of the same input.

mod support;

use anyhow::{Result, bail};
use std::time::{Duration, Instant};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

/// The seed of the random fault points: `IDLINK_FAULT_SEED` reproduces a
/// run; otherwise the clock picks one, printed with the test's output.
fn fault_seed() -> u64 {
    let seed = std::env::var("IDLINK_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fault seed {seed} (set IDLINK_FAULT_SEED={seed} to repeat this run)");
    seed
}

/// xorshift64*: enough to pick fault points reproducibly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

#[test]
fn random_crashes_leave_the_same_graph() -> Result<()> {
    let _serial = serial();
    let broker = Broker::start()?;
    let dir = tempfile::tempdir()?;
    let names = Names::new("crashes");
    let config = write_config(dir.path(), &names, "")?;
    let s = stream(dir.path(), &config, 150, 8, 21)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let mut rng = Rng(fault_seed() | 1);

    // Four crashes: each chunk of input is followed by a kill -9 at a
    // random moment, from "barely started on it" to "probably done".
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    for chunk in lines.chunks(lines.len() / 4 + 1) {
        rt.block_on(produce(&producer, &names, chunk))?;
        let after = Duration::from_millis(100 + rng.below(3_000));
        std::thread::sleep(after);
        eprintln!("kill -9 {after:?} after a chunk of {} records", chunk.len());
        service.kill9()?;
        service = Service::start(&config, &broker.addr, &names, dir.path())?;
        service.wait_ready(Duration::from_secs(60))?;
    }
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(240),
    )
}

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(30);

#[test]
fn a_broker_outage_is_ridden_out() -> Result<()> {
    let _serial = serial();
    let mut broker = Broker::start_persistent()?;
    let dir = tempfile::tempdir()?;
    let names = Names::new("outage");
    let config = write_config(dir.path(), &names, "")?;
    let s = stream(dir.path(), &config, 100, 6, 31)?;
    let rt = runtime();
    let producer = producer(&broker.addr)?;
    let lines: Vec<Option<String>> = s.lines.iter().cloned().map(Some).collect();
    let (before, after) = lines.split_at(lines.len() / 2);

    rt.block_on(produce(&producer, &names, before))?;
    let mut service = Service::start(&config, &broker.addr, &names, dir.path())?;
    service.wait_ready(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));

    if broker.is_managed() {
        broker.stop()?;
        let down = Instant::now();
        let mut reported = false;
        while down.elapsed() < OUTAGE {
            if let Ok((503, _)) = http_get(&service.http, "/health/ready") {
                reported = true;
            }
            if let Some(status) = service.try_wait()? {
                bail!(
                    "the service exited during the outage with {status}:\n{}",
                    service.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            reported,
            "/health/ready never reported not-ready while the broker was down:\n{}",
            service.log_tail()
        );
        broker.restart()?;
    } else {
        eprintln!("external broker: it cannot be stopped here, so no outage is staged");
    }

    service.wait_ready(Duration::from_secs(90))?;
    rt.block_on(produce(&producer, &names, after))?;
    wait_for_graph(
        &broker.addr,
        &names,
        &s,
        &mut service,
        Duration::from_secs(240),
    )?;
    let (_, metrics) = http_get(&service.http, "/metrics")?;
    assert_eq!(metric(&metrics, "idlink_ready"), 1.0);
    Ok(())
}
