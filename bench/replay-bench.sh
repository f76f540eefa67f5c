#!/usr/bin/env bash
# End-to-end replay benchmark: throughput and memory per tracked device.
#
#   bench/replay-bench.sh            # from the repository root
#
# Steps:
#   1. cargo build --release -p idlink, copied to $BENCH_DIR/idlink so a
#      concurrent build cannot change the binary between runs
#   2. simulate a population (default 600,000 people, 1 day, seed 7, which
#      gives well over 1,000,000 devices and events); reused on later runs
#      while the parameters and the simulator's sources are unchanged
#   3. replay an empty input (stdin)    -> baseline peak RSS of the binary
#   4. replay the simulated events      -> wall time, events/s, peak RSS
#   5. replay again with --quiet        -> same without writing graph files
#      (4 and 5 alternate, $BENCH_RUNS times each)
#   6. print a table of the median runs, the best and the spread, and
#      write $BENCH_DIR/results.json
#
# Reported per run: wall seconds, events/s (wall), CPU seconds and
# events per CPU-second (the fairer figure when other work shares the
# core), peak RSS, and bytes per tracked device = (peak RSS - empty-input
# peak RSS) / tracked_devices from summary.json.
#
# A shared VM's speed drifts by a third within minutes (the same binary ran
# this file in 14.5 to 26.6 s in one hour), so one run says little. The
# table shows the median of BENCH_RUNS runs, and beside it the best and
# the slowest; the target is judged on the median and, separately, on the
# best (the machine's speed with the least interference).
#
# Every replay is pinned to one core (taskset -c $BENCH_CPU) when taskset
# exists, and measured with /usr/bin/time -v; without it, peak RSS is read
# from VmHWM in /proc while polling. The input is read from the page cache,
# so disk speed is not measured: each timed replay is preceded by a read
# of the whole input (`cat > /dev/null`), because a VM's host may reclaim
# the cache of a file written minutes ago (here, a quarter of the 4.3 GB
# file was gone after a build, and reading it back cost a replay up to
# 8 s). The log shows how much of the input was cached before the warm-up
# when `fincore` (util-linux) exists.
#
# Environment (all optional):
#   BENCH_DIR          work directory             (default target/bench)
#   BENCH_PEOPLE       simulated people           (default 600000)
#   BENCH_DAYS         simulated days             (default 1)
#   BENCH_SEED         simulator seed             (default 7)
#   BENCH_CPU          core to pin replays to     (default 0)
#   BENCH_RUNS         timed runs of each replay  (default 3)
#   BENCH_CONFIG       replay config              (default config/default.toml if present)
#   BENCH_MIN_DEVICES  fail below this many tracked devices (default 1000000; 0 disables)
#   BENCH_RESIMULATE=1 simulate even if a matching simulation exists
#   BENCH_POLL_RSS=1   use the /proc VmHWM polling fallback even if /usr/bin/time exists
#   BENCH_IDLINK       idlink binary to measure instead of a fresh build
#                      (an older build, for an A/B on the same day)
#
# Targets reported against: >= 1,000,000 events/s end to end on one core,
# <= 300 bytes of peak RSS per tracked device.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${BENCH_DIR:-target/bench}
PEOPLE=${BENCH_PEOPLE:-600000}
DAYS=${BENCH_DAYS:-1}
SEED=${BENCH_SEED:-7}
CPU=${BENCH_CPU:-0}
RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }
MIN_DEVICES=${BENCH_MIN_DEVICES:-1000000}
CONFIG=${BENCH_CONFIG:-}
if [[ -z $CONFIG && -f config/default.toml ]]; then
    CONFIG=config/default.toml
fi
TARGET_EPS=1000000
TARGET_BPD=300

