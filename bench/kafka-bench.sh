#!/usr/bin/env bash
# End-to-end benchmark of `idlink run` through a Kafka broker, with the two
# ceilings it is compared with on the same broker and machine.
#
#   bench/kafka-bench.sh                 # from the repository root
#
# Steps:
#   1. build `idlink` and the load tool (crates/idlink/examples/kafka_load.rs)
#   2. start nisshi (in memory, on a free loopback port), or use
#      $BENCH_BROKERS (e.g. the docker-compose Kafka, localhost:9094)
#   3. simulate a population and replay it: the expected graph
#   4. produce every event to fresh input topics as fast as possible
#   5. ceiling 1: a plain consumer reads the events topic, nothing else
#   6. ceiling 2: a pass-through consumer group moves every event to an
#      output topic through idlink's hops (consume, produce, await the
#      acknowledgements, commit), without linking work
#   7. idlink run on the same topics: time from its first consumed record
#      until every record is consumed and published, its peak RSS; then the
#      folded output topics are compared with replay's files
#   8. latency: fresh topics, idlink running, events produced at half of
#      idlink's measured throughput; p50/p99 of
#      idlink_ingest_to_publish_seconds (record timestamp to acknowledged
#      publication of its effects, sign-in links included)
#   9. print a table and write $BENCH_DIR/results.json
#
#   7b. the same with two instances in one group: one owns the group and
#      does the work, the other stands by (ARCHITECTURE.md, "Several
#      instances"), so the throughput should equal step 7's; reported with
#      the standby's peak RSS
#
# idlink's state is the whole graph: a second instance adds availability,
# not throughput, until the partitioned stages exist (ARCHITECTURE.md).
#
# Environment (all optional):
#   BENCH_DIR      work directory           (default target/kafka-bench)
#   BENCH_PEOPLE   simulated people         (default 3000)
#   BENCH_DAYS     simulated days           (default 7)
#   BENCH_SEED     simulator seed           (default 7)
#   BENCH_BROKERS  external bootstrap servers instead of nisshi
#   BENCH_PERF     set: a perf profile of the one-instance run in
#                  $BENCH_DIR/perf.data ("dwarf": DWARF call graphs at 99 Hz)
#   NISSHI_BIN     nisshi binary (default ~/.cache/idlink/nisshi-0.8.1/bin/nisshi)
#   BENCH_IDLINK   idlink binary to measure instead of the fresh build (an
#                  A/B on one day; the load tool is still built)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${BENCH_DIR:-target/kafka-bench}
PEOPLE=${BENCH_PEOPLE:-3000}
DAYS=${BENCH_DAYS:-7}
SEED=${BENCH_SEED:-7}
BENCH_NAME=kafka-bench
# shellcheck source=bench/lib.sh
source bench/lib.sh
json() { python3 -c "import json,sys; print(json.load(open('$1'))$2)"; }

# 1. Build.
build_binaries

# 2. Broker.
start_broker

RUN=bench-$(date +%s)
config() { # $1 = topic prefix, $2 = file
    {
        topics_config "$1"
        cat <<EOF
input_partitions = 4
output_partitions = 4

[service]
idle_flush_ms = 200
source_idle_seconds = 1
snapshot_interval_seconds = 10
EOF
    } > "$2"
}

# 3. Simulate and replay.
log "simulating $PEOPLE people, $DAYS days, seed $SEED"
"$BIN" simulate --people "$PEOPLE" --days "$DAYS" --seed "$SEED" --out "$DIR/sim" 2> "$DIR/simulate.log"
config "$RUN" "$DIR/idlink.toml"
"$BIN" replay --input "$DIR/sim/events.jsonl" --config "$DIR/idlink.toml" --out "$DIR/replay" 2> "$DIR/replay.log"
TOTAL=$(grep -c . "$DIR/sim/events.jsonl")
PRIVACY=$(grep -cE '"kind":"(opt_out|opt_in|erase)"' "$DIR/sim/events.jsonl" || true)
EVENTS=$((TOTAL - PRIVACY))
log "input: $TOTAL records ($EVENTS device events, $PRIVACY privacy requests)"

# The service creates the topics with idlink's settings; start it once
# briefly so the producer writes into them.
spawn_idlink() { # $1 = config, $2 = log, $3 = group; sets IDLINK_PID, HTTP
    local hp
    hp=$(free_port)
    HTTP=127.0.0.1:$hp
    IDLINK_BROKERS=$BROKERS IDLINK_GROUP_ID="$3" IDLINK_HTTP_ADDR=$HTTP \
        IDLINK_LOG=warn "$BIN" run --config "$1" > "$2" 2>&1 &
    IDLINK_PID=$!
    PIDS+=("$IDLINK_PID")
}
start_idlink() { # $1 = config, $2 = log, [$3 = group]; waits until ready
    spawn_idlink "$1" "$2" "${3:-$(basename "$1" .toml)-$RUN}"
    for _ in $(seq 1 600); do
        curl -fsS -o /dev/null "http://$HTTP/health/ready" 2>/dev/null && return 0
        kill -0 "$IDLINK_PID" 2>/dev/null || { cat "$2" >&2; die "idlink exited"; }
        sleep 0.1
    done
    die "idlink not ready within 60 s"
}
# One scrape of the instance's metrics, summed over series: prints
# "consumed buffered queued". Polling must cost next to nothing: the
# machine's two cores are shared with the broker and idlink, so the loops
# below use one curl and awk per look, no interpreter start-ups.
scrape() {
    curl -fsS "http://$HTTP/metrics" | awk '!/^#/ { split($1, n, "{"); v[n[1]] += $2 }
        END { printf "%d %d %d\n", v["idlink_events_consumed_total"], v["idlink_reorder_buffer_events"], v["idlink_producer_queue_depth"] }'
}

