#!/usr/bin/env bash
# Builds the Debian package of the production binary (no rig, demo, bench or traffic tools):
# target/debian/espd_<version>-1_amd64.deb with the binary, the systemd unit, the tmpfiles
# entry, the example config (/etc/espd/espd.toml, 0600), man pages and shell completions.
# Needs cargo-deb (`cargo install cargo-deb`); not part of CI. It leaves the production binary
# in target/release/espd: `cargo build --release` (the README commands do) brings the rig back.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --no-default-features --features rustcrypto
rm -rf target/deb-assets
mkdir -p target/deb-assets/man target/deb-assets/completions
target/release/espd man target/deb-assets/man
gzip -9nf target/deb-assets/man/*.1
target/release/espd completions bash >target/deb-assets/completions/espd
target/release/espd completions zsh >target/deb-assets/completions/_espd
target/release/espd completions fish >target/deb-assets/completions/espd.fish
cargo deb --no-build
ls -l target/debian/*.deb