log() { printf '[replay-bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 is required (reads summary.json, writes results.json)"
command -v cargo >/dev/null || die "cargo is required"

PIN=()
if command -v taskset >/dev/null; then
    PIN=(taskset -c "$CPU")
else
    log "taskset not found (package util-linux): replays are not pinned to one core"
fi
HAVE_TIME=0
if [[ ${BENCH_POLL_RSS:-0} != 1 ]] && command -v /usr/bin/time >/dev/null && /usr/bin/time -v true >/dev/null 2>&1; then
    HAVE_TIME=1
else
    log "/usr/bin/time (GNU) not found: install it with 'apt-get install time' (Debian/Ubuntu);"
    log "falling back to polling VmHWM in /proc/<pid>/status"
fi

mkdir -p "$DIR"

# 1. Build, unless BENCH_IDLINK names another binary (an A/B on one day).
if [[ -n ${BENCH_IDLINK:-} ]]; then
    log "measuring $BENCH_IDLINK instead of a fresh build"
    [[ -x $BENCH_IDLINK ]] || die "BENCH_IDLINK=$BENCH_IDLINK is not an executable"
    cp "$BENCH_IDLINK" "$DIR/idlink"
else
    log "building: cargo build --release -p idlink"
    cargo build --release -p idlink >&2
    # Run a private copy: a concurrent build cannot swap the binary between runs.
    cp target/release/idlink "$DIR/idlink"
fi
BIN=$DIR/idlink
BIN_SHA=$(sha256sum "$BIN" | cut -c1-16)

# 2. Simulate (or reuse). The stamp names the parameters and a hash of the
# simulator's sources, so a tuned simulator is never silently reused.
SIM=$DIR/sim
sim_hash=$(find crates/idlink-sim/src crates/idlink-sim/Cargo.toml -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
stamp="people=$PEOPLE days=$DAYS seed=$SEED sim=$sim_hash"
if [[ ${BENCH_RESIMULATE:-0} != 1 && -f $SIM/events.jsonl && -f $SIM/stamp && -f $SIM/simulate.log && $(cat "$SIM/stamp") == "$stamp" ]]; then
    log "reusing $SIM ($stamp)"
else
    log "simulating: $BIN simulate --people $PEOPLE --days $DAYS --seed $SEED --out $SIM"
    rm -rf "$SIM"
    mkdir -p "$SIM"
    sim_start=$(date +%s.%N)
    "$BIN" simulate --people "$PEOPLE" --days "$DAYS" --seed "$SEED" --out "$SIM" 2> "$SIM/simulate.log" || {
        cat "$SIM/simulate.log" >&2
        die "simulate failed"
    }
    cat "$SIM/simulate.log" >&2
    log "simulated in $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$sim_start" "$(date +%s.%N)") s"
    echo "$stamp" > "$SIM/stamp"
fi
sim_line=$(grep -E '^events: [0-9]+, devices: [0-9]+' "$SIM/simulate.log" | tail -1 || true)
[[ -n $sim_line ]] || die "cannot read the simulator's 'events: N, devices: N' line from $SIM/simulate.log"
log "simulator: $sim_line"

# measure NAME OUTDIR ARGS...: runs "$BIN replay --out OUTDIR ARGS..." pinned,
# writes "wall_seconds peak_rss_kb cpu_seconds" to $DIR/NAME.measure and
# keeps the run's summary as $DIR/NAME.summary.json.
measure() {
    local name=$1 out=$2
    shift 2
    local cmd=("${PIN[@]}" "$BIN" replay --out "$out" "$@")
    [[ -n $CONFIG ]] && cmd+=(--config "$CONFIG")
    rm -rf "$out"
    log "run $name: ${cmd[*]}"
    if [[ $HAVE_TIME == 1 ]]; then
        /usr/bin/time -v -o "$DIR/$name.time" "${cmd[@]}" < /dev/null 2> "$DIR/$name.log" || {
            cat "$DIR/$name.log" >&2
            die "$name failed"
        }
        python3 - "$DIR/$name.time" > "$DIR/$name.measure" <<'EOF'
import sys
wall = rss = None
cpu = 0.0
for line in open(sys.argv[1]):
    k, _, v = line.strip().rpartition(": ")
    if k.startswith("Elapsed (wall clock) time"):
        secs = 0.0
        for part in v.split(":"):
            secs = secs * 60 + float(part)
        wall = secs
    elif k == "Maximum resident set size (kbytes)":
        rss = int(v)
    elif k in ("User time (seconds)", "System time (seconds)"):
        cpu += float(v)
if wall is None or rss is None:
    sys.exit("cannot parse " + sys.argv[1])
print(wall, rss, round(cpu, 2))
EOF
    else
        # Poll VmHWM while the replay runs (Popen returns after the exec, so
        # every reading is the replay's own). stdin is a pipe held open for
        # 0.5 s: the empty run reads `-` and so lives long enough to be
        # sampled. (ru_maxrss is no use here: it inherits the forking
        # Python's peak across exec.)
        python3 - "$DIR/$name.log" "${cmd[@]}" > "$DIR/$name.measure" <<'EOF' || {
import os, subprocess, sys, time
with open(sys.argv[1], "w") as log:
    start = time.monotonic()
    p = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stderr=log)
    hwm = 0
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if p.stdin and time.monotonic() - start > 0.5:
            p.stdin.close()
            p.stdin = None
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    wall = time.monotonic() - start
print(f"{wall:.3f} {hwm} {usage.ru_utime + usage.ru_stime:.2f}")
sys.exit(os.waitstatus_to_exitcode(status))
EOF
            cat "$DIR/$name.log" >&2
            die "$name failed"
        }
    fi
    log "  $name: wall s, peak RSS kB, CPU s = $(cat "$DIR/$name.measure")"
    if [[ -f $out/summary.json ]]; then
        cp "$out/summary.json" "$DIR/$name.summary.json"
    fi
}

