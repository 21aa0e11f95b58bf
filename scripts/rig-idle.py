#!/usr/bin/env python3
"""Worker idle strategies on the veth rig: RTT percentiles and worker CPU per strategy.

Run as root, one rig at a time:
    flock /tmp/espd-rig.lock python3 scripts/rig-idle.py --espd target/release/espd

For each round, and within it for each strategy in turn (interleaved, so drift hits all
alike), it starts both gateways with `dataplane.idle = STRATEGY` and measures:
  - the CPU of each gateway's worker thread when idle (schedstat run time over --idle-seconds),
  - `ping -i 0.002` host-a -> host-b: RTT p50/p90/p99/p99.9 from every `time=` line,
  - at each --loads pps (64-byte IP packets, `espd traffic blast` host-a -> host-b sink):
    each worker's CPU as % of a core and in µs per forwarded packet,
  - with --flood, the packets per second delivered under a 3 s flood.
Prints one JSON line per measurement and, at the end, a table of medians with min..max.
`base` as a strategy runs the gateways of --base-espd (a binary from before the knob) with no
`idle` key. `STRATEGY+cN` adds `coalesce_us = N` (e.g. `sleep+c200`).
Gateway A's worker runs on core 0, gateway B's on core 1 (--same-core: both on core 0, as
`espd rig up --queues 1` writes them).
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

RIG_DIR = "/tmp/espd-idle-rig"
DST = "198.51.100.2"


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def netns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def write_config(src, dst, strategy, spin_us, core):
    text = open(src).read()
    extra = ""
    # `sleep+c200`: idle = "sleep" with coalesce_us = 200 (wake-up coalescing).
    strategy, _, coalesce = strategy.partition("+c")
    if strategy != "base":
        extra = f'idle = "{strategy}"\n'
        if spin_us is not None and strategy != "sleep":
            extra += f"spin_us = {spin_us}\n"
        if coalesce:
            extra += f"coalesce_us = {int(coalesce)}\n"
    text = re.sub(r"cores = \[[0-9, ]*\]", f"cores = [{core}]", text, count=1)
    text = text.replace("[dataplane]\n", "[dataplane]\n" + extra, 1)
    # Each gateway's metrics on its own loopback: not needed here.
    with open(dst, "w") as f:
        f.write(text)
    os.chmod(dst, 0o600)


def worker_tid(pid):
    for _ in range(100):
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/comm") as f:
                    if f.read().strip() == "espd-w0":
                        return int(t)
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no worker thread in {pid}")


def run_ns(pid, tid):
    """Nanoseconds the thread has run (user + system), from schedstat."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


