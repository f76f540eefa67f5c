# Shared by the Kafka benchmarks (kafka-bench.sh, partitioned-bench.sh):
# sourced, never run. The sourcing script has set BENCH_NAME (its log
# prefix) and DIR (its work directory), and runs from the repository root.
#
# Gives: log, die, free_port, wait_port, a PIDS array killed on exit,
# build_binaries (sets BIN and LOAD), start_broker (sets BROKERS, and
# BROKER_PID for a broker started here), fresh_broker (a new empty broker
# in place of the one started here) and topics_config (the config lines
# every run shares).

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v python3 >/dev/null || die "python3 is required"

NISSHI=${NISSHI_BIN:-$HOME/.cache/idlink/nisshi-0.8.1/bin/nisshi}

rm -rf "$DIR"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits (up to 30 s) until something listens on loopback port $1.
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}

# Builds idlink and the load tool; BIN is $BENCH_IDLINK when set (an older
# build, for an A/B on the same day).
build_binaries() {
    log "building: cargo build --release -p idlink --bin idlink --example kafka_load"
    cargo build --release -p idlink --bin idlink --example kafka_load >&2
    BIN=${BENCH_IDLINK:-$PWD/target/release/idlink}
    [[ -x $BIN ]] || die "BENCH_IDLINK=$BIN is not an executable"
    [[ -z ${BENCH_IDLINK:-} ]] || log "measuring $BIN instead of the fresh build"
    LOAD=$PWD/target/release/examples/kafka_load
}

# The brokers of $BENCH_BROKERS, or nisshi in memory on a free port.
start_broker() {
    if [[ -n ${BENCH_BROKERS:-} ]]; then
        BROKERS=$BENCH_BROKERS
        log "broker: $BROKERS (external)"
        return
    fi
    [[ -x $NISSHI ]] || die "no nisshi at $NISSHI: run scripts/install-nisshi.sh, or set BENCH_BROKERS"
    local port
    port=$(free_port)
    mkdir -p "$DIR/broker"
    (cd "$DIR/broker" && exec "$NISSHI" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://nisshi/ \
        --group-initial-rebalance-delay 0s >> broker.log 2>&1) &
    BROKER_PID=$!
    PIDS+=("$BROKER_PID")
    wait_port "$port"
    BROKERS=127.0.0.1:$port
    log "broker: nisshi on $BROKERS"
}

# Replaces the nisshi started here by a new, empty one, so that a run does
# not pay for the topics of the runs before it: nisshi's in-memory store
# slows as it accumulates them, which made a run's figures depend on its
# place in the order (bench/README.md, session 23). An external broker
# ($BENCH_BROKERS) is kept.
fresh_broker() {
    [[ -n ${BROKER_PID:-} ]] || return 0
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    start_broker
}

# The config lines every run shares: the exclusion lists and topics named
# after prefix $1. The caller adds its own settings of `[kafka]` right
# after, and its other sections.
topics_config() {
    cat <<CONFIG
[addresses]
exclude_cidr_files = ["$PWD/config/cidr/datacenter.txt", "$PWD/config/cidr/vpn.txt"]

[kafka]
events_topic = "$1-device-events"
privacy_topic = "$1-privacy-requests"
device_links_topic = "$1-device-links"
account_devices_topic = "$1-account-devices"
dead_letters_topic = "$1-dead-letters"
privacy_acks_topic = "$1-privacy-acks"
snapshots_topic = "$1-snapshots"
manifests_topic = "$1-manifests"
CONFIG
}
