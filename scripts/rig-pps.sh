#!/usr/bin/env bash
# Throughput sanity on the rig: UDP host-a → host-b at full speed through one gateway pair
# (1 worker each), with ESP and with --null-crypto (plain AF_XDP forwarding, the I/O ceiling).
# Usage: scripts/rig-pps.sh [SECONDS] [SIZES...]      (root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}; shift || true
sizes=${*:-64 1400}
cargo build --release -q
B=$PWD/target/release/espd
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; $B rig down >/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
$B rig up --queues 1 --dir "$dir" >/dev/null
printf "%-6s %-12s %12s %12s %10s\n" size mode sent_pps recv_pps recv_Mbps
for size in $sizes; do
  # The UDP payload: an inner IP packet of `size` bytes (28 bytes of IPv4 + UDP header).
  payload=$((size - 28))
  for mode in esp null-crypto; do
    extra=(); [ "$mode" = null-crypto ] && extra=(--null-crypto)
    ip netns exec gw-a $B run --config "$dir/gw-a.toml" "${extra[@]}" >/dev/null 2>&1 & pids+=($!)
    ip netns exec gw-b $B run --config "$dir/gw-b.toml" "${extra[@]}" >/dev/null 2>&1 & pids+=($!)
    sleep 1.5
    count=$((secs * 2000000))
    ip netns exec host-b $B traffic udp-recv --bind 0.0.0.0:5001 --expect "$count" --idle 1.5 > "$dir/recv.json" &
    rpid=$!
    sleep 0.3
    ip netns exec host-a $B traffic udp-send --dst 198.51.100.2:5001 --count "$count" --size "$payload" --seconds "$secs" > "$dir/send.json"
    wait $rpid || true
    python3 - "$dir" "$size" "$mode" "$secs" <<'PY'
import json, sys
d, size, mode, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
r = json.load(open(f"{d}/recv.json"))
try:
    s = json.load(open(f"{d}/send.json")); sent = s["sent"] / s["seconds"]
except Exception:
    sent = float("nan")
rs = r["seconds"] or secs
print(f"{size:<6} {mode:<12} {sent:12.0f} {r['unique'] / rs:12.0f} {r['unique'] * size * 8 / rs / 1e6:10.1f}")
PY
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
    sleep 0.5
  done
done
