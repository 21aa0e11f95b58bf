#!/usr/bin/env bash
# Soak test on the veth rig (root; operator run, not CI). Usage:
#   flock /tmp/espd-rig.lock ./scripts/soak.sh MINUTES
#
# For MINUTES minutes, with both gateways under `espd run`:
#  - UDP both ways at a fixed rate with sequence-checked payloads (IPv4 host-a → host-b,
#    IPv6 host-b → host-a; `espd traffic udp-send/udp-recv`, every byte checked);
#  - a make-before-break rekey of both directions every 100 ms (`espd keyer`);
#  - every second a main mode added and the previous one deleted on both gateways
#    (`espd ctl mm add/delete`; each delete is a 13885 event);
#  - every SOAK_BATCH_EVERY seconds SOAK_BATCH inbound SAs allocated (`allocate_spi`, so their
#    SPIs never meet the keyer's) and installed with one `sa_add_batch` under fresh random keys
#    (unique per SA), then deleted SOAK_BATCH_EVERY/2 seconds later (`sa_delete` each).
# Then: 0 datagrams lost, corrupted or duplicated (the sinks' counts against what was scheduled,
# nothing subtracted); resident memory (VmRSS), open descriptors and threads of both gateways
# sampled every SOAK_BATCH_EVERY s (always in the same phase of the SA batch cycle), printed once a
# minute, and "flat": the median of the last minute's samples against the second minute's (the
# first is warm-up; runs under 3 minutes: last 30 s against t = 30..60 s) grows by at most
# SOAK_RSS_SLACK_KB, descriptors and threads not at all; no rig namespace and no started process
# left. A trap removes everything it created on every exit path, Ctrl-C included (namespaces,
# and with them the veths and their XDP programs; processes, by PID).
# Prints a report, writes it as JSON to SOAK_REPORT (default /tmp/espd-soak.json) and exits
# non-zero if anything was lost, grew or was left over.
#
# Settings (environment): SOAK_PPS (5000 per direction), SOAK_SIZE (512-byte UDP payloads),
# SOAK_BATCH (1000), SOAK_BATCH_EVERY (6 s; divides 60), SOAK_RSS_SLACK_KB (4096),
# SOAK_XDP_MODE (native), ESPD_BIN (default: build and use target/release/espd),
# SOAK_KEEP_LOGS=1 keeps the logs after a pass (they are always kept after a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-}
if ! [[ $minutes =~ ^[1-9][0-9]*$ ]] || [ $# -ne 1 ]; then
  echo "usage: scripts/soak.sh MINUTES   (root, under: flock /tmp/espd-rig.lock)" >&2
  exit 2
fi
PPS=${SOAK_PPS:-5000}
SIZE=${SOAK_SIZE:-512}
BATCH=${SOAK_BATCH:-1000}
BATCH_EVERY=${SOAK_BATCH_EVERY:-6}
RSS_SLACK_KB=${SOAK_RSS_SLACK_KB:-4096}
XDP_MODE=${SOAK_XDP_MODE:-native}
REPORT=${SOAK_REPORT:-/tmp/espd-soak.json}
if [ $((60 % BATCH_EVERY)) -ne 0 ] || [ "$BATCH_EVERY" -lt 2 ]; then
  echo "SOAK_BATCH_EVERY must divide 60 and be at least 2" >&2
  exit 2
fi
[ "$(id -u)" = 0 ] || { echo "soak.sh: needs root (network namespaces, XDP)" >&2; exit 2; }
if [ -z "${ESPD_BIN:-}" ]; then
  cargo build --release -q
  B=$PWD/target/release/espd
else
  B=$ESPD_BIN
fi

secs=$((minutes * 60))
count=$((PPS * secs))
work=$(mktemp -d /tmp/espd-soak.XXXXXX)
rig=$work/rig    # gateway configs (with keys), sockets, sequence state: always removed
logs=$work/logs  # no key material: kept after a failure
mkdir -p "$logs"
sa=$rig/gw-a.sock
sb=$rig/gw-b.sock
pids=()          # every background process this script started
# Background processes run in their own session (setsid, same PID): a Ctrl-C reaches only this
# script, whose trap then stops them in order (gateways last) and removes the rig.
rig_up=0
passed=0
reported=0
fail_reason=""

alive() { [ -e "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# SIGTERM, wait up to $2 tenths of a second, then SIGKILL; by PID only.
# Sets stop_status to its exit status.
stop_pid() {
  local p=$1 tenths=${2:-50}
  stop_status=0
  if alive "$p"; then
    kill -TERM "$p" 2>/dev/null || true
    for ((t = 0; t < tenths; t++)); do alive "$p" || break; sleep 0.1; done
    alive "$p" && kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || stop_status=$?
}

NAMESPACES="host-a gw-a wan gw-b host-b"
ns_ids=""        # "name:inode ..." of the rig's namespaces once built
ns_id() { stat -c %i "/run/netns/$1" 2>/dev/null || echo none; }
# Empty while the rig's namespaces are the ones this script built; else what changed.
rig_changed() {
  local e
  for e in $ns_ids; do
    [ "$(ns_id "${e%%:*}")" = "${e#*:}" ] || echo -n "${e%%:*} "
  done
  return 0
}

teardown() {
  local k e
  for ((k = ${#pids[@]} - 1; k >= 0; k--)); do stop_pid "${pids[k]}" 50; done # gateways last
  pids=()
  # Deleting the namespaces removes the veths and the XDP programs attached to them. Only ours:
  # a namespace of the same name built by someone else (a rig test run outside the lock) stays.
  if [ -n "$ns_ids" ]; then
    for e in $ns_ids; do
      [ "$(ns_id "${e%%:*}")" = "${e#*:}" ] && ip netns del "${e%%:*}" 2>/dev/null
    done
    ns_ids=""
  elif [ "$rig_up" = 1 ]; then
    "$B" rig down >/dev/null 2>&1 || true # stopped inside `rig up`
  fi
  rig_up=0
  rm -rf "$rig"
}

on_exit() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM # a second Ctrl-C must not cut the clean-up short
  teardown
  if [ "$reported" = 0 ]; then
    # Stopped before the report (start-up failure, Ctrl-C): say so in the JSON too.
    python3 -c 'import json, sys; json.dump({"passed": False, "failure": sys.argv[2] or "stopped (exit %s)" % sys.argv[3]}, open(sys.argv[1], "w"))' \
      "$REPORT" "${fail_reason:-}" "$rc" 2>/dev/null || true
  fi
  if [ "$passed" = 1 ] && [ "${SOAK_KEEP_LOGS:-0}" != 1 ]; then
    rm -rf "$work"
  elif [ -d "$logs" ]; then
    echo "soak: logs kept in $logs" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'echo "soak: interrupted, cleaning up" >&2; exit 130' INT TERM

ctl() { local s=$1; shift; "$B" ctl --socket "$s" "$@"; }

# "rss_kb fds threads" of a process: fds and threads as the minimum of 5 reads 50 ms apart
# (the control thread briefly holds a pipe for `ip neigh`, a client a socket and a thread).
sample() {
  local p=$1 i rss fds thr minf=999999 mint=999999
  for ((i = 0; i < 5; i++)); do
    fds=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
    thr=$(awk '/^Threads:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    ((fds < minf)) && minf=$fds
    ((thr < mint)) && mint=$thr
    sleep 0.05
  done
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
  echo "$rss $minf $mint"
}

# Allocates $BATCH inbound SPIs on gateway socket $1 and installs them with one sa_add_batch,
# each under its own fresh random key (keys go through pipes only: never on a command line or
# in a file). The SPIs are written to $2.
batch_add() {
  local s=$1 out=$2
  printf '{"op":"allocate_spi"}\n%.0s' $(seq "$BATCH") | ctl "$s" raw - | sed -n 's/.*"spi":"\(0x[0-9a-f]*\)".*/\1/p' >"$out"
  [ "$(wc -l <"$out")" = "$BATCH" ] || { echo "allocate_spi on $s: $(wc -l <"$out") of $BATCH" >&2; return 1; }
  od -An -v -tx1 -N$((20 * BATCH)) /dev/urandom | tr -d ' \n' | fold -w 40 | paste -d' ' "$out" - |
    awk -v n="$BATCH" '
      NF != 2 || length($2) != 40 || seen[$2]++ { bad = 1 }
      { sa[NR] = sprintf("{\"tunnel\":\"peer\",\"direction\":\"in\",\"spi\":\"%s\",\"key\":\"%s\"}", $1, $2) }
      END {
        if (bad || NR != n) exit 1
        printf "{\"op\":\"sa_add_batch\",\"sas\":["
        for (i = 1; i <= NR; i++) printf "%s%s", (i > 1 ? "," : ""), sa[i]
        print "]}"
      }' | ctl "$s" raw - >"$out.added"
  grep -q "\"installed\":$BATCH" "$out.added" || {
    echo "sa_add_batch on $s: $(head -c 300 "$out.added")" >&2
    return 1
  }
}

batch_delete() {
  local s=$1 spis=$2
  sed 's/.*/{"op":"sa_delete","spi":"&","direction":"in"}/' "$spis" | ctl "$s" raw - >"$spis.deleted"
}

note_fail() {
  local msg=$1 changed
  changed=$(rig_changed)
  [ -z "$changed" ] || msg+=" (namespaces ${changed% } were deleted or replaced by someone else: a rig test outside flock /tmp/espd-rig.lock?)"
  [ -n "$fail_reason" ] || fail_reason=$msg
  echo "soak: $msg" >&2
}

echo "== soak: $minutes min; UDP $PPS pps each way ($SIZE B, every datagram checked); rekey every 100 ms;"
echo "   main mode add+delete every second; $BATCH inbound SAs added and deleted every $BATCH_EVERY s"
existing=$(for n in $NAMESPACES; do [ -e "/run/netns/$n" ] && echo -n "$n "; done || true)
if [ -n "$existing" ]; then
  # Someone's rig (a test run outside the lock) or a leftover: not ours to delete.
  note_fail "rig namespaces exist already ($existing): another rig is running, or remove a leftover with \`espd rig down\`"
  exit 1
fi
rig_up=1 # from here on the clean-up runs `espd rig down` (harmless if `rig up` did not finish)
"$B" rig up --queues 2 --xdp-mode "$XDP_MODE" --dir "$rig" >/dev/null
for n in $NAMESPACES; do ns_ids+="$n:$(ns_id "$n") "; done
for g in a b; do
  ip netns exec "gw-$g" setsid "$B" run --config "$rig/gw-$g.toml" --stats >"$logs/gw-$g.out" 2>"$logs/gw-$g.log" &
  pids+=($!)
  eval "pid_$g=$!"
done
# Running = both control sockets answer (the daemon opens its socket after the workers bound).
for ((t = 0; t < 100; t++)); do
  if ctl "$sa" stats >/dev/null 2>&1 && ctl "$sb" stats >/dev/null 2>&1; then break; fi
  alive "$pid_a" && alive "$pid_b" || break
  sleep 0.1
done
if ! ctl "$sa" stats >/dev/null 2>&1 || ! ctl "$sb" stats >/dev/null 2>&1; then
  note_fail "gateways did not start: $(tail -n 3 "$logs/gw-a.log" "$logs/gw-b.log")"
  exit 1
fi
# Ready to forward = a short probe gets through both ways (next hops resolved). Not counted.
ready=0
for ((t = 0; t < 10 && ready == 0; t++)); do
  ip netns exec host-b "$B" traffic udp-recv --bind 0.0.0.0:5009 --expect 50 --idle 1 >"$logs/probe-b.json" &
  r1=$!
  ip netns exec host-a "$B" traffic udp-recv --bind "[::]:5009" --expect 50 --idle 1 >"$logs/probe-a.json" &
  r2=$!
  sleep 0.3
  ip netns exec host-a "$B" traffic udp-send --dst 198.51.100.2:5009 --count 50 --pps 1000 >/dev/null
  ip netns exec host-b "$B" traffic udp-send --dst "[fd00:a::2]:5009" --count 50 --pps 1000 >/dev/null
  wait "$r1" "$r2" || true
  grep -q '"lost":0' "$logs/probe-b.json" && grep -q '"lost":0' "$logs/probe-a.json" && ready=1
done
[ "$ready" = 1 ] || { note_fail "the rig does not forward (probe lost packets)"; exit 1; }
echo "== gateways up (pids $pid_a and $pid_b), path ready"

# The measured traffic: sinks first, then senders (the sender stops on its own after `count`).
# The senders pace by spinning (a core each): at nice 19 they take only what the gateways leave,
# and a sender that fell behind catches up in a burst.
ip netns exec host-b setsid "$B" traffic udp-recv --bind 0.0.0.0:5001 --expect "$count" --idle 5 >"$logs/sink-ab.json" 2>"$logs/sink-ab.log" &
sink_ab=$!; pids+=($sink_ab)
ip netns exec host-a setsid "$B" traffic udp-recv --bind "[::]:5002" --expect "$count" --idle 5 >"$logs/sink-ba.json" 2>"$logs/sink-ba.log" &
sink_ba=$!; pids+=($sink_ba)
sleep 0.3
ip netns exec host-a setsid nice -n 19 "$B" traffic udp-send --dst 198.51.100.2:5001 --count "$count" --size "$SIZE" --pps "$PPS" --seconds $((secs + 60)) >"$logs/send-ab.json" 2>"$logs/send-ab.log" &
send_ab=$!; pids+=($send_ab)
ip netns exec host-b setsid nice -n 19 "$B" traffic udp-send --dst "[fd00:a::2]:5002" --count "$count" --size "$SIZE" --pps "$PPS" --seconds $((secs + 60)) >"$logs/send-ba.json" 2>"$logs/send-ba.log" &
send_ba=$!; pids+=($send_ba)
# The keyer runs until stopped (after the traffic ended, so a rekey cut in half loses nothing).
setsid "$B" keyer --a "$sa" --b "$sb" --count 1000000000 --interval-ms 100 >"$logs/keyer.out" 2>"$logs/keyer.log" &
keyer=$!; pids+=($keyer)
declare -A name_of=(["$pid_a"]=gw-a ["$pid_b"]=gw-b ["$keyer"]=keyer ["$sink_ab"]="sink host-b"
  ["$sink_ba"]="sink host-a" ["$send_ab"]="sender host-a" ["$send_ba"]="sender host-b")

printf '%s\n' "t_s gw-a_rss_kb gw-a_fds gw-a_threads gw-b_rss_kb gw-b_fds gw-b_threads rekeys load1" >"$logs/samples.tsv"
printf '%-6s %12s %5s %4s   %12s %5s %4s   %7s %6s %6s %6s\n' "minute" "gw-a RSS kB" fds thr "gw-b RSS kB" fds thr rekeys drop-a drop-b load
mm_prev=""
mm_adds=0
mm_deletes=0
batches=0
batch_ms_max=0
start=$EPOCHREALTIME
for ((i = 0; i <= secs; i++)); do
  # Tick i starts at start + i seconds (a late tick is not made up for).
  now=$EPOCHREALTIME
  wait_s=$(awk -v s="$start" -v i="$i" -v n="$now" 'BEGIN { d = s + i - n; print (d > 0 ? d : 0) }')
  sleep "$wait_s"
  [ -z "$(rig_changed)" ] || { note_fail "the rig changed under us at t=$i s"; break; }
  for p in "$pid_a" "$pid_b" "$keyer" "$sink_ab" "$sink_ba"; do
    # A sink ends early only when nothing came for 5 s; near the end it may have everything.
    [ "$p" = "$sink_ab" ] || [ "$p" = "$sink_ba" ] && ((i >= secs - 2)) && continue
    alive "$p" || { note_fail "${name_of[$p]} (pid $p) exited at t=$i s"; break 2; }
  done
  if ((i % BATCH_EVERY == 0)); then
    # Sampled in the same phase every time (before this tick's batch is added, after the last
    # one was deleted) while no request of ours is in flight; printed once a minute.
    read -r ra fa ta <<<"$(sample "$pid_a")"
    read -r rb fb tb <<<"$(sample "$pid_b")"
    rk=$(grep -c '^rekey' "$logs/keyer.out" || true)
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "$i $ra $fa $ta $rb $fb $tb $rk $load" >>"$logs/samples.tsv"
    if ((i % 60 == 0)); then
      da=$(tail -n 1 "$logs/gw-a.out" | sed -n 's/.*"drops":\([0-9]*\).*/\1/p')
      db=$(tail -n 1 "$logs/gw-b.out" | sed -n 's/.*"drops":\([0-9]*\).*/\1/p')
      printf '%-6s %12s %5s %4s   %12s %5s %4s   %7s %6s %6s %6s\n' "$((i / 60))" "$ra" "$fa" "$ta" "$rb" "$fb" "$tb" "$rk" "${da:-?}" "${db:-?}" "$load"
    fi
  fi
  ((i == secs)) && break
  # A main mode every second on both gateways (same cookies, each names the other as peer and
  # the current child SAs), and the previous one deleted by the peer (13885, peer_delete).
  ic=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  rc=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  # Each child names its direction as each gateway sees it: A→B is gw-a's outbound SA and
  # gw-b's inbound one.
  children_a=() children_b=()
  last=$(tail -n 1 "$logs/keyer.out" 2>/dev/null || true)
  if [[ $last =~ a→b\ (0x[0-9a-f]+)\ b→a\ (0x[0-9a-f]+) ]]; then
    children_a=(--child "out:${BASH_REMATCH[1]}" --child "in:${BASH_REMATCH[2]}")
    children_b=(--child "in:${BASH_REMATCH[1]}" --child "out:${BASH_REMATCH[2]}")
  fi
  ok=1
  ctl "$sa" mm add --icookie "$ic" --rcookie "$rc" --peer 203.0.113.2 --lifetime 3600 "${children_a[@]}" >>"$logs/mm.log" 2>&1 || ok=0
  ctl "$sb" mm add --icookie "$ic" --rcookie "$rc" --peer 203.0.113.1 --lifetime 3600 "${children_b[@]}" >>"$logs/mm.log" 2>&1 || ok=0
  [ "$ok" = 1 ] || { note_fail "mm add refused at t=$i s (see $logs/mm.log)"; break; }
  mm_adds=$((mm_adds + 1))
  if [ -n "$mm_prev" ]; then
    ctl "$sa" mm delete ${mm_prev} >>"$logs/mm.log" 2>&1 || ok=0
    ctl "$sb" mm delete ${mm_prev} >>"$logs/mm.log" 2>&1 || ok=0
    [ "$ok" = 1 ] || { note_fail "mm delete refused at t=$i s (see $logs/mm.log)"; break; }
    mm_deletes=$((mm_deletes + 1))
  fi
  mm_prev="--icookie $ic --rcookie $rc"
  # SA batches: add at phase 0, delete at phase BATCH_EVERY/2.
  if ((i % BATCH_EVERY == 0)); then
    t0=$EPOCHREALTIME
    batch_add "$sa" "$logs/batch-a" && batch_add "$sb" "$logs/batch-b" || { note_fail "SA batch add failed at t=$i s"; break; }
    ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
    ((ms > batch_ms_max)) && batch_ms_max=$ms
  elif ((i % BATCH_EVERY == BATCH_EVERY / 2)); then
    batch_delete "$sa" "$logs/batch-a" && batch_delete "$sb" "$logs/batch-b" || { note_fail "SA batch delete failed at t=$i s"; break; }
    batches=$((batches + 1))
  fi
done

# End: the senders have scheduled everything; the sinks stop after 5 s without a datagram.
# After a failure the traffic is stopped at once (the sinks' counts then show the loss).
for p in "$send_ab" "$send_ba" "$sink_ab" "$sink_ba"; do
  if [ -z "$fail_reason" ]; then
    for ((t = 0; t < 1200; t++)); do alive "$p" || break; sleep 0.1; done
    alive "$p" && note_fail "${name_of[$p]} still running 120 s after the end"
  fi
  stop_pid "$p" 10
done
keyer_alive=0
alive "$keyer" && keyer_alive=1
stop_pid "$keyer" 20
ctl "$sa" stats >"$logs/stats-a.json" 2>&1 || true
ctl "$sb" stats >"$logs/stats-b.json" 2>&1 || true
# A gateway ends on SIGTERM with status 0 after printing its summary; anything else is a crash.
stop_pid "$pid_a" 100
exit_a=$stop_status
stop_pid "$pid_b" 100
exit_b=$stop_status
errors_a=$(grep -c -E 'ERROR([^_A-Za-z]|$)|panicked' "$logs/gw-a.log" || true)
errors_b=$(grep -c -E 'ERROR([^_A-Za-z]|$)|panicked' "$logs/gw-b.log" || true)
built=$ns_ids
teardown
leftover_ns=""
for e in $built; do
  [ "$(ns_id "${e%%:*}")" = "${e#*:}" ] && leftover_ns+="${e%%:*} "
done
leftover_pids=""
for p in "$pid_a" "$pid_b" "$keyer" "$send_ab" "$send_ba" "$sink_ab" "$sink_ba"; do
  alive "$p" && leftover_pids+="$p "
done

set +e
SOAK_MINUTES=$minutes SOAK_COUNT=$count SOAK_RSS_SLACK_KB=$RSS_SLACK_KB SOAK_PPS=$PPS SOAK_SIZE=$SIZE \
SOAK_BATCH=$BATCH SOAK_MM_ADDS=$mm_adds SOAK_MM_DELETES=$mm_deletes SOAK_BATCHES=$batches \
SOAK_BATCH_MS_MAX=$batch_ms_max SOAK_KEYER_ALIVE=$keyer_alive SOAK_FAIL=$fail_reason \
SOAK_LEFTOVER_NS=$leftover_ns SOAK_LEFTOVER_PIDS=$leftover_pids SOAK_EXIT_A=$exit_a SOAK_EXIT_B=$exit_b \
SOAK_ERRORS_A=$errors_a SOAK_ERRORS_B=$errors_b \
python3 - "$logs" "$REPORT" <<'PY'
import json, os, sys
logs, report = sys.argv[1], sys.argv[2]
E = os.environ
num = lambda k: int(E[k])
def load(name):
    try:
        text = open(f"{logs}/{name}").read()
    except OSError:
        return {}
    for line in reversed(text.splitlines()):
        try:
            v = json.loads(line)
            if isinstance(v, dict):
                return v
        except ValueError:
            pass
    try:
        return json.loads(text)
    except ValueError:
        return {}
def last_with(name, key):
    try:
        lines = open(f"{logs}/{name}").read().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if key in v:
            return v
    return {}
minutes, count, rss_slack = num("SOAK_MINUTES"), num("SOAK_COUNT"), num("SOAK_RSS_SLACK_KB")
rows = [l.split() for l in open(f"{logs}/samples.tsv").read().splitlines()[1:] if l.strip()]
samples = [dict(t_s=int(r[0]),
                gw_a=dict(rss_kb=int(r[1]), fds=int(r[2]), threads=int(r[3])),
                gw_b=dict(rss_kb=int(r[4]), fds=int(r[5]), threads=int(r[6])),
                rekeys=int(r[7]), load1=float(r[8])) for r in rows]
flows = {}
loss_ok = True
for name, label in (("ab", "IPv4 host-a -> host-b"), ("ba", "IPv6 host-b -> host-a")):
    r, s = load(f"sink-{name}.json"), load(f"send-{name}.json")
    unique = r.get("unique", 0)
    f = dict(flow=label, scheduled=count, sent=s.get("sent"), send_errors=s.get("errors"),
             received=unique, lost=count - unique, corrupt=r.get("corrupt"), duplicates=r.get("duplicates"))
    f["ok"] = f["lost"] == 0 and f["corrupt"] == 0 and f["duplicates"] == 0
    loss_ok &= f["ok"]
    flows[name] = f
# Flat: the last minute against the second minute (the first is warm-up), each as the median of
# its samples; runs shorter than 3 minutes compare the last 30 s to the second half of minute 1.
# RSS may grow by at most rss_slack kB; descriptors and threads not at all.
def window(lo, hi):
    return [s for s in samples if lo <= s["t_s"] <= hi]
end_t = samples[-1]["t_s"] if samples else 0
if minutes >= 3:
    base_w, last_w = (60, 120), (end_t - 60, end_t)
else:
    base_w, last_w = (30, 60), (end_t - 30, end_t)
med = lambda v: sorted(v)[len(v) // 2]
flat = {}
flat_ok = end_t == minutes * 60
for g in ("gw_a", "gw_b"):
    b, l = window(*base_w), window(last_w[0] + 1e-9, last_w[1])
    if not b or not l:
        flat[g] = dict(ok=False, why="the run ended before both windows were sampled")
        flat_ok = False
        continue
    d = dict(base_window_s=list(base_w), last_window_s=[last_w[0], last_w[1]],
             rss_kb_base=med([s[g]["rss_kb"] for s in b]), rss_kb_last=med([s[g]["rss_kb"] for s in l]),
             fds_base=max(s[g]["fds"] for s in b), fds_last=max(s[g]["fds"] for s in l),
             threads_base=max(s[g]["threads"] for s in b), threads_last=max(s[g]["threads"] for s in l))
    d["rss_growth_kb"] = d["rss_kb_last"] - d["rss_kb_base"]
    # Least-squares trend of RSS after the first minute (information; kB per minute).
    tail = [s for s in samples if s["t_s"] >= 60]
    if len(tail) >= 2:
        mt = sum(s["t_s"] for s in tail) / len(tail)
        mr = sum(s[g]["rss_kb"] for s in tail) / len(tail)
        den = sum((s["t_s"] - mt) ** 2 for s in tail)
        d["rss_trend_kb_per_min"] = round(60 * sum((s["t_s"] - mt) * (s[g]["rss_kb"] - mr) for s in tail) / den, 1)
    d["ok"] = d["rss_growth_kb"] <= rss_slack and d["fds_last"] <= d["fds_base"] and d["threads_last"] <= d["threads_base"]
    flat_ok &= d["ok"]
    flat[g] = d
gw = {}
for g in ("a", "b"):
    summ = last_with(f"gw-{g}.out", "workers")
    st = load(f"stats-{g}.json")
    c = st.get("control", {})
    gw[f"gw_{g}"] = dict(drops_by_code=summ.get("drops_by_code"), rx_packets=summ.get("rx_packets"),
                         kernel_rx_dropped=summ.get("kernel_rx_dropped"), tx_ring_full=summ.get("tx_ring_full"),
                         tx_packets=summ.get("tx_packets"), rekeys=summ.get("rekeys", c.get("rekeys")),
                         sas_at_end=st.get("sas"), main_modes_at_end=st.get("main_modes"),
                         events_13885=(c.get("events_by_code") or {}).get("13885"),
                         exit_status=num(f"SOAK_EXIT_{g.upper()}"), log_errors=num(f"SOAK_ERRORS_{g.upper()}"))
leftover_ns = E.get("SOAK_LEFTOVER_NS", "").split()
leftover_pids = E.get("SOAK_LEFTOVER_PIDS", "").split()
keyer_alive = E.get("SOAK_KEYER_ALIVE") == "1"
control = dict(rekeys=samples[-1]["rekeys"] if samples else 0, rekeys_per_s=None,
               mm_added=num("SOAK_MM_ADDS"), mm_deleted=num("SOAK_MM_DELETES"), sa_batches=num("SOAK_BATCHES"),
               batch_size=num("SOAK_BATCH"), slowest_batch_add_ms=num("SOAK_BATCH_MS_MAX"),
               keyer_alive_at_end=keyer_alive)
if samples and samples[-1]["t_s"]:
    control["rekeys_per_s"] = round(samples[-1]["rekeys"] / samples[-1]["t_s"], 2)
fail = E.get("SOAK_FAIL", "").strip()
# The control state holds what it should: the one main mode not yet deleted, a 13885 for each
# delete, and only the tunnel's SAs (current ones and those retiring within the 1 s grace).
state_ok = all(d["main_modes_at_end"] == 1 and d["events_13885"] == control["mm_deleted"]
               and d["sas_at_end"] is not None and d["sas_at_end"] <= 32 for d in gw.values())
clean_exit = all(d["exit_status"] == 0 and d["log_errors"] == 0 and d["drops_by_code"] is not None
                 for d in gw.values())
checks = dict(no_loss=loss_ok, flat=flat_ok, control_state=state_ok, clean_exit=clean_exit, no_leftover=not leftover_ns and not leftover_pids,
              control_ran=not fail and keyer_alive)
rep = dict(minutes=minutes, pps_each_way=num("SOAK_PPS"), udp_payload_bytes=num("SOAK_SIZE"), rss_slack_kb=rss_slack,
           flows=list(flows.values()), samples=samples, flat=flat, gateways=gw, control=control,
           leftover_namespaces=leftover_ns, leftover_pids=leftover_pids, failure=fail or None,
           checks=checks, passed=all(checks.values()))
json.dump(rep, open(report, "w"), indent=1)
print("\n== soak report (%d min)" % minutes)
for f in flows.values():
    print(f"  {f['flow']:24} {f['received']:>10} of {f['scheduled']} received, {f['lost']} lost, "
          f"{f['corrupt']} corrupt, {f['duplicates']} duplicated (send errors {f['send_errors']})  "
          + ("ok" if f["ok"] else "FAILED"))
for g, d in flat.items():
    if "rss_kb_base" in d:
        print(f"  {g.replace('_', '-')}: RSS {d['rss_kb_base']} -> {d['rss_kb_last']} kB ({d['rss_growth_kb']:+d} kB, "
              f"allowed +{rss_slack}; trend {d.get('rss_trend_kb_per_min')} kB/min), fds {d['fds_base']} -> {d['fds_last']}, "
              f"threads {d['threads_base']} -> {d['threads_last']} (allowed +0)  " + ("flat" if d["ok"] else "GREW"))
    else:
        print(f"  {g.replace('_', '-')}: {d['why']}  FAILED")
print(f"  (medians of the samples at t = {base_w[0]}..{base_w[1]} s against t = {last_w[0]}..{last_w[1]} s)")
for g, d in gw.items():
    print(f"  {g.replace('_', '-')}: {d['rekeys']} rekeys, drops by code {d['drops_by_code']}, kernel AF_XDP rx drops "
          f"(rx ring full or dropped) {d['kernel_rx_dropped']}, tx ring full {d['tx_ring_full']}, "
          f"{d['sas_at_end']} SAs and {d['main_modes_at_end']} main mode(s) left at the end, {d['events_13885']} x 13885, "
          f"exit status {d['exit_status']}, {d['log_errors']} ERROR/panic lines in its log")
print(f"  control: {control['rekeys']} rekeys ({control['rekeys_per_s']}/s), {control['mm_added']} main modes added, "
      f"{control['mm_deleted']} deleted, {control['sa_batches']} batches of {control['batch_size']} SAs added and deleted "
      f"(slowest add, both gateways: {control['slowest_batch_add_ms']} ms)")
print(f"  leftovers: namespaces [{' '.join(leftover_ns)}], processes [{' '.join(leftover_pids)}]  "
      + ("none" if checks["no_leftover"] else "FAILED"))
if fail:
    print(f"  failure: {fail}")
print("== " + ("PASS" if rep["passed"] else "FAIL " + ", ".join(k for k, v in checks.items() if not v))
      + f"  (JSON: {report})")
sys.exit(0 if rep["passed"] else 1)
PY
rc=$?
set -e
reported=1
[ "$rc" = 0 ] && passed=1
exit "$rc"
