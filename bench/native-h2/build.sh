#!/usr/bin/env bash
# Builds the rust-h2 baseline of bench/dataplane.ts (bench/native-h2) offline,
# from Debian's packaged Rust crates: only Debian's archive is needed. Not
# part of Ambit or of its tests; the bench skips rust-h2 until this has run.
set -euo pipefail
cd "$(dirname "$0")"
crates=(librust-tokio-dev librust-h2-dev librust-http-dev librust-bytes-dev librust-rustls-dev librust-tokio-rustls-dev librust-rustls-pemfile-dev)
missing=()
for c in "${crates[@]}"; do dpkg -s "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "build.sh: cargo is not installed (Debian: apt-get install cargo)" >&2; exit 1; }
cargo build --release --quiet
echo "built $(pwd)/target/release/ambit-bench-native-h2"
