#!/usr/bin/env bash
# Link quality over several simulator seeds: the README's "Quality" table.
#
#   bench/quality.sh                 # from the repository root
#
# For each seed: `idlink simulate` (default scenario: 2,000 people, 30
# days), `idlink replay` with the config, `idlink evaluate --json`. Prints
# one row per seed and the pooled inferred precision, and writes
# $QUALITY_DIR/results.json (results-<options>.json with QUALITY_SIMULATE).
# Simulations are reused while the binary is unchanged.
#
# Environment (all optional):
#   QUALITY_DIR     work directory            (default target/quality)
#   QUALITY_SEEDS   seeds                     (default "1 2 3 4 5 6 7")
#   QUALITY_PEOPLE  simulated people          (default 2000)
#   QUALITY_DAYS    simulated days            (default 30)
#   QUALITY_CONFIG  replay config             (default config/default.toml)
#   QUALITY_SIMULATE  more `idlink simulate` options, for the scenarios the
#                   default one assumes away, e.g. "--household-sync 100"
#                   or "--phone-browsers 50" (default none); their
#                   simulations and outputs are kept apart by name
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=${QUALITY_DIR:-target/quality}
SEEDS=${QUALITY_SEEDS:-1 2 3 4 5 6 7}
PEOPLE=${QUALITY_PEOPLE:-2000}
DAYS=${QUALITY_DAYS:-30}
CONFIG=${QUALITY_CONFIG:-config/default.toml}
read -r -a EXTRA <<<"${QUALITY_SIMULATE:-}"
# "--household-sync 100" -> "-household-sync-100"
SUFFIX=$(printf '%s' "${EXTRA[*]}" | tr -cs 'A-Za-z0-9' '-' | sed 's/^-*//; s/-*$//')
SUFFIX=${SUFFIX:+-$SUFFIX}

log() { printf '[quality] %s\n' "$*" >&2; }
command -v python3 >/dev/null || { log "error: python3 is required"; exit 1; }

cargo build --release -p idlink --bin idlink >&2
BIN=$PWD/target/release/idlink
mkdir -p "$DIR"
SIM_TAG=$(sha256sum "$BIN" | cut -c1-16)

for seed in $SEEDS; do
    sim=$DIR/sim-$PEOPLE-$DAYS-$seed$SUFFIX
    if [[ ! -f $sim/tag || $(cat "$sim/tag") != "$SIM_TAG" ]]; then
        log "seed $seed: simulating $PEOPLE people, $DAYS days"
        rm -rf "$sim"
        "$BIN" simulate --people "$PEOPLE" --days "$DAYS" --seed "$seed" "${EXTRA[@]}" --out "$sim" >/dev/null
        echo "$SIM_TAG" >"$sim/tag"
    fi
    out=$DIR/out-$seed$SUFFIX
    "$BIN" replay --input "$sim/events.jsonl" --config "$CONFIG" --out "$out" 2>/dev/null
    "$BIN" evaluate --truth "$sim/truth.json" --links "$out/device-links.jsonl" --json >"$out/evaluation.json"
done

python3 - "$DIR" "$SEEDS" "$SUFFIX" <<'EOF'
import json, sys
d, seeds, suffix = sys.argv[1], sys.argv[2].split(), sys.argv[3]
rows, links, wrong = [], 0, 0
print("| seed | inferred links | inferred precision | login precision | recall (all owned pairs) | recall (never-signed-in pairs) | privacy violations |")
print("|---|---|---|---|---|---|---|")
for s in seeds:
    e = json.load(open(f"{d}/out-{s}{suffix}/evaluation.json"))
    rows.append({"seed": int(s), **e})
    n = e["inferred_links"]; p = e["inferred_precision"]
    links += n; wrong += n - e["inferred_correct"]
    print(f"| {s} | {n} | {p:.3f} | {e['login_precision']:.3f} | {e['recall']:.3f} "
          f"| {e['unsigned_recall']:.3f} | {len(e['violations'])} |")
pooled = 1 - wrong / links if links else 1.0
print(f"\npooled: {links} inferred links, {wrong} wrong (precision {pooled:.3f})")
json.dump({"seeds": rows, "inferred_links": links, "wrong": wrong, "pooled_precision": pooled},
          open(f"{d}/results{suffix}.json", "w"), indent=2)
EOF
