#!/usr/bin/env bash
# Builds ambit-dataplane (the native inbound data path, docs/native-dataplane.md) offline,
# from Debian's packaged Rust crates: only Debian's archive is needed.
set -euo pipefail
cd "$(dirname "$0")"
crates=(librust-tokio-dev librust-h2-dev librust-http-dev librust-bytes-dev librust-rustls-dev librust-tokio-rustls-dev librust-rustls-pemfile-dev librust-serde-dev librust-serde-derive-dev librust-serde-json-dev librust-base64-dev librust-webpki-dev librust-libc-dev)
missing=()
for c in "${crates[@]}"; do dpkg -s "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "build.sh: cargo is not installed (Debian 12: apt-get install cargo-web; its cargo package, Rust 1.63, is too old for this crate)" >&2; exit 1; }
cargo build --release --quiet
echo "built $(pwd)/target/release/ambit-dataplane"
