#!/usr/bin/env python3
"""Prints the ratios the README quotes from the criterion results of one `cargo bench` run
(target/criterion/*/new/estimates.json, mean point estimates)."""
import json, os, sys

root = os.path.join(os.path.dirname(__file__), "..", "target", "criterion")


def ns(group, bench, param, per=1):
    p = os.path.join(root, group, bench, str(param), "new", "estimates.json")
    with open(p) as f:
        return json.load(f)["mean"]["point_estimate"] / per


print("pipeline overhead ratio (pipeline ns/packet ÷ bare AES-GCM seal ns of the same bytes)")
print(f"{'size':>6} {'seal':>8} {'seal x64':>9} {'outbound':>9} {'inbound':>8} {'out/seal':>9} {'out/seal x64':>13} {'in/seal':>8} target")
for n, target in ((64, 1.6), (512, None), (1400, 1.15)):
    seal = ns("ratio", "aead_seal", n)
    seal64 = ns("ratio", "aead_seal_x64", n, 64)
    out = ns("ratio", "pipeline_outbound_x64", n, 64)
    inn = ns("ratio", "pipeline_inbound_x64", n, 64)
    t = f"<= {target}" if target else ""
    print(f"{n:>6} {seal:>8.1f} {seal64:>9.1f} {out:>9.1f} {inn:>8.1f} {out / seal:>9.2f} {out / seal64:>13.2f} {inn / seal:>8.2f} {t}")
def per(group, *path):
    p = os.path.join(root, group, *path, "new", "estimates.json")
    return json.load(open(p))["mean"]["point_estimate"] / 64


try:
    print("\nSA lookup ns (one run of `cargo bench --bench sa_table`)")
    for name, sub in (("one by one", ()), ("batch: prefetch 64, then look up", ("batch",))):
        l3, l6 = per("sa_lookup", *sub, "1000"), per("sa_lookup", *sub, "1000000")
        print(f"  {name:<34} 10^3 SAs {l3:5.2f}  10^6 SAs {l6:5.2f}  ratio {l6 / l3:.2f} (target <= 2)")
except FileNotFoundError:
    print("\n(run `cargo bench --bench sa_table` for the lookup ratio)")
def opt(group, *path):
    try:
        return per(group, *path)
    except FileNotFoundError:
        return float("nan")


try:
    print("\ninbound pipeline ns/packet, 64 B, each packet for a random SA (`cargo bench --bench scale`)")
    for b in ("aws-lc", "rust-crypto"):
        s3, s6 = per("scale", f"inbound_x64_{b}", "1000"), per("scale", f"inbound_x64_{b}", "1000000")
        off = opt("scale", f"inbound_x64_{b}_noprefetch", "1000000")
        print(f"  {b:<12} 10^3 SAs {s3:4.0f}  10^6 SAs {s6:4.0f}  ratio {s6 / s3:.2f}  (10^6 without prefetch {off:.0f})")
    o1, o5 = per("scale", "outbound_x64", "10"), per("scale", "outbound_x64", "100000")
    off = opt("scale", "outbound_x64_noprefetch", "100000")
    print(f"outbound pipeline ns/packet, 64 B IPv6, random tunnel: 10 tunnels {o1:.0f}, 10^5 tunnels {o5:.0f}, ratio {o5 / o1:.2f}  (10^5 without prefetch {off:.0f})")
except FileNotFoundError:
    print("\n(run `cargo bench --bench scale` for the pipeline at scale)")