# warm FILE: reads FILE into the page cache, logging how much of it was
# there before.
warm() {
    if command -v fincore >/dev/null; then
        log "input cached before the warm-up: $(fincore --bytes --noheadings --output RES,SIZE "$1" | awk '{printf "%.1f %%", $2 ? 100 * $1 / $2 : 0}')"
    fi
    cat "$1" > /dev/null
}

# 3-5. Replays.
measure empty "$DIR/out-empty" --input -
rm -f "$DIR"/replay-*.measure "$DIR"/quiet-*.measure "$DIR"/*.summary.json
for ((i = 1; i <= RUNS; i++)); do
    warm "$SIM/events.jsonl"
    measure "replay-$i" "$DIR/out" --input "$SIM/events.jsonl"
    warm "$SIM/events.jsonl"
    measure "quiet-$i" "$DIR/out-quiet" --input "$SIM/events.jsonl" --quiet
done

# 6. Report.
python3 - "$DIR" "$sim_line" "$PEOPLE" "$DAYS" "$SEED" "$MIN_DEVICES" "$TARGET_EPS" "$TARGET_BPD" "$HAVE_TIME" "${PIN[*]:-unpinned}" "${CONFIG:-<built-in defaults>}" "$BIN_SHA" "$RUNS" <<'EOF'
import json, os, platform, re, subprocess, sys, datetime

d, sim_line, people, days, seed, min_devices, target_eps, target_bpd, have_time, pin, config, bin_sha, nruns = sys.argv[1:]
min_devices, target_eps, target_bpd, nruns = int(min_devices), int(target_eps), int(target_bpd), int(nruns)

def measure(name):
    wall, rss, cpu = open(os.path.join(d, name + ".measure")).read().split()
    return float(wall), int(rss), float(cpu)

def summary(name):
    with open(os.path.join(d, name + ".summary.json")) as f:
        return json.load(f)

def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None

cpu = None
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass

sim = {k: int(v) for k, v in re.findall(r"(\w[\w ]*?): (\d+)", sim_line)}
empty_wall, empty_rss, _ = measure("empty")
def run(name):
    wall, rss, cpu_s = measure(name)
    s = summary(name)
    r = {
        "wall_seconds": round(wall, 3),
        "events_read": s["events_read"],
        "events_per_second": round(s["events_read"] / wall) if wall > 0 else None,
        "cpu_seconds": round(cpu_s, 2),
        "events_per_cpu_second": round(s["events_read"] / cpu_s) if cpu_s > 0 else None,
        "internal_seconds": round(s["seconds"], 3),
        "internal_events_per_second": round(s["events_per_second"]),
        "peak_rss_kb": rss,
        "tracked_devices": s["tracked_devices"],
        "rejected": s["rejected"],
        "late_events": s["late_events"],
        "privacy_requests": s["privacy_requests"],
        "login_links": s["login_links"],
        "inferred_links": s["inferred_links"],
        "write_seconds": round(s["write_seconds"], 3) if "write_seconds" in s else None,
    }
    tracked = s["tracked_devices"]
    r["bytes_per_tracked_device"] = round((rss - empty_rss) * 1024 / tracked, 1) if tracked else None
    return r

# Each kind: every run, and the median run by wall time (the lower middle
# of an even count) as the headline.
all_runs = {k: [run(f"{k}-{i}") for i in range(1, nruns + 1)] for k in ("replay", "quiet")}
runs = {k: sorted(v, key=lambda r: r["wall_seconds"])[(len(v) - 1) // 2] for k, v in all_runs.items()}
best = {k: max(r["events_per_second"] or 0 for r in v) for k, v in all_runs.items()}
slowest = {k: min(r["events_per_second"] or 0 for r in v) for k, v in all_runs.items()}

full = runs["replay"]
result = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "git": {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
    "binary_sha256": bin_sha,
    "host": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
    "pinning": pin,
    "measured_with": "/usr/bin/time -v" if have_time == "1" else "VmHWM polling",
    "config": config,
    "simulation": {"people": int(people), "days": int(days), "seed": int(seed),
                   "events": sim.get("events"), "devices": sim.get("devices"),
                   "accounts": sim.get("accounts"), "privacy_requests": sim.get("privacy requests")},
    "empty_replay": {"wall_seconds": round(empty_wall, 3), "peak_rss_kb": empty_rss},
    "runs": nruns,
    "replay": full,
    "replay_quiet": runs["quiet"],
    "replay_runs": all_runs["replay"],
    "replay_quiet_runs": all_runs["quiet"],
    "targets": {
        "events_per_second": target_eps,
        "bytes_per_tracked_device": target_bpd,
        "events_per_second_met": (full["events_per_second"] or 0) >= target_eps,
        "events_per_second_met_by_best_run": best["replay"] >= target_eps,
        "bytes_per_tracked_device_met": full["bytes_per_tracked_device"] is not None
            and full["bytes_per_tracked_device"] <= target_bpd,
    },
}
with open(os.path.join(d, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

def n(x):
    return f"{x:,}" if isinstance(x, int) else f"{x:,.1f}" if isinstance(x, float) else str(x)

ok = lambda b: "ok" if b else "MISSED"
print()
print(f"idlink replay bench  {result['date']}  git {result['git']['commit']}{'+dirty' if result['git']['dirty'] else ''}")
print(f"host: {cpu} ({os.cpu_count()} cores), replays {pin}, {result['measured_with']}, config {config}")
print(f"simulation: {people} people, {days} day(s), seed {seed}: {n(sim.get('events'))} events, {n(sim.get('devices'))} devices")
print()
rows = [
    ("", "replay", "replay --quiet"),
    ("(median of runs)", str(nruns), str(nruns)),
    ("events read", n(full["events_read"]), n(runs["quiet"]["events_read"])),
    ("tracked devices", n(full["tracked_devices"]), n(runs["quiet"]["tracked_devices"])),
    ("wall seconds", f"{full['wall_seconds']:.2f}", f"{runs['quiet']['wall_seconds']:.2f}"),
    ("events/s (wall)", n(full["events_per_second"]), n(runs["quiet"]["events_per_second"])),
    ("  best run", n(best["replay"]), n(best["quiet"])),
    ("  slowest run", n(slowest["replay"]), n(slowest["quiet"])),
    ("CPU seconds", f"{full['cpu_seconds']:.2f}", f"{runs['quiet']['cpu_seconds']:.2f}"),
    ("events/CPU-second", n(full["events_per_cpu_second"]), n(runs["quiet"]["events_per_cpu_second"])),
    ("peak RSS (MiB)", f"{full['peak_rss_kb'] / 1024:.1f}", f"{runs['quiet']['peak_rss_kb'] / 1024:.1f}"),
    ("empty-input RSS (MiB)", f"{empty_rss / 1024:.1f}", f"{empty_rss / 1024:.1f}"),
    ("bytes / tracked device", n(full["bytes_per_tracked_device"]), n(runs["quiet"]["bytes_per_tracked_device"])),
    ("writing the graph (s)", "-" if full["write_seconds"] is None else f"{full['write_seconds']:.2f}", "-"),
]
w0 = max(len(r[0]) for r in rows)
w1 = max(len(r[1]) for r in rows)
w2 = max(len(r[2]) for r in rows)
for r in rows:
    print(f"  {r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}")
print()
print(f"target >= {target_eps:,} events/s end to end: median run {ok(result['targets']['events_per_second_met'])}, "
      f"best run {ok(result['targets']['events_per_second_met_by_best_run'])}")
print(f"target <= {target_bpd} bytes per tracked device: {ok(result['targets']['bytes_per_tracked_device_met'])}")
print(f"results: {os.path.join(d, 'results.json')}")
busy = sorted({k for k, v in all_runs.items() for r in v if r["cpu_seconds"] and r["cpu_seconds"] < 0.9 * r["wall_seconds"]})
if busy:
    print(f"note: {', '.join(busy)} got under 90% of a core (CPU s < 0.9 x wall s): the machine was busy; "
          "events/CPU-second is the fairer figure, or rerun on an idle machine")
if min_devices and (full["tracked_devices"] or 0) < min_devices:
    print(f"warning: only {full['tracked_devices']:,} tracked devices (< {min_devices:,}); raise BENCH_PEOPLE", file=sys.stderr)
    sys.exit(2)
EOF
