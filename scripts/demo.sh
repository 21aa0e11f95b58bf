#!/usr/bin/env bash
# The main job: installs what is missing, builds espd, and runs `espd demo` (as root): a
# gateway pair on the built-in veth rig with live traffic, ending in a short report.
# Extra arguments go to `espd demo` (e.g. --seconds 10 --xdp-mode generic --pps 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release -q
exec ./target/release/espd demo "$@"
