#!/usr/bin/env bash
# Installs cargo-fuzz, the runner of the data plane's fuzz targets
# (dataplane/fuzz, docs/reliability.md "Fuzzing"), from crates.io with the
# versions of its own lock file. Does nothing when this version is installed.
#   bash dataplane/fuzz/install-cargo-fuzz.sh
set -euo pipefail
version=0.13.1
cargo_bin="${CARGO_HOME:-${HOME:-}/.cargo}/bin"
[ -d "$cargo_bin" ] && PATH="$PATH:$cargo_bin"
if cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz ${version}"; then
  exit 0
fi
cargo install --locked --quiet cargo-fuzz --version "$version"
