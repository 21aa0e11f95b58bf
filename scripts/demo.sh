#!/usr/bin/env bash
# The offline demo: plaintext frames → gateway A (encrypt) → gateway B (decrypt), using the
# exact pipeline over pcap files, with an independent check by tshark when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bin=target/release/espd
echo "== gateway A, outbound: examples/plain.pcap → ESP"
$bin pcap --config examples/gw-a.toml --direction outbound examples/plain.pcap "$out/esp.pcap"
echo "== gateway B, inbound: ESP → plaintext"
$bin pcap --config examples/gw-b.toml --direction inbound "$out/esp.pcap" "$out/back.pcap"
if command -v tshark >/dev/null; then
  echo "== tshark, given the SA key, checks every ESP packet (esp.icv_good)"
  tshark -r "$out/esp.pcap" -o esp.enable_encryption_decode:TRUE -o esp.enable_authentication_check:TRUE \
    -o 'uat:esp_sa:"IPv4","203.0.113.1","203.0.113.2","0x0000a001","AES-GCM with 16 octet ICV [RFC4106]","0x00112233445566778899aabbccddeeff01020304","NULL",""' \
    -T fields -e esp.icv_good 2>/dev/null | sort | uniq -c | awk '{print "   " $1 " packets with esp.icv_good=" $2}'
fi