# 4. Produce.
log "creating topics (idlink start/stop), then producing $TOTAL records"
start_idlink "$DIR/idlink.toml" "$DIR/idlink-create.log"
kill -TERM "$IDLINK_PID"; wait "$IDLINK_PID" || true
"$LOAD" --brokers "$BROKERS" produce --input "$DIR/sim/events.jsonl" \
    --events-topic "$RUN-device-events" --privacy-topic "$RUN-privacy-requests" > "$DIR/produce.json"
log "  produced: $(cat "$DIR/produce.json")"

# 5. Plain consumer.
"$LOAD" --brokers "$BROKERS" consume --topic "$RUN-device-events" --count "$EVENTS" > "$DIR/plain.json"
log "  plain consumer: $(cat "$DIR/plain.json")"

# 6. Pass-through.
"$LOAD" --brokers "$BROKERS" passthrough --input "$RUN-device-events" --output "$RUN-passthrough" \
    --group "$RUN-passthrough" --count "$EVENTS" > "$DIR/passthrough.json"
log "  pass-through: $(cat "$DIR/passthrough.json")"

# 7. idlink on the prefilled topics (a new group: it starts from the beginning).
# measure_run NAME: waits until every record is consumed and published;
# sets RUN_S (first consumed record to all published), RSS_KB, SAME.
measure_run() {
    local name=$1 first="" consumed now buffered queued done_at t
    while :; do
        read -r consumed buffered queued < <(scrape || echo 0 1 1)
        now=$EPOCHREALTIME
        if [[ -z $first ]] && ((consumed > 0)); then first=$now; fi
        if ((consumed >= TOTAL && buffered == 0 && queued == 0)); then
            done_at=$now
            break
        fi
        kill -0 "$IDLINK_PID" 2>/dev/null || { tail -20 "$DIR/idlink-$name.log" >&2; die "idlink exited"; }
        sleep 0.1
    done
    RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$IDLINK_PID/status")
    RUN_S=$(python3 -c "print($done_at - $first)")
    log "  idlink ($name): $TOTAL records in $RUN_S s (first consumed record to all published), peak RSS $RSS_KB kB"
    for t in device-links account-devices; do
        "$LOAD" --brokers "$BROKERS" fold --topic "$RUN-$t" --out "$DIR/folded-$name-$t.jsonl" > /dev/null
    done
    SAME=true
    cmp -s "$DIR/folded-$name-device-links.jsonl" "$DIR/replay/device-links.jsonl" || SAME=false
    cmp -s "$DIR/folded-$name-account-devices.jsonl" "$DIR/replay/account-devices.jsonl" || SAME=false
    log "  folded outputs equal replay's: $SAME"
}
log "idlink run on the prefilled topics"
cp "$DIR/idlink.toml" "$DIR/idlink-full.toml"
start_idlink "$DIR/idlink-full.toml" "$DIR/idlink-full.log"
perf_pid=
if [[ -n ${BENCH_PERF:-} ]]; then
    # A CPU profile of this run (frame pointers; "dwarf": DWARF call graphs).
    if [[ $BENCH_PERF == dwarf ]]; then graph=(-F 99 --call-graph dwarf,16384); else graph=(-F 499 -g); fi
    perf record "${graph[@]}" -p "$IDLINK_PID" -o "$DIR/perf.data" 2> "$DIR/perf.log" &
    perf_pid=$!
fi
measure_run full
if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
    log "  profile: perf report -i $DIR/perf.data --no-children"
fi
idlink_s=$RUN_S; rss_kb=$RSS_KB; same=$SAME
kill -TERM "$IDLINK_PID"; wait "$IDLINK_PID" || true

# 7b. Two instances in a new group: the first to be ready owns it.
log "idlink run with two instances in one group"
cp "$DIR/idlink.toml" "$DIR/idlink-two.toml"
start_idlink "$DIR/idlink-two.toml" "$DIR/idlink-two.log" "two-$RUN"
OWNER_PID=$IDLINK_PID; OWNER_HTTP=$HTTP
spawn_idlink "$DIR/idlink-two.toml" "$DIR/idlink-standby.log" "two-$RUN"
STANDBY_PID=$IDLINK_PID
IDLINK_PID=$OWNER_PID; HTTP=$OWNER_HTTP
# The folded topics already hold step 7's graph; what matters here is
# the time and that the standby did none of the work.
measure_run two
two_s=$RUN_S; two_same=$SAME
standby_kb=$(awk '/VmHWM/ {print $2}' "/proc/$STANDBY_PID/status")
log "  standby peak RSS $standby_kb kB"
kill -TERM "$OWNER_PID" "$STANDBY_PID"; wait "$OWNER_PID" "$STANDBY_PID" || true

