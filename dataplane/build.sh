#!/usr/bin/env bash
# Builds ambit-dataplane (the native data path, docs/dataplane.md) from
# crates.io, with exactly the versions in Cargo.lock (--locked: a lock file
# that no longer matches Cargo.toml is an error, not a silent update).
# Cheap when nothing changed: cargo only checks timestamps.
#   bash dataplane/build.sh [--test]
set -euo pipefail
cd "$(dirname "$0")"
# AMBIT_DATAPLANE_BUILD=skip: the executable comes from elsewhere, so `npm ci`
# (whose install script runs this) must not need Rust: the image's build
# stage (daemonset/Dockerfile; its dataplane stage builds it).
if [ "${AMBIT_DATAPLANE_BUILD:-}" = skip ]; then
  echo "build.sh: AMBIT_DATAPLANE_BUILD=skip: ambit-dataplane not built" >&2
  exit 0
fi
# rustup installs cargo in ~/.cargo/bin, which a non-login shell (npm's
# scripts, CI) may not have on PATH.
cargo_bin="${CARGO_HOME:-${HOME:-}/.cargo}/bin"
[ -d "$cargo_bin" ] && PATH="$PATH:$cargo_bin"
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
if ! command -v cargo >/dev/null; then
  echo "build.sh: cargo not found: ambit-dataplane needs a Rust toolchain, Rust ${msrv} or newer (https://rustup.rs: curl --proto '=https' -sSf https://sh.rustup.rs | sh)" >&2
  exit 1
fi
# --quiet hides progress only; warnings and errors still print.
cargo build --release --locked --quiet
echo "built $(pwd)/target/release/ambit-dataplane"
# --test (npm test): the crate's own tests too (the HTTP/2 limits), on the
# same profile, so they reuse the built dependencies.
if [ "${1:-}" = --test ]; then
  cargo test --release --locked --quiet
fi
