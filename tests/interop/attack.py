#!/usr/bin/env python3
"""Attack traffic from the rig's `wan` namespace towards gateway B (run with ip netns exec wan).

  attack.py CAPTURE.pcap GW_B_MAC COUNT

Takes genuine ESP packets A→B from CAPTURE.pcap (already delivered) and sends COUNT of each:
replays, a forged ICV (on a fresh sequence number), an unknown SPI, truncated ESP, and
cleartext aimed at B's protected prefix. Prints what it sent as JSON.
"""
import json, struct, sys
from scapy.all import Ether, IP, UDP, Raw, rdpcap, sendp

cap, gw_mac, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
esp = [p for p in rdpcap(cap) if IP in p and p[IP].proto == 50 and p[IP].dst == "203.0.113.2"]
assert len(esp) >= n, f"only {len(esp)} ESP packets captured"
src_mac = "02:00:00:00:66:66"
frames, sent = [], {}

def eth(ip):
    return Ether(src=src_mac, dst=gw_mac) / ip

# Replays of delivered packets: 13913.
for p in esp[:n]:
    frames.append(eth(IP(bytes(p[IP]))))
sent["replay"] = n
# Forged: a fresh (much higher) sequence number on a genuine body: the ICV fails, 13915.
for i, p in enumerate(esp[:n]):
    b = bytearray(bytes(p[IP]))
    hl = (b[0] & 0xF) * 4
    seq = struct.unpack("!I", b[hl + 4:hl + 8])[0]
    b[hl + 4:hl + 8] = struct.pack("!I", seq + 1_000_000 + i)
    b[-1] ^= 0x55
    frames.append(eth(IP(bytes(b))))
sent["bad_icv"] = n
# Unknown SPI: 13910.
for p in esp[:n]:
    b = bytearray(bytes(p[IP]))
    hl = (b[0] & 0xF) * 4
    b[hl:hl + 4] = struct.pack("!I", 0xDEAD0000)
    frames.append(eth(IP(bytes(b))))
sent["unknown_spi"] = n
# Truncated ESP (20 bytes: shorter than header + IV + trailer + ICV): 13914.
for p in esp[:n]:
    ip = IP(bytes(p[IP]))
    body = bytes(ip[IP].payload)[:20]
    frames.append(eth(IP(src=ip.src, dst=ip.dst, proto=50) / Raw(body)))
sent["truncated"] = n
# Cleartext for the protected prefix behind B: 13916.
for i in range(n):
    frames.append(eth(IP(src="192.0.2.2", dst="198.51.100.2") / UDP(sport=40000 + i, dport=9) / Raw(b"cleartext")))
sent["cleartext"] = n
sendp(frames, iface="br0", verbose=False)
print(json.dumps(sent))
