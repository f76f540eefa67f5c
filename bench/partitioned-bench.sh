#!/usr/bin/env bash
# Partitioned `idlink run` (service.partitioned = true) through a Kafka
# broker with one, two and three instances in one group: does adding an
# instance add capacity?
#
#   bench/partitioned-bench.sh            # from the repository root
#
# Steps:
#   1. build `idlink` and the load tool (crates/idlink/examples/kafka_load.rs)
#   2. start nisshi (in memory, on a free loopback port), or use
#      $BENCH_BROKERS
#   3. simulate a population and replay it: the expected graph
#   4. the ceiling: a pass-through consumer group (kafka_load chain) moves
#      every device event through the topic hops a device event takes in
#      the stages (input, routed device events, sightings, device-links;
#      evidence and account records are per device-day and account, not
#      per event), with the same batching (5,000 records or 50 ms:
#      produce, await the acknowledgements, commit), the sightings hop
#      packed as idlink packs it (one record per source and target
#      partition a batch, at most 1,000 inside), and no linking work
#   5. for each instance count N in $BENCH_INSTANCES: a fresh nisshi
#      (fresh_broker in lib.sh; an external broker is kept), fresh topics, N
#      instances started together and ready (each holds its share of the
#      stage partitions), then every record produced as fast as possible;
#      measured: seconds from the first record produced until the folded
#      output topics equal replay's files (polled every 0.5 s, so the
#      figure includes up to 0.5 s of polling, and the 10 s of quiet
#      after which the input counts as idle and the graph is flushed;
#      a run still different a minute after that is reported as such),
#      records/s over that time and over that time less the idle
#      wait (compared with the ceiling), the late events (any is a
#      warning: replay has none), each instance's peak RSS and CPU
#      seconds, and the broker's CPU seconds over the run
#   6. latency, for one and for two instances: a fresh nisshi, fresh topics, the
#      instances live, the records produced at
#      half of the first run's rate (less the idle wait); p50/p99 of
#      idlink_ingest_to_publish_seconds (input record timestamp to the
#      acknowledged publication of the batch that took its routed event)
#      and of idlink_sign_in_to_publish_seconds (sign-ins alone: the
#      target)
#   7. print a table and write $BENCH_DIR/results.json
#
# On a 2-core machine that also runs the broker, more instances mostly
# compete for the same cores: the figures show the partitioning's cost and
# memory split here, not the scaling a cluster would give.
#
# Environment (all optional):
#   BENCH_DIR        work directory        (default target/partitioned-bench)
#   BENCH_PEOPLE     simulated people      (default 2000)
#   BENCH_DAYS       simulated days        (default 7)
#   BENCH_SEED       simulator seed        (default 7)
#   BENCH_INSTANCES  instance counts       (default "1 2 3")
#   BENCH_LATENCY_INSTANCES  instance counts of the latency runs
#                    (default "1 2"; empty: none)
#   BENCH_LATENCY_RATE  records/s of the latency run (default: half of
#                    the first run's rate less the idle wait)
#   BENCH_BATCH_MS   service.batch_max_ms of the instances (default 50)
#   BENCH_IDLE_SECONDS  service.source_idle_seconds of the instances
#                    (default 10; see IDLE_SECONDS below)
#   BENCH_PRIVACY_IDLE_MS  service.privacy_source_idle_ms of the
#                    instances (default: the product's, 1000): how long a
#                    quiet privacy partition holds the watermark. The bench
#                    runs days in seconds, so a hold of a second of wall
#                    time is hours of event time, released at once
#   BENCH_LOG        IDLINK_LOG of the instances (default warn)
#   BENCH_SNAPSHOT_SECONDS  service.snapshot_interval_seconds of the
#                    instances (default 10); each snapshot lets a task
#                    purge its internal partitions below it
#   BENCH_PERF       set: a perf profile of the first run's first
#                    instance in $BENCH_DIR/perf.data (frame pointers;
#                    "dwarf": DWARF call graphs at 99 Hz)
#   BENCH_BROKERS    external bootstrap servers instead of nisshi
#   BENCH_IDLINK     idlink binary to measure instead of the one built
#                    (an older build, for an A/B on the same day)
#   NISSHI_BIN       nisshi binary (default ~/.cache/idlink/nisshi-0.8.1/bin/nisshi)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${BENCH_DIR:-target/partitioned-bench}
PEOPLE=${BENCH_PEOPLE:-2000}
DAYS=${BENCH_DAYS:-7}
SEED=${BENCH_SEED:-7}
INSTANCES=${BENCH_INSTANCES:-1 2 3}
LATENCY_INSTANCES=${BENCH_LATENCY_INSTANCES-1 2}
# source_idle_seconds of the instances. Before session 22 it had to be
# longer than the time from their assignment to the first record produced
# (restores, readiness, the settling wait): with every input partition idle
# when the records started, the first router to read ran the watermark past
# the others' first events (on a slow 2-core VM that time reached 5 s, and
# runs with 5 s gave late events and a different graph). A resumption now
# holds the idle partitions until confirmed idle twice (ARCHITECTURE.md).
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-10}
# BENCH_START_IDLE=1: before producing, wait until every input partition
# (events and privacy) is idle, the resumption case: instances long up
# before their producer.
START_IDLE=${BENCH_START_IDLE:-}
BATCH_MS=${BENCH_BATCH_MS:-50}
SNAPSHOT_SECONDS=${BENCH_SNAPSHOT_SECONDS:-10}

