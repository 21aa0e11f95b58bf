#!/bin/bash
# Where a gateway worker's CPU goes at a steady load (issue 13), on the veth rig.
#
#   sudo flock /tmp/espd-rig.lock ./scripts/worker-perf.sh [COALESCE_US] [PPS] [SECONDS]
#
# Brings the rig up (one worker per gateway, gw-a on core 0, gw-b on core 1, `coalesce_us` as
# given, default 0), sends PPS (default 20000) 64-byte UDP datagrams a second host-a → host-b,
# reads each worker thread's CPU time from schedstat over SECONDS (default 4) in the steady
# state, then records both with `perf record -g` for another SECONDS (perf's sampling costs the
# thread CPU too, so the two windows are apart). Prints, per gateway: the worker's CPU per
# forwarded packet, and the share of its samples under __dev_direct_xmit (copy-mode AF_XDP transmit
# hands each frame to the veth, whose peer then receives it in the same softirq: the bridge,
# the next namespace's XDP program or IP stack and the wake-up of its reader, all charged to
# the sender) and the rest (espd's own work and its own syscalls). Everything it creates is
# removed on exit (KEEP=DIR keeps the perf data there: a.data, b.data). Then, still under the
# load, `ping -i 0.002` host-a → host-b for SECONDS: the round trip a coalescing gateway gives
# a packet that arrives amid steady traffic.
set -u
E=${ESPD:-$(dirname "$0")/../target/release/espd}
E=$(realpath "$E")
C=${1:-0}; P=${2:-20000}; S=${3:-4}
D=$(mktemp -d /tmp/espd-worker-perf.XXXXXX)
cleanup() {
    # Only our own children that still run (jobs -pr), never a PID that may have been reused.
    local running
    running=$(jobs -pr)
    [ -n "$running" ] && kill $running 2>/dev/null
    sleep 0.5
    running=$(jobs -pr)
    [ -n "$running" ] && kill -9 $running 2>/dev/null
    wait 2>/dev/null
    "$E" rig down --dir "$D/rig" >/dev/null 2>&1
    [ -n "${KEEP:-}" ] && cp "$D"/a.data "$D"/b.data "$KEEP"/ 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$E" rig up --queues 1 --dir "$D/rig" >/dev/null || exit 1
core=0
for g in a b; do
    sed -e "s/\[dataplane\]/[dataplane]\ncoalesce_us = $C/" \
        -e "s/cores = \[[0-9, ]*\]/cores = [$core]/" "$D/rig/gw-$g.toml" > "$D/gw-$g.toml"
    chmod 600 "$D/gw-$g.toml"
    core=1
    ip netns exec gw-$g "$E" run --config "$D/gw-$g.toml" --fresh-keys > "$D/gw-$g.log" 2>&1 &
    eval "P$g=\$!"
done
sleep 2
tid() { grep -l '^espd-w0$' /proc/"$1"/task/*/comm | cut -d/ -f5; }
TA=$(tid "$Pa"); TB=$(tid "$Pb")
if [ -z "$TA" ] || [ -z "$TB" ]; then
    echo "worker-perf: a gateway has no worker thread; its log:" >&2
    cat "$D/gw-a.log" "$D/gw-b.log" >&2
    exit 1
fi
ip netns exec host-b "$E" traffic sink --bind 0.0.0.0:5009 --idle 1 --max $((3 * S + 20)) > "$D/sink.json" &
SINK=$!
sleep 0.3
ip netns exec host-a "$E" traffic blast --dst 198.51.100.2:5009 --size 64 --seconds $((3 * S + 3)) --pps "$P" > /dev/null &
BLAST=$!
sleep 1.5
run_ns() { awk '{print $1}' /proc/"$1"/task/"$2"/schedstat; }
a0=$(run_ns "$Pa" "$TA"); b0=$(run_ns "$Pb" "$TB")
sleep "$S"
a1=$(run_ns "$Pa" "$TA"); b1=$(run_ns "$Pb" "$TB")
perf record -q -g -t "$TA" -o "$D/a.data" -- sleep "$S" >/dev/null 2>&1 &
PA=$!
perf record -q -g -t "$TB" -o "$D/b.data" -- sleep "$S" >/dev/null 2>&1
wait $PA
N=$((S * 400))
ip netns exec host-a ping -c "$N" -i 0.002 198.51.100.2 2>/dev/null |
    sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | sort -g > "$D/rtt"
wait $BLAST
wait $SINK
share() {
    perf report -i "$1" --children --sort sym 2>/dev/null |
        awk '/\[k\] __dev_direct_xmit$/ { gsub("%", "", $1); print $1; exit }'
}
# CPU per packet is per offered packet; the sink's count shows they all arrived (or not).
printf 'coalesce_us = %s, %s pps of 64 B host-a -> host-b, %s s window; sink: %s\n' "$C" "$P" "$S" "$(tail -1 "$D/sink.json")"
awk 'function r(q,  k) { k = int(NR * q); if (k < NR * q) k++; return k < 1 ? 1 : k } { v[NR] = $1 * 1000 } END { if (NR) printf "ping under the load: %d round trips, p50 %.0f us, p90 %.0f us, p99 %.0f us\n", NR, v[r(0.5)], v[r(0.9)], v[r(0.99)] }' "$D/rtt"
for g in a b; do
    if [ $g = a ]; then d=$((a1 - a0)); else d=$((b1 - b0)); fi
    x=$(share "$D/$g.data"); x=${x:-0}
    awk -v g=$g -v d="$d" -v p="$P" -v s="$S" -v x="$x" 'BEGIN {
        us = d / 1000 / (p * s);
        printf "gw-%s worker: %.2f us/pkt; under __dev_direct_xmit %.1f %% (%.2f us); the rest %.2f us\n",
            g, us, x, us * x / 100, us * (100 - x) / 100 }'
done
