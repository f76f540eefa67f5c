#!/usr/bin/env bash
# Runs the whole test suite exactly as CI does (.ci/run calls this).
# On a fresh machine it first installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >/dev/null 2>&1 || true

# librdkafka (built from source by rdkafka-sys) needs a C toolchain, make,
# pkg-config and the OpenSSL headers for TLS/SASL support.
need=()
for pkg in libssl-dev pkg-config make gcc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need[@]}"
  fi
fi

# The Kafka tests start their own broker unless IDLINK_TEST_BROKERS names
# an external one (a real Kafka cluster, e.g. from docker-compose.yml).
if [ -z "${IDLINK_TEST_BROKERS:-}" ]; then
  echo "== test broker"
  NISSHI_BIN=$(bash scripts/install-nisshi.sh)
  export NISSHI_BIN
fi

echo "== format check"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "rustfmt is not installed: format check skipped"
fi

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every test binary runs even if an earlier one fails, and the summary
# line is printed either way; the exit status is cargo's.
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary,
# the last of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
