#!/usr/bin/env python3
"""Independent ESP for espd's interop tests (scapy + cryptography).

  scapy_esp.py encrypt OUT.pcap PLAIN.pcap   writes ESP (tunnel mode, AES-GCM-128) made by
                                             scapy for the SA 0xa001 of examples/gw-*.toml,
                                             and the plaintext it encrypted
  scapy_esp.py decrypt IN.pcap OUT.pcap      decrypts ESP made by espd (SA 0xa001) with scapy
"""
import sys
from scapy.all import Ether, IP, IPv6, UDP, TCP, Raw, rdpcap, wrpcap
from scapy.layers.ipsec import SecurityAssociation, ESP

KEY = bytes.fromhex("00112233445566778899aabbccddeeff01020304")  # key || salt
SPI = 0xA001
GW_A, GW_B = "203.0.113.1", "203.0.113.2"


def sa():
    return SecurityAssociation(ESP, spi=SPI, crypt_algo="AES-GCM", crypt_key=KEY,
                               tunnel_header=IP(src=GW_A, dst=GW_B))


def encrypt(out, plain_out):
    s = sa()
    inner = []
    for i in range(40):
        if i % 3 == 0:
            p = IP(src="192.0.2.10", dst="198.51.100.20") / UDP(sport=1000 + i, dport=5001) / Raw(bytes([i]) * (i * 37 % 1400))
        elif i % 3 == 1:
            p = IP(src="192.0.2.11", dst="198.51.100.21") / TCP(sport=2000 + i, dport=80, flags="PA") / Raw(b"tcp" * i)
        else:
            p = IPv6(src="fd00:a::10", dst="fd00:b::20") / UDP(sport=3000 + i, dport=5001) / Raw(b"six" * i)
        p = p.__class__(bytes(p))  # fill lengths and checksums
        inner.append(Ether(src="02:00:00:00:00:0b", dst="02:00:00:00:0b:01") / p)
        e = s.encrypt(p, seq_num=i + 1)
        frames = Ether(src="02:00:00:00:0a:11", dst="02:00:00:00:0b:11") / e
        wrpcap(out, frames, append=(i > 0))
    wrpcap(plain_out, inner)


def decrypt(inp, out):
    s = sa()
    res = []
    for f in rdpcap(inp):
        p = s.decrypt(f[IP])
        res.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p)
    wrpcap(out, res)
    print(len(res))


if __name__ == "__main__":
    {"encrypt": encrypt, "decrypt": decrypt}[sys.argv[1]](*sys.argv[2:])
