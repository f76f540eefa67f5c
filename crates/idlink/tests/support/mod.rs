//! Shared harness of the Kafka tests: a real broker (nisshi started on a
//! free loopback port, or the cluster named by `IDLINK_TEST_BROKERS`), the
//! service as a child process, and reading output topics back.

#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Kafka tests share two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A runtime for the async parts of a test (producing input).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a tokio runtime: {e}"))
}

/// Holds the serial lock for one test.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a service test starts from, in the order to bind it: the serial
/// lock (bound first, so released last), a broker of its own, a temporary
/// directory, the test's topic names, and the config that both `replay`
/// and `run` read there (`extra` added, see [`write_config`]).
pub fn setup(test: &str, extra: &str) -> Result<Setup> {
    setup_on(test, extra, Broker::start)
}

/// [`setup`] on a broker whose data survives a restart.
pub fn setup_persistent(test: &str, extra: &str) -> Result<Setup> {
    setup_on(test, extra, Broker::start_persistent)
}

/// What [`setup`] gives.
pub type Setup = (
    MutexGuard<'static, ()>,
    Broker,
    tempfile::TempDir,
    Names,
    PathBuf,
);

fn setup_on(test: &str, extra: &str, start: fn() -> Result<Broker>) -> Result<Setup> {
    let serial = serial();
    let broker = start()?;
    let dir = tempfile::tempdir()?;
    let names = Names::new(test);
    let config = write_config(dir.path(), &names, extra)?;
    Ok((serial, broker, dir, names, config))
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A broker for one test.
pub struct Broker {
    /// Bootstrap address.
    pub addr: String,
    /// The nisshi process, when the harness started one and it runs.
    child: Option<Child>,
    /// How to start nisshi again after `stop`; `None` for an external
    /// cluster.
    launch: Option<Launch>,
    /// Its working directory (nisshi reads `.env` from there; the sqlite
    /// database of a persistent broker lives there).
    dir: tempfile::TempDir,
}

/// What `Broker::restart` needs to start the same broker again.
struct Launch {
    bin: PathBuf,
    port: u16,
    storage: &'static str,
}

impl Broker {
    /// Starts nisshi on a free port with in-memory storage, or uses
    /// `IDLINK_TEST_BROKERS`.
    pub fn start() -> Result<Broker> {
        Self::launch("memory://nisshi/")
    }

    /// Like `start`, with sqlite storage in the broker's directory, so
    /// data survives `stop` and `restart`.
    pub fn start_persistent() -> Result<Broker> {
        Self::launch("sqlite://broker.db")
    }

    fn launch(storage: &'static str) -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        if let Ok(addr) = std::env::var("IDLINK_TEST_BROKERS")
            && !addr.is_empty()
        {
            return Ok(Broker {
                addr,
                child: None,
                launch: None,
                dir,
            });
        }
        let bin = std::env::var("NISSHI_BIN")
            .ok()
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var("HOME").unwrap_or_default();
                PathBuf::from(home).join(".cache/idlink/nisshi-0.8.1/bin/nisshi")
            });
        if !bin.exists() {
            bail!(
                "no Kafka broker for the tests: run scripts/install-nisshi.sh (or scripts/test.sh), \
                 or set IDLINK_TEST_BROKERS to an external cluster"
            );
        }
        let port = free_port()?;
        let mut b = Broker {
            addr: format!("127.0.0.1:{port}"),
            child: None,
            launch: Some(Launch { bin, port, storage }),
            dir,
        };
        b.restart()?;
        Ok(b)
    }

    /// Whether the harness runs this broker (and so can stop it).
    pub fn is_managed(&self) -> bool {
        self.launch.is_some()
    }

    /// Kills the broker process (a managed broker only).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            bail!("the broker is not running under the harness");
        };
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// Starts the managed broker (again) on its port and waits until it
    /// listens.
    pub fn restart(&mut self) -> Result<()> {
        let Some(l) = self.launch.as_ref() else {
            bail!("an external broker cannot be restarted");
        };
        let url = format!("tcp://127.0.0.1:{}", l.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))?;
        let child = Command::new(&l.bin)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                l.storage,
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", l.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.addr).is_err() {
            if Instant::now() > deadline {
                bail!("the broker did not listen on {} within 30 s", self.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Topic names and group of one test, unique so tests never share state
/// (even on an external cluster).
#[derive(Clone, Debug)]
pub struct Names {
    pub prefix: String,
    pub group: String,
}

impl Names {
    pub fn new(test: &str) -> Names {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            % 1_000_000_000;
        let prefix = format!("{test}-{nonce}");
        Names {
            group: format!("{prefix}-group"),
            prefix,
        }
    }
    pub fn topic(&self, t: &str) -> String {
        format!("{}-{t}", self.prefix)
    }
}

/// Writes the config both `replay` and `run` use in a test.
pub fn write_config(dir: &Path, names: &Names, extra: &str) -> Result<PathBuf> {
    let cidr = root().join("config/cidr");
    let text = format!(
        r#"
[addresses]
exclude_cidr_files = ["{dc}", "{vpn}"]

[kafka]
events_topic = "{events}"
privacy_topic = "{privacy}"
device_links_topic = "{links}"
account_devices_topic = "{accounts}"
dead_letters_topic = "{dead}"
privacy_acks_topic = "{acks}"
snapshots_topic = "{snaps}"
manifests_topic = "{manifests}"
internal_topic_prefix = "{internal}"
input_partitions = 3
output_partitions = 2
connect_timeout_seconds = 20

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[service]
batch_max_ms = 50
idle_flush_ms = 500
snapshot_interval_seconds = 1
shutdown_deadline_seconds = 20
standby_poll_ms = 200
{extra}
"#,
        dc = cidr.join("datacenter.txt").display(),
        vpn = cidr.join("vpn.txt").display(),
        events = names.topic("device-events"),
        privacy = names.topic("privacy-requests"),
        links = names.topic("device-links"),
        accounts = names.topic("account-devices"),
        dead = names.topic("dead-letters"),
        acks = names.topic("privacy-acks"),
        snaps = names.topic("snapshots"),
        manifests = names.topic("manifests"),
        internal = names.topic("internal"),
    );
    let path = dir.join("idlink.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs an `idlink` subcommand to completion.
pub fn idlink(args: &[&str]) -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_idlink"))
        .args(args)
        .env("IDLINK_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "idlink {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A small simulated stream, sorted by `ts` so that its disorder is
/// within the lateness bound, and replay's graph of it.
pub struct Stream {
    pub lines: Vec<String>,
    pub expected_devices: String,
    pub expected_accounts: String,
    pub privacy_requests: usize,
}

pub fn stream(dir: &Path, config: &Path, people: u32, days: u32, seed: u64) -> Result<Stream> {
    stream_with(dir, config, people, days, seed, |_| Vec::new())
}

/// Like `stream`, with lines that `extra` makes from the simulation's
/// earliest `ts` merged in (and in replay's graph).
pub fn stream_with(
    dir: &Path,
    config: &Path,
    people: u32,
    days: u32,
    seed: u64,
    extra: impl FnOnce(&str) -> Vec<String>,
) -> Result<Stream> {
    let sim = dir.join("sim");
    idlink(&[
        "simulate",
        "--people",
        &people.to_string(),
        "--days",
        &days.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        sim.to_str().unwrap_or_default(),
    ])?;
    let text = std::fs::read_to_string(sim.join("events.jsonl"))?;
    let mut keyed: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let ts = serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["ts"].as_str().map(String::from))
                .unwrap_or_default();
            (ts, l.to_string())
        })
        .collect();
    let first = keyed.iter().map(|k| k.0.clone()).min().unwrap_or_default();
    for l in extra(&first) {
        let ts = serde_json::from_str::<serde_json::Value>(&l)
            .ok()
            .and_then(|v| v["ts"].as_str().map(String::from))
            .unwrap_or_default();
        keyed.push((ts, l));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let lines: Vec<String> = keyed.into_iter().map(|(_, l)| l).collect();
    let sorted = dir.join("sorted.jsonl");
    std::fs::write(&sorted, lines.join("\n") + "\n")?;
    let out = dir.join("replay");
    idlink(&[
        "replay",
        "--input",
        sorted.to_str().unwrap_or_default(),
        "--config",
        config.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ])?;
    let privacy_requests = lines.iter().filter(|l| is_privacy(l)).count();
    Ok(Stream {
        lines,
        expected_devices: std::fs::read_to_string(out.join("device-links.jsonl"))?,
        expected_accounts: std::fs::read_to_string(out.join("account-devices.jsonl"))?,
        privacy_requests,
    })
}

/// Whether a line is a privacy request (it goes to the privacy topic).
pub fn is_privacy(line: &str) -> bool {
    ["\"opt_out\"", "\"opt_in\"", "\"erase\""]
        .iter()
        .any(|k| line.contains(&format!("\"kind\":{k}")))
}

/// The tests' input producer: idempotent, one request in flight. With
/// five (librdkafka's default), nisshi 0.8.1 once rejected a batch of the
/// burst test as out of order (`OutOfOrderSequenceNumber`: the batch
/// before it in the sequence had not been appended), which is fatal to an
/// idempotent producer; one request at a time leaves nothing to reorder.
pub fn producer(brokers: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .create()?)
}

/// Produces lines to the input topics (privacy requests to theirs), keyed
/// by their id; `None` produces a message with no value.
pub async fn produce(p: &FutureProducer, names: &Names, lines: &[Option<String>]) -> Result<()> {
    let events = names.topic("device-events");
    let privacy = names.topic("privacy-requests");
    let mut futures = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let topic = if line.as_deref().is_some_and(is_privacy) {
            &privacy
        } else {
            &events
        };
        let key = line
            .as_deref()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| {
                v["device_id"]
                    .as_str()
                    .or(v["account_id"].as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| format!("k{i}"));
        let mut r: FutureRecord<'_, String, String> = FutureRecord::to(topic).key(&key);
        if let Some(l) = line {
            r = r.payload(l);
        }
        loop {
            match p.send_result(r) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err((_, back)) => {
                    r = back;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    for f in futures {
        if let Err((e, _)) = f.await? {
            bail!("producing test input: {e}");
        }
    }
    Ok(())
}

/// One record read back.
pub struct Record {
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of a topic up to its current end.
pub fn read_all(brokers: &str, topic: &str) -> Result<Vec<Record>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (low, high) = c.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
            remaining += high - low;
            ends.insert(*p, high);
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done: BTreeMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    while done.values().any(|d| !d) {
        if Instant::now() > deadline {
            bail!("reading {topic} timed out");
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for x in h.iter() {
                        headers.insert(
                            x.key.to_string(),
                            x.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        );
                    }
                }
                out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    headers,
                });
                if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(0) {
                    done.insert(m.partition(), true);
                }
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(out)
}

/// The `reason` header of every record of the dead-letters topic, sorted.
pub fn dead_letter_reasons(brokers: &str, names: &Names) -> Result<Vec<String>> {
    let mut reasons: Vec<String> = read_all(brokers, &names.topic("dead-letters"))?
        .iter()
        .map(|r| r.headers.get("reason").cloned().unwrap_or_default())
        .collect();
    reasons.sort();
    Ok(reasons)
}

/// Folds a compacted topic by key (a tombstone removes the key) into the
/// lines of replay's file: values sorted by key.
pub fn fold(records: &[Record]) -> String {
    let mut m: BTreeMap<String, Option<String>> = BTreeMap::new();
    for r in records {
        if let Some(k) = &r.key {
            m.insert(k.clone(), r.value.clone());
        }
    }
    m.into_values().flatten().map(|v| v + "\n").collect()
}

/// Waits until both folded outputs equal replay's files.
pub fn wait_for_graph(
    brokers: &str,
    names: &Names,
    s: &Stream,
    service: &mut Service,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let devices = fold(&read_all(brokers, &names.topic("device-links"))?);
        let accounts = fold(&read_all(brokers, &names.topic("account-devices"))?);
        if devices == s.expected_devices && accounts == s.expected_accounts {
            return Ok(());
        }
        if let Some(status) = service.try_wait()? {
            bail!(
                "the service exited with {status} before the graph was complete:\n{}",
                service.log_tail()
            );
        }
        if Instant::now() > deadline {
            if let Ok(dir) = std::env::var("IDLINK_TEST_KEEP_LOGS") {
                let dir = Path::new(&dir);
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join("device-links.got"), &devices);
                let _ = std::fs::write(dir.join("device-links.expected"), &s.expected_devices);
                let _ = std::fs::write(dir.join("account-devices.got"), &accounts);
                let _ = std::fs::write(dir.join("account-devices.expected"), &s.expected_accounts);
            }
            let d = first_difference(&devices, &s.expected_devices);
            bail!(
                "the folded graph did not reach replay's within {timeout:?}: device-links {} lines vs {} expected ({d}); account-devices {} vs {}\n{}",
                devices.lines().count(),
                s.expected_devices.lines().count(),
                accounts.lines().count(),
                s.expected_accounts.lines().count(),
                service.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
}

fn first_difference(a: &str, b: &str) -> String {
    for (x, y) in a.lines().zip(b.lines()) {
        if x != y {
            return format!("first difference:\n  got      {x}\n  expected {y}");
        }
    }
    "one is a prefix of the other".into()
}

/// The service under test, as a child process.
pub struct Service {
    child: Child,
    pub http: String,
    log: PathBuf,
}

impl Service {
    pub fn start(config: &Path, brokers: &str, names: &Names, dir: &Path) -> Result<Service> {
        let port = free_port()?;
        let log = dir.join(format!("service-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_idlink"))
            .args(["run", "--config"])
            .arg(config)
            .env("IDLINK_BROKERS", brokers)
            .env("IDLINK_GROUP_ID", &names.group)
            .env("IDLINK_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "IDLINK_LOG",
                std::env::var("IDLINK_TEST_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Service {
            child,
            http: format!("127.0.0.1:{port}"),
            log,
        })
    }

    /// Waits for `/health/ready` to answer 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for_readiness(200, timeout)
    }

    /// Polls `/health/ready` until it answers `code`.
    pub fn wait_for_readiness(&mut self, code: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((c, _)) = http_get(&self.http, "/health/ready")
                && c == code
            {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                bail!("the service exited with {status}:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "/health/ready did not answer {code} within {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(self, timeout: Duration) -> Result<std::process::ExitStatus> {
        Ok(self.terminate_with_log(timeout)?.0)
    }

    /// [`Service::terminate`], and checks that the log names each step of
    /// the stop in `steps` (message prefixes), in order: a stop that runs
    /// out its deadline must say which wait it was in.
    pub fn terminate_in_steps(self, timeout: Duration, steps: &[&str]) -> Result<()> {
        let (status, log) = self.terminate_with_log(timeout)?;
        if !status.success() {
            bail!("graceful stop exit status {status}:\n{log}");
        }
        let at: Vec<Option<usize>> = steps.iter().map(|s| log.rfind(s)).collect();
        if !(at.iter().all(Option::is_some) && at.is_sorted()) {
            bail!("the stop's steps {steps:?} at {at:?} in:\n{log}");
        }
        Ok(())
    }

    /// [`Service::terminate`], returning the whole log as well.
    pub fn terminate_with_log(
        mut self,
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok((s, self.log_text()));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "no exit within {timeout:?} of SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Peak resident memory of the service so far, in bytes (Linux).
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }

    /// SIGSTOP: the process freezes (a long GC pause, a stalled VM).
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT: the frozen process carries on where it stopped.
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} failed");
        }
        Ok(())
    }

    /// Whether `/health/ready` answers 200 now.
    pub fn is_ready(&self) -> bool {
        matches!(http_get(&self.http, "/health/ready"), Ok((200, _)))
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // For a post-mortem: `IDLINK_TEST_KEEP_LOGS=DIR` keeps every
        // instance's whole log (the test's own directory is removed).
        if let (Ok(dir), Some(name)) =
            (std::env::var("IDLINK_TEST_KEEP_LOGS"), self.log.file_name())
        {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name));
        }
    }
}

/// A plain HTTP/1.0 GET; returns the status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one metric series in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The low watermark (first offset still stored) of every partition of
/// `topic`.
pub fn low_watermarks(brokers: &str, topic: &str) -> Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut lows = Vec::new();
    for t in md.topics() {
        for p in t.partitions() {
            lows.push(
                c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?
                    .0,
            );
        }
    }
    Ok(lows)
}

/// The sum of every series whose name and labels start with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// `series` summed over the instances' metrics.
pub fn metric_over(services: &[Service], series: &str) -> Result<f64> {
    let mut sum = 0.0;
    for svc in services {
        sum += metric(&http_get(&svc.http, "/metrics")?.1, series);
    }
    Ok(sum)
}

/// Waits until the instances report `n` input partitions idle between
/// them (`idlink_idle_input_partitions`).
pub fn wait_for_idle_inputs(services: &[Service], n: f64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let idle = metric_over(services, "idlink_idle_input_partitions")?;
        if idle >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{idle} input partitions idle after {timeout:?}, not {n}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A stream's lines as two inputs: its privacy requests, then its events.
pub fn privacy_first(s: &Stream) -> [Vec<Option<String>>; 2] {
    let (privacy, events) = s
        .lines
        .iter()
        .cloned()
        .map(Some)
        .partition(|l| l.as_deref().is_some_and(is_privacy));
    [privacy, events]
}

/// The group's newest snapshot manifest: the greatest (epoch, id), as a
/// restore picks it.
pub fn newest_manifest(brokers: &str, names: &Names) -> Result<serde_json::Value> {
    Ok(read_all(brokers, &names.topic("manifests"))?
        .into_iter()
        .filter(|r| {
            r.key
                .as_deref()
                .is_some_and(|k| k.starts_with(&format!("{}/", names.group)))
                && !r.key.as_deref().is_some_and(is_republish_request)
        })
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value?).ok())
        .max_by_key(|m| (m["epoch"].as_u64(), m["id"].as_u64()))
        .unwrap_or_default())
}

/// Whether a manifests-topic key is a fenced owner's republish request.
pub fn is_republish_request(key: &str) -> bool {
    key.contains("/republish/")
}

/// The seed of the random fault points: `IDLINK_FAULT_SEED` reproduces a
/// run; otherwise the clock picks one, printed with the test's output.
pub fn fault_seed() -> u64 {
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
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// The ids the simulation in `dir` erased, from its ground truth.
pub fn erased_ids(dir: &Path) -> Result<Vec<String>> {
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sim/truth.json"))?)?;
    Ok(["erased_devices", "erased_accounts"]
        .iter()
        .flat_map(|k| truth[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect())
}

/// The snapshot that manifest `m` describes, as text (its chunks from the
/// snapshots topic's `records`, in order); every chunk must be there.
pub fn snapshot_text(records: &[Record], m: &serde_json::Value) -> Result<String> {
    let prefix = format!(
        "{}/{}/{}/",
        m["key"].as_str().unwrap_or_default(),
        m["epoch"].as_u64().unwrap_or(0),
        m["id"].as_u64().unwrap_or(0)
    );
    let mut parts: Vec<(u64, String)> = records
        .iter()
        .filter_map(|r| {
            let i = r.key.as_deref()?.strip_prefix(&prefix)?.parse().ok()?;
            Some((i, r.value.clone().unwrap_or_default()))
        })
        .collect();
    parts.sort();
    let chunks = m["chunks"].as_u64().unwrap_or(0);
    if chunks == 0 || parts.len() as u64 != chunks {
        bail!(
            "snapshot {prefix}: {} of {chunks} chunks found",
            parts.len()
        );
    }
    Ok(parts.into_iter().map(|p| p.1).collect())
}

/// A device that replay's graph links: any snapshot of the state holds
/// its id, so a search of a snapshot for erased ids can see ids.
pub fn a_linked_device(s: &Stream) -> String {
    s.expected_devices
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["device_id"].as_str().map(String::from))
        .unwrap_or_default()
}
