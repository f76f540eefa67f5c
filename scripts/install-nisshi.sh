#!/usr/bin/env bash
# Installs the Kafka-compatible test broker (nisshi 0.8.1, formerly tansu)
# into a cache directory reused across runs, and prints its path.
# Building it takes about 18 minutes on 2 cores, once.
set -euo pipefail
root=${NISSHI_ROOT:-$HOME/.cache/idlink/nisshi-0.8.1}
bin="$root/bin/nisshi"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
echo "installing nisshi 0.8.1 into $root (first run only)" >&2
# One dependency declares rustc 1.96 but builds on 1.95, hence
# --ignore-rust-version.
cargo install nisshi --locked --version 0.8.1 \
  --no-default-features --features dynostore,libsql \
  --ignore-rust-version --root "$root" >&2
echo "$bin"
