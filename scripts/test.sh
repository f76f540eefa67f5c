#!/usr/bin/env bash
# Runs the whole test suite exactly as CI does (.ci/run calls this).
# On a fresh machine it first installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
rustup component add rustfmt >/dev/null 2>&1 || true

echo "== format check"
cargo fmt --all -- --check

echo "== tests"
cargo test --workspace --locked
