#!/usr/bin/env bash
# Simulates a population with `idlink simulate` and produces its events to
# idlink's input topics with kcat: privacy requests (kind opt_out, opt_in,
# erase) to the privacy topic, every other event to the events topic, in
# the order the simulator wrote them (its disorder stays well within the
# default lateness bound). Each message is keyed by its device_id, or its
# account_id when it has none, so one device's events share a partition.
#
# Settings (environment): BROKERS, EVENTS_TOPIC, PRIVACY_TOPIC, PEOPLE,
# DAYS, SEED, OUT. The topics must exist (idlink run creates them), so start
# this after idlink is ready. Running it twice produces the events twice.
set -euo pipefail

brokers=${BROKERS:-kafka:9092}
events_topic=${EVENTS_TOPIC:-device-events}
privacy_topic=${PRIVACY_TOPIC:-privacy-requests}
people=${PEOPLE:-2000}
days=${DAYS:-30}
seed=${SEED:-1}
out=${OUT:-/tmp/sim}

idlink simulate --people "$people" --days "$days" --seed "$seed" --out "$out"

# "key<TAB>json" lines, one file per topic. The simulator's ids and values
# never contain tabs, quotes or escapes, so plain text matching is exact.
awk -v events="$out/events.kv" -v privacy="$out/privacy.kv" '
  {
    key = ""
    if (match($0, /"device_id":"[^"]*"/)) {
      key = substr($0, RSTART + 13, RLENGTH - 14)
    } else if (match($0, /"account_id":"[^"]*"/)) {
      key = substr($0, RSTART + 14, RLENGTH - 15)
    }
    file = ($0 ~ /"kind":"(opt_out|opt_in|erase)"/) ? privacy : events
    print key "\t" $0 > file
  }
' "$out/events.jsonl"
touch "$out/events.kv" "$out/privacy.kv"

# Both topics at once, so privacy requests arrive alongside the activity
# they follow rather than after all of it. kcat exits non-zero if a message
# cannot be delivered.
produce() {
  local topic=$1 file=$2
  kcat -P -b "$brokers" -t "$topic" -K $'\t' \
    -X enable.idempotence=true -X linger.ms=20 < "$file"
  echo "produced $(wc -l < "$file") messages to $topic"
}
produce "$events_topic" "$out/events.kv" &
events_pid=$!
produce "$privacy_topic" "$out/privacy.kv" &
privacy_pid=$!
status=0
wait "$events_pid" || status=1
wait "$privacy_pid" || status=1
exit "$status"