# 8. Latency at half of idlink's throughput, idlink live.
rate=$(python3 -c "print(max(1, int($TOTAL / $idlink_s / 2)))")
LAT=$RUN-lat
config "$LAT" "$DIR/idlink-lat.toml"
log "latency: producing at $rate records/s while idlink runs"
start_idlink "$DIR/idlink-lat.toml" "$DIR/idlink-lat.log"
"$LOAD" --brokers "$BROKERS" produce --input "$DIR/sim/events.jsonl" --rate "$rate" \
    --events-topic "$LAT-device-events" --privacy-topic "$LAT-privacy-requests" > "$DIR/produce-lat.json"
for _ in $(seq 1 600); do
    read -r consumed _ < <(scrape || echo 0)
    ((consumed >= TOTAL)) && break
    sleep 0.1
done
sleep 2
curl -fsS "http://$HTTP/metrics" > "$DIR/metrics-lat.txt"
python3 bench/latency.py "$DIR/metrics-lat.txt" > "$DIR/latency.json"
kill -TERM "$IDLINK_PID"; wait "$IDLINK_PID" || true

# 9. Report.
python3 - "$DIR" "$TOTAL" "$idlink_s" "$rss_kb" "$same" "$rate" "$two_s" "$standby_kb" "$two_same" <<'EOF'
import json, sys
d, total, idlink_s, rss_kb, same, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
two_s, standby_kb, two_same = float(sys.argv[7]), int(sys.argv[8]), sys.argv[9]
load = lambda f: json.load(open(f"{d}/{f}"))
plain, passthrough, produced = load("plain.json"), load("passthrough.json"), load("produce.json")
latency = load("latency.json")
count = latency["records"]
idlink_rps = total / idlink_s
r = {
    "records": total,
    "producer_records_per_second": produced["records_per_second"],
    "plain_consumer_records_per_second": plain["records_per_second"],
    "passthrough_records_per_second": passthrough["records_per_second"],
    "idlink_records_per_second": idlink_rps,
    "idlink_vs_plain": idlink_rps / plain["records_per_second"],
    "idlink_vs_passthrough": idlink_rps / passthrough["records_per_second"],
    "idlink_peak_rss_mib": rss_kb / 1024,
    "folded_outputs_equal_replay": same == "true",
    "two_instances_records_per_second": total / two_s,
    "two_instances_standby_peak_rss_mib": standby_kb / 1024,
    "two_instances_folded_outputs_equal_replay": two_same == "true",
    "latency_rate_records_per_second": rate,
    "latency_p50_seconds_at_most": latency["p50_seconds_at_most"],
    "latency_p99_seconds_at_most": latency["p99_seconds_at_most"],
    "latency_records": count,
    "sign_in_latency_p50_seconds_at_most": latency["sign_ins"]["p50_seconds_at_most"],
    "sign_in_latency_p99_seconds_at_most": latency["sign_ins"]["p99_seconds_at_most"],
    "sign_in_latency_records": latency["sign_ins"]["records"],
}
json.dump(r, open(f"{d}/results.json", "w"), indent=2)
print(f"""
                                   records/s   vs idlink
  producer (input)               {r['producer_records_per_second']:>11,.0f}
  plain consumer (ceiling 1)     {r['plain_consumer_records_per_second']:>11,.0f}   idlink = {r['idlink_vs_plain']:.2f} of it
  pass-through (ceiling 2)       {r['passthrough_records_per_second']:>11,.0f}   idlink = {r['idlink_vs_passthrough']:.2f} of it
  idlink run, 1 instance         {idlink_rps:>11,.0f}
  idlink run, 2 instances        {r['two_instances_records_per_second']:>11,.0f}   (one owner, one standby: peak RSS {r['two_instances_standby_peak_rss_mib']:.1f} MiB)
  idlink peak RSS                {r['idlink_peak_rss_mib']:>10.1f} MiB
  folded outputs equal replay    {r['folded_outputs_equal_replay']}
  latency at {rate:,} records/s: p50 <= {r['latency_p50_seconds_at_most']} s, p99 <= {r['latency_p99_seconds_at_most']} s ({count:,.0f} records)
    sign-ins alone: p50 <= {r['sign_in_latency_p50_seconds_at_most']} s, p99 <= {r['sign_in_latency_p99_seconds_at_most']} s ({r['sign_in_latency_records']:,.0f} records)
  targets: >= 0.7 of pass-through; sign-in p99 < 1 s at half the maximum throughput
results: {d}/results.json""")
EOF