BENCH_NAME=partitioned-bench
# shellcheck source=bench/lib.sh
source bench/lib.sh
# CPU seconds (user + system) a process has used so far.
cpu_seconds() { python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print(round((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'),1))" 2>/dev/null || echo 0; }
# Starts `idlink run` in group $1 with config $2, logging to $3; sets
# STARTED_PID and STARTED_HTTP (its metrics and health address).
start_idlink() {
    STARTED_HTTP=127.0.0.1:$(free_port)
    IDLINK_BROKERS=$BROKERS IDLINK_GROUP_ID="$1" IDLINK_HTTP_ADDR=$STARTED_HTTP IDLINK_LOG=${BENCH_LOG:-warn} \
        "$BIN" run --config "$2" > "$3" 2>&1 &
    STARTED_PID=$!
    PIDS+=($!)
}
# Waits (up to a minute) until the instance at $1 answers /health/ready.
wait_ready() {
    for _ in $(seq 1 600); do curl -fsS -o /dev/null "http://$1/health/ready" 2>/dev/null && return; sleep 0.1; done
}
# The sum of the samples whose line starts with $1 over the instances at
# the other arguments: one curl and awk per instance, so looking costs the
# measured run next to nothing.
metric_total() {
    local prefix=$1 c=0 h
    shift
    for h in "$@"; do
        c=$(curl -fsS "http://$h/metrics" 2>/dev/null | awk -v c="$c" -v p="$prefix" 'index($0, p) == 1 {c += $2} END {printf "%d\n", c}')
    done
    echo "${c:-0}"
}
# Input records whose effects the instances at $@ have published (the
# count of idlink_ingest_to_publish_seconds, summed).
published() { metric_total idlink_ingest_to_publish_seconds_count "$@"; }
# Input partitions the instances at $@ report idle, summed.
idle_partitions() { metric_total "idlink_idle_input_partitions " "$@"; }
# Starts $1 instances in group $2 with config $3 (logs $4-<i>.log), waits
# until every one is ready and the group has settled; sets the arrays
# pids and https.
start_group() {
    pids=()
    https=()
    for i in $(seq 1 "$1"); do
        start_idlink "$2" "$3" "$4-$i.log"
        https+=("$STARTED_HTTP")
        pids+=("$STARTED_PID")
    done
    for h in "${https[@]}"; do wait_ready "$h"; done
    sleep 2 # the group settles: every instance holds its share (less than source_idle_seconds)
}

build_binaries
start_broker

config() { # $1 = topic prefix, $2 = file
    {
        topics_config "$1"
        cat <<EOF
internal_topic_prefix = "$1-internal"
input_partitions = 6
output_partitions = 4
stage_partitions = 6

[kafka.consumer]
"session.timeout.ms" = "10000"
"heartbeat.interval.ms" = "1000"

[service]
partitioned = true
batch_max_ms = $BATCH_MS
idle_flush_ms = $((BATCH_MS > 200 ? BATCH_MS : 200))
source_idle_seconds = $IDLE_SECONDS
snapshot_interval_seconds = $SNAPSHOT_SECONDS
EOF
        if [[ -n ${BENCH_PRIVACY_IDLE_MS:-} ]]; then
            echo "privacy_source_idle_ms = $BENCH_PRIVACY_IDLE_MS"
        fi
    } > "$2"
}

log "simulating $PEOPLE people, $DAYS days, seed $SEED"
"$BIN" simulate --people "$PEOPLE" --days "$DAYS" --seed "$SEED" --out "$DIR/sim" 2> "$DIR/simulate.log"
# Sorted by ts, as the tests do: disorder within the lateness bound.
python3 - "$DIR/sim/events.jsonl" "$DIR/sorted.jsonl" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
lines.sort(key=lambda l: json.loads(l).get("ts", ""))
open(sys.argv[2], "w").writelines(lines)
EOF
config replay "$DIR/replay.toml"
"$BIN" replay --input "$DIR/sorted.jsonl" --config "$DIR/replay.toml" --out "$DIR/replay" 2> "$DIR/replay.log"
TOTAL=$(grep -c . "$DIR/sorted.jsonl")
PRIVACY=$(grep -cE '"kind":"(opt_out|opt_in|erase)"' "$DIR/sorted.jsonl" || true)
EVENTS=$((TOTAL - PRIVACY))
log "input: $TOTAL records ($EVENTS device events, $PRIVACY privacy requests)"

# The ceiling: a pass-through moving every device event through the topic
# hops an event takes in the stages (input, routed device events,
# sightings, device-links), with the same batching and the sightings hop
# packed, and no linking work. One instance of idlink creates the topics
# with its settings and stops; the chain skips what it wrote to them.
chain=pb-chain-$(date +%s)
config "$chain" "$DIR/chain.toml"
start_idlink "$chain" "$DIR/chain.toml" "$DIR/chain-create.log"
wait_ready "$STARTED_HTTP"
kill -TERM "$STARTED_PID"; wait "$STARTED_PID" 2>/dev/null || true
"$LOAD" --brokers "$BROKERS" produce --input "$DIR/sorted.jsonl" \
    --events-topic "$chain-device-events" --privacy-topic "$chain-privacy-requests" > /dev/null
"$LOAD" --brokers "$BROKERS" chain --input "$chain-device-events" \
    --hops "$chain-internal-device-events,$chain-internal-sightings" \
    --output "$chain-device-links" --group "$chain-pass" --count "$EVENTS" \
    --packed "$chain-internal-sightings" --batch 5000 --batch-ms 50 > "$DIR/chain.json"
log "pass-through over the same hops: $(cat "$DIR/chain.json")"

RESULTS=()
for n in $INSTANCES; do
    fresh_broker
    prefix=pb-$n-$(date +%s)
    config "$prefix" "$DIR/run-$n.toml"
    start_group "$n" "$prefix" "$DIR/run-$n.toml" "$DIR/run-$n"
    if [[ -n $START_IDLE ]]; then
        # 6 partitions of each input topic (config above).
        until (($(idle_partitions "${https[@]}") >= 12)); do sleep 0.2; done
        log "every input partition idle before the first record"
    fi
    broker_before=$([[ -n ${BROKER_PID:-} ]] && cpu_seconds "$BROKER_PID" || echo 0)
    cpu_before=()
    for p in "${pids[@]}"; do cpu_before+=("$(cpu_seconds "$p")"); done
    perf_pid=
    if [[ -n ${BENCH_PERF:-} && ! -e $DIR/perf.data ]]; then
        # A CPU profile of the first instance of the first run.
        if [[ $BENCH_PERF == dwarf ]]; then graph=(-F 99 --call-graph dwarf,16384); else graph=(-F 499 -g); fi
        perf record "${graph[@]}" -p "${pids[0]}" -o "$DIR/perf.data" 2> "$DIR/perf.log" &
        perf_pid=$!
    fi
    started=$(date +%s.%N)
    "$LOAD" --brokers "$BROKERS" produce --input "$DIR/sorted.jsonl" \
        --events-topic "$prefix-device-events" --privacy-topic "$prefix-privacy-requests" > "$DIR/produce-$n.json"
    # Cheap looks (one scrape per instance) until every device event's
    # effects are published; only then the folds, which read the whole
    # output topics and would take CPU from the run if done all along.
    until (($(published "${https[@]}") >= EVENTS)); do sleep 0.1; done
    published_at=$(date +%s.%N)
    same=false
    # Up to a minute past the idle wait for the folded topics to equal
    # replay's files; a run that never gets there is reported, not waited
    # on for ever.
    give_up=$(python3 -c "print($(date +%s) + $IDLE_SECONDS + 60)")
    while (($(date +%s) < give_up)); do
        for t in device-links account-devices; do
            "$LOAD" --brokers "$BROKERS" fold --topic "$prefix-$t" --out "$DIR/folded-$n-$t.jsonl" > /dev/null
        done
        if cmp -s "$DIR/folded-$n-device-links.jsonl" "$DIR/replay/device-links.jsonl" &&
            cmp -s "$DIR/folded-$n-account-devices.jsonl" "$DIR/replay/account-devices.jsonl"; then
            same=true
            break
        fi
        sleep 0.5
    done
    done_at=$(date +%s.%N)
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
        log "profile: perf report -i $DIR/perf.data --no-children"
    fi
    late=0
    for h in "${https[@]}"; do
        late=$((late + $(curl -fsS "http://$h/metrics" | awk '/^idlink_late_events_total/ {printf "%d", $2}')))
    done
    ((late == 0)) || log "warning: $late late events: the graph differs from replay's"
    rss=()
    cpu=()
    for i in "${!pids[@]}"; do
        p=${pids[$i]}
        rss+=("$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)")
        cpu+=("$(python3 -c "print(round($(cpu_seconds "$p") - ${cpu_before[$i]}, 1))")")
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    broker_cpu=$([[ -n ${BROKER_PID:-} ]] && cpu_seconds "$BROKER_PID" || echo 0)
    broker_used=$(python3 -c "print(round($broker_cpu - $broker_before, 1))")
    secs=$(python3 -c "print(round($done_at - $started, 2))")
    published_secs=$(python3 -c "print(round($published_at - $started, 2))")
    rate=$(python3 -c "print(round($TOTAL / ($done_at - $started)))")
    # The graph is final only after the input has been quiet for
    # source_idle_seconds (then the last flush): a fixed wait, not work.
    if python3 -c "import sys; sys.exit(0 if $done_at - $started > $IDLE_SECONDS + 1 else 1)"; then
        busy=$(python3 -c "print(round($TOTAL / ($done_at - $started - $IDLE_SECONDS)))")
    else
        die "the run took $secs s, within the ${IDLE_SECONDS} s idle wait it includes: too small to measure (raise BENCH_PEOPLE or BENCH_DAYS)"
    fi
    ratio=$(python3 -c "import json; print(round($busy / json.load(open('$DIR/chain.json'))['records_per_second'], 2))")
    log "$n instance(s): every device event's effects published after $published_secs s"
    log "$n instance(s): replay's graph $same after $secs s, $late late events ($rate records/s; $busy records/s less the ${IDLE_SECONDS} s idle wait, $ratio of the pass-through); peak RSS kB per instance: ${rss[*]}; CPU s per instance: ${cpu[*]}; broker CPU s: $broker_used"
    FIRST_BUSY=${FIRST_BUSY:-$busy}
    RESULTS+=("{\"instances\": $n, \"same_as_replay\": $same, \"late_events\": $late, \"seconds\": $secs, \"published_seconds\": $published_secs, \"records_per_second\": $rate, \"records_per_second_less_idle_wait\": $busy, \"of_passthrough\": $ratio, \"peak_rss_kb\": [$(IFS=,; echo "${rss[*]}")], \"cpu_seconds\": [$(IFS=,; echo "${cpu[*]}")], \"broker_cpu_seconds\": $broker_used}")
done

# Latency at half of the first run's throughput (less the idle wait), for
# each instance count in $BENCH_LATENCY_INSTANCES, live and ready before
# the records are produced at that rate: from each input record's
# timestamp to the acknowledged publication of the batch that took its
# routed event (idlink_ingest_to_publish_seconds for every record, and
# idlink_sign_in_to_publish_seconds for sign-ins, the issue's target: a
# sign-in is published when its device partition takes it), summed over
# the instances.
lat_rate=${BENCH_LATENCY_RATE:-$((FIRST_BUSY / 2))}
LATENCIES=()
for n in $LATENCY_INSTANCES; do
    fresh_broker
    prefix=pb-lat-$n-$(date +%s)
    config "$prefix" "$DIR/run-lat-$n.toml"
    start_group "$n" "$prefix" "$DIR/run-lat-$n.toml" "$DIR/run-lat-$n"
    log "latency: producing at $lat_rate records/s while $n instance(s) run"
    "$LOAD" --brokers "$BROKERS" produce --input "$DIR/sorted.jsonl" --rate "$lat_rate" \
        --events-topic "$prefix-device-events" --privacy-topic "$prefix-privacy-requests" > "$DIR/produce-lat-$n.json"
    for _ in $(seq 1 600); do
        (($(published "${https[@]}") >= EVENTS)) && break
        sleep 0.2
    done
    files=()
    for i in $(seq 1 "$n"); do
        curl -fsS "http://${https[$((i - 1))]}/metrics" > "$DIR/metrics-lat-$n-$i.txt"
        files+=("$DIR/metrics-lat-$n-$i.txt")
    done
    for p in "${pids[@]}"; do kill -TERM "$p"; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    latency=$(python3 bench/latency.py --rate "$lat_rate" "${files[@]}")
    log "latency, $n instance(s): $latency"
    LATENCIES+=("{\"instances\": $n, \"quantiles\": $latency}")
done

printf '{"passthrough": %s, "runs": [%s], "latency": [%s]}\n' "$(cat "$DIR/chain.json")" "$(IFS=,; echo "${RESULTS[*]}")" "$(IFS=,; echo "${LATENCIES[*]}")" | python3 -m json.tool > "$DIR/results.json"
log "records: $TOTAL; results in $DIR/results.json"
cat "$DIR/results.json"