class Gateways:
    def __init__(self, espd, strategy, spin_us, same_core):
        self.t0 = time.monotonic()
        self.procs = []
        self.logs = []
        for gw, core in (("a", 0), ("b", 0 if same_core else 1)):
            cfg = f"{RIG_DIR}/idle-gw-{gw}.toml"
            write_config(f"{RIG_DIR}/gw-{gw}.toml", cfg, strategy, spin_us, core)
            log = open(f"{RIG_DIR}/gw-{gw}.log", "w")
            p = subprocess.Popen(
                ["ip", "netns", "exec", f"gw-{gw}", espd, "run", "--config", cfg,
                 "--fresh-keys"],
                stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(p)
            self.logs.append(log)
        self.tids = [worker_tid(p.pid) for p in self.procs]
        for _ in range(50):
            if netns("host-a", "ping", "-c", "1", "-W", "0.2", DST, check=False).returncode == 0:
                break
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(open(self.logs[0].name).read()
                                       + open(self.logs[1].name).read())
        else:
            raise RuntimeError("gateways do not forward")
        time.sleep(0.5)

    def cpu(self):
        return [run_ns(p.pid, t) for p, t in zip(self.procs, self.tids)]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()
        out = []
        for gw in "ab":
            text = open(f"{RIG_DIR}/gw-{gw}.log").read()
            js = [ln for ln in text.splitlines() if ln.startswith("{")]
            out.append(json.loads(js[-1]) if js else {})
        return out


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure_ping(gws, n):
    c0 = gws.cpu()
    t0 = time.monotonic()
    out = netns("host-a", "ping", "-c", str(n), "-i", "0.002", DST, check=False).stdout
    dt = time.monotonic() - t0
    c1 = gws.cpu()
    rtts = [float(m) * 1000 for m in re.findall(r"time=([0-9.]+) ms", out)]
    return {
        "sent": n,
        "received": len(rtts),
        "p50_us": pct(rtts, 0.5),
        "p90_us": pct(rtts, 0.9),
        "p99_us": pct(rtts, 0.99),
        "p999_us": pct(rtts, 0.999),
        "cpu_pct": [100 * (b - a) / (dt * 1e9) for a, b in zip(c0, c1)],
    }


def measure_load(gws, espd, pps, seconds):
    sink = subprocess.Popen(
        ["ip", "netns", "exec", "host-b", espd, "traffic", "sink", "--bind", "0.0.0.0:5009",
         "--idle", "1", "--max", str(seconds + 10)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    c0 = gws.cpu()
    t0 = time.monotonic()
    blast = netns("host-a", espd, "traffic", "blast", "--dst", f"{DST}:5009", "--size", "64",
                  "--seconds", str(seconds), "--pps", str(pps)).stdout
    dt = time.monotonic() - t0
    c1 = gws.cpu()
    got = json.loads(sink.communicate(timeout=seconds + 20)[0].strip().splitlines()[-1])
    sent = json.loads(blast.strip().splitlines()[-1])["sent"]
    cpu_ns = [b - a for a, b in zip(c0, c1)]
    return {
        "pps": pps,
        "sent": sent,
        "received": got["received"],
        "lost": sent - got["received"],
        "delivered_pps": got["received"] / max(got["seconds"], 1e-9) if pps == 0 else None,
        "cpu_pct": [100 * c / (dt * 1e9) for c in cpu_ns],
        "us_per_pkt": [c / 1000 / max(got["received"], 1) for c in cpu_ns],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--espd", help="the gateway binary")
    ap.add_argument("--table", help="only print the table of the measurements in this --json file")
    ap.add_argument("--tools", help="binary for the traffic tools (default: --espd)")
    ap.add_argument("--base-espd", help="the gateway binary for strategy `base`")
    ap.add_argument("--strategies", default="sleep,spin,busy_poll")
    ap.add_argument("--spin-us", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--loads", default="10000,20000")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--idle-seconds", type=float, default=10)
    ap.add_argument("--flood", action="store_true", help="also a 3 s flood (max delivered)")
    ap.add_argument("--same-core", action="store_true")
    ap.add_argument("--json", help="append every measurement to this file")
    a = ap.parse_args()
    if a.table:
        rs = [json.loads(ln) for ln in open(a.table) if ln.strip()]
        ss = list(dict.fromkeys(r["strategy"] for r in rs))
        table(rs, ss, [x["pps"] for x in rs[0]["loads"]], "flood" in rs[0])
        return 0
    if not a.espd:
        ap.error("--espd is required")
    espd = os.path.abspath(a.espd)
    tools = os.path.abspath(a.tools or a.espd)
    loads = [int(x) for x in a.loads.split(",") if x]
    strategies = a.strategies.split(",")
    sh(espd, "rig", "up", "--queues", "1", "--dir", RIG_DIR)
    results = []
    try:
        for rnd in range(a.rounds):
            for s in strategies:
                exe = os.path.abspath(a.base_espd) if s == "base" and a.base_espd else espd
                gws = Gateways(exe, s, a.spin_us, a.same_core)
                try:
                    rec = {"round": rnd, "strategy": s}
                    c0 = gws.cpu()
                    time.sleep(a.idle_seconds)
                    c1 = gws.cpu()
                    rec["idle_cpu_pct"] = [100 * (y - x) / (a.idle_seconds * 1e9)
                                           for x, y in zip(c0, c1)]
                    rec["ping"] = measure_ping(gws, a.pings)
                    rec["loads"] = [measure_load(gws, tools, p, a.seconds) for p in loads]
                    if a.flood:
                        rec["flood"] = measure_load(gws, tools, 0, 3)
                finally:
                    rec["summaries"] = [
                        {k: v for k, v in x.items()
                         if k in ("idle", "spin_us", "idle_sleeps", "coalesce_us", "coalesced_sleeps", "seconds", "rx_packets", "tx_packets", "drops_by_reason",
                                  "tx_ring_full", "kernel_rx_dropped")}
                        for x in gws.stop()]
                print(json.dumps(rec), flush=True)
                results.append(rec)
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(rec) + "\n")
    finally:
        sh(espd, "rig", "down", "--dir", RIG_DIR, check=False)
        # Our copies of the configs hold the rig's keys.
        for gw in "ab":
            for ext in ("toml", "toml.seq", "toml.seq.lock"):
                try:
                    os.remove(f"{RIG_DIR}/idle-gw-{gw}.{ext}")
                except FileNotFoundError:
                    pass
    table(results, strategies, loads, a.flood)


def med(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.median(xs)
    f = "{:.0f}" if m >= 10 else "{:.1f}" if m >= 1 else "{:.2f}"
    if len(xs) == 1:
        return f.format(m)
    return (f + " (" + f + "–" + f + ")").format(m, min(xs), max(xs))


def table(results, strategies, loads, flood):
    print("\nmedian (min–max) over rounds; CPU of gw-a's worker / gw-b's worker")
    hdr = ["strategy", "RTT p50 µs", "p90", "p99", "p99.9", "idle CPU % a/b",
           "ping CPU % a"]
    for p in loads:
        hdr += [f"{p // 1000}k pps CPU % a", f"µs/pkt a", f"µs/pkt b", "lost"]
    if flood:
        hdr += ["flood delivered pps"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for s in strategies:
        rs = [r for r in results if r["strategy"] == s]
        row = [s]
        for k in ("p50_us", "p90_us", "p99_us", "p999_us"):
            row.append(med([r["ping"][k] for r in rs]))
        row.append(med([r["idle_cpu_pct"][0] for r in rs]) + " / "
                   + med([r["idle_cpu_pct"][1] for r in rs]))
        row.append(med([r["ping"]["cpu_pct"][0] for r in rs]))
        for i, _ in enumerate(loads):
            row.append(med([r["loads"][i]["cpu_pct"][0] for r in rs]))
            row.append(med([r["loads"][i]["us_per_pkt"][0] for r in rs]))
            row.append(med([r["loads"][i]["us_per_pkt"][1] for r in rs]))
            row.append(med([r["loads"][i]["lost"] for r in rs]))
        if flood:
            row.append(med([r["flood"]["delivered_pps"] for r in rs]))
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
