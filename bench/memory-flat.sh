#!/usr/bin/env bash
# Memory over a long stream with a stable active population: does state
# follow the active population, or all history?
#
#   bench/memory-flat.sh            # from the repository root, about 2 minutes
#
# Steps:
#   1. cargo build --release -p idlink
#   2. write a stream of $BENCH_DAYS days (default 180) in which the same
#      households are active every day while ids churn: each household's
#      phone signs in to its account every evening; its laptop, never
#      signed in, is used 20 seconds later on the same home address and
#      resets its cookie every four weeks (a new device id, the old one
#      never seen again); and every day brings one-off visitors (ad and partner
#      pixels) on cafe addresses, each id seen once. The active population
#      is constant; the ids ever seen grow without bound.
#   3. replay the stream's first N days for N = every $BENCH_STEP days
#      (default 20), each prefix a separate `idlink replay` from stdin
#      with config/default.toml, and record per prefix: ids ever seen,
#      devices tracked at the end (summary.json), links by type, and the
#      replay's peak RSS (wait4's ru_maxrss of the idlink process).
#      The engine is deterministic and a prefix's run is the long run cut
#      there, so the prefixes' figures are the long run's at each day.
#   4. print a table and write $BENCH_DIR/results.json
#
# What to expect (the daily sweep, `Engine::sweep` in idlink-core): an
# unsigned device with no link is forgotten once its evidence is past the
# horizon (evidence_horizon_days, 30), an inferred link decays below the
# threshold within it, and address buckets close and go daily. So tracked
# devices and peak RSS rise for about a horizon and then stay flat, while
# the ids ever seen keep growing. Sign-in links live login_link_ttl_days
# (400) and erase markers erase_marker_ttl_days (400): a stream whose
# signed-in devices churn grows for that long (this one's phones do not).
#
# Environment (all optional):
#   BENCH_DIR         work directory          (default target/memory-flat)
#   BENCH_HOUSEHOLDS  households              (default 3000)
#   BENCH_DAYS        days of the stream      (default 180)
#   BENCH_STEP        days between prefixes   (default 20)
#   BENCH_VISITORS    one-off visitors a day per household (default 2)
#   BENCH_IDLINK      idlink binary to measure instead of a fresh build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${BENCH_DIR:-target/memory-flat}
HOUSEHOLDS=${BENCH_HOUSEHOLDS:-3000}
DAYS=${BENCH_DAYS:-180}
STEP=${BENCH_STEP:-20}
VISITORS=${BENCH_VISITORS:-2}
log() { printf '[memory-flat] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v python3 >/dev/null || die "python3 is required"
((HOUSEHOLDS >= 1 && HOUSEHOLDS <= 60000)) || die "BENCH_HOUSEHOLDS must be 1..60000"
((DAYS >= STEP && STEP >= 1)) || die "BENCH_STEP must be 1..BENCH_DAYS"

rm -rf "$DIR"
mkdir -p "$DIR"
if [[ -n ${BENCH_IDLINK:-} ]]; then
    [[ -x $BENCH_IDLINK ]] || die "BENCH_IDLINK=$BENCH_IDLINK is not an executable"
    BIN=$BENCH_IDLINK
else
    log "building: cargo build --release -p idlink"
    cargo build --release -p idlink >&2
    BIN=$PWD/target/release/idlink
fi

log "writing $DAYS days of $HOUSEHOLDS households and $VISITORS visitors a day each"
python3 - "$DIR" "$BIN" "$HOUSEHOLDS" "$DAYS" "$STEP" "$VISITORS" <<'EOF'
import datetime, json, os, subprocess, sys

out, binary, households, days, step, visitors = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
cafes = max(1, households // 50)
reset_days = 28  # a laptop's cookie lives four weeks

def laptop(h, day):
    return f"laptop-{h}-{(day + h) // reset_days}"

def ts(day, second):
    t = start + datetime.timedelta(days=day, seconds=second)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")

def home(h):
    return f"81.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255 or 1}"

# Byte offset of the stream's end at the end of each day.
ends = []
with open(f"{out}/stream.jsonl", "w") as f:
    for day in range(days):
        events = []
        for h in range(households):
            evening = (18 * 60 + h % 180) * 60
            account = f"acct-{h}"
            for k in range(3):
                events.append((evening + 600 * k, {"kind": "page_view", "device_id": f"phone-{h}",
                                                 "ip": home(h), "account_id": account}))
            for k in range(3):
                events.append((evening + 20 + 600 * k, {"kind": "page_view", "device_id": laptop(h, day),
                                                     "ip": home(h)}))
            for v in range(visitors):
                cafe = (h * visitors + v) % cafes
                events.append(((8 * 60 + (h * 7 + v * 13) % 600) * 60,
                               {"kind": "widget_view", "device_id": f"visitor-{day}-{h}-{v}",
                                "ip": f"82.{cafe >> 8 & 255}.{cafe & 255}.1", "source": "ads"}))
        events.sort(key=lambda e: e[0])
        for second, e in events:
            f.write(json.dumps({"ts": ts(day, second), **e}, separators=(",", ":")) + "\n")
        ends.append(f.tell())

ids_per_day = households * visitors
rows = []
for n in range(step, days + 1, step):
    run = f"{out}/day-{n}"
    head = subprocess.Popen(["head", "-c", str(ends[n - 1]), f"{out}/stream.jsonl"], stdout=subprocess.PIPE)
    with open(f"{run}.log", "w") as log:
        p = subprocess.Popen([binary, "replay", "--input", "-", "--config", "config/default.toml",
                              "--out", run], stdin=head.stdout, stderr=log)
        head.stdout.close()
        _, status, usage = os.wait4(p.pid, 0)
    head.wait()
    if status != 0:
        sys.exit(f"replay of the first {n} days failed: see {run}.log")
    s = json.load(open(f"{run}/summary.json"))
    laptops = len({laptop(h, d) for h in range(households) for d in range(n)})
    row = {
        "days": n,
        "events": s["events_read"],
        "ids_seen": households + laptops + ids_per_day * n,
        "tracked_devices": s["tracked_devices"],
        "login_links": s["login_links"],
        "inferred_links": s["inferred_links"],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    rows.append(row)
    print(json.dumps(row), file=sys.stderr)

print(f"\n{'days':>5} {'events':>10} {'ids seen':>10} {'tracked':>9} {'sign-in':>8} {'inferred':>8} {'peak RSS MB':>11}", file=sys.stderr)
for r in rows:
    print(f"{r['days']:>5} {r['events']:>10} {r['ids_seen']:>10} {r['tracked_devices']:>9} "
          f"{r['login_links']:>8} {r['inferred_links']:>8} {r['peak_rss_mb']:>11}", file=sys.stderr)
json.dump({"households": households, "days": days, "visitors_per_household_day": visitors,
           "prefixes": rows}, open(f"{out}/results.json", "w"), indent=2)
EOF
log "results: $DIR/results.json"
