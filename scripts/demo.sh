#!/usr/bin/env bash
# Builds idlink, simulates a population, replays it and scores the result.
# Usage: scripts/demo.sh [people] [days] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
people=${1:-2000}; days=${2:-30}; seed=${3:-1}
out=target/demo
cargo build --release -p idlink
bin=target/release/idlink
"$bin" simulate --people "$people" --days "$days" --seed "$seed" --out "$out/sim"
"$bin" replay --input "$out/sim/events.jsonl" --out "$out/graph"
"$bin" evaluate --truth "$out/sim/truth.json" --links "$out/graph/device-links.jsonl"
echo
echo "graph written to $out/graph (device-links.jsonl, account-devices.jsonl, dead-letters.jsonl, summary.json)"
