#!/usr/bin/env bash
# Records a real strongSwan 5.9.8 IKEv1 exchange for the ISAKMP wire tests (tests/ike_wire.rs):
# two charons (kernel-libipsec, IKEv1 PSK) in two namespaces joined by one veth; charon "a"
# initiates main mode + quick mode, then `swanctl --terminate --ike` sends the deletes.
# tcpdump on a's veth writes OUT.pcap; tshark prints each ISAKMP message as hex (stdout).
#
# Usage (root; serialised with the other rig users):
#   flock /tmp/espd-rig.lock scripts/ike-capture.sh [OUT.pcap]
# Addresses: 203.0.113.1 (a, initiator) and 203.0.113.2 (b). Everything created is removed on
# exit, also on failure.
set -euo pipefail
out=$(realpath -m "${1:-ike-capture.pcap}")
charon=/usr/lib/ipsec/charon
[ -x "$charon" ] || charon=/usr/libexec/ipsec/charon
[ -x "$charon" ] || { echo "charon not installed" >&2; exit 2; }
dir=$(mktemp -d)
A=ikecap-a B=ikecap-b
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del $A 2>/dev/null || true
  ip netns del $B 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

ip netns add $A
ip netns add $B
ip link add ikecap0 netns $A type veth peer name ikecap1 netns $B
ip -n $A addr add 203.0.113.1/24 dev ikecap0
ip -n $B addr add 203.0.113.2/24 dev ikecap1
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set ikecap0 up
ip -n $B link set ikecap1 up
# The protected subnets, so kernel-libipsec finds a source address and a route for its policies.
ip -n $A addr add 192.0.2.1/24 dev lo
ip -n $B addr add 198.51.100.1/24 dev lo
ip -n $A route add 198.51.100.0/24 via 203.0.113.2
ip -n $B route add 192.0.2.0/24 via 203.0.113.1

conf() { # me local remote local_ts remote_ts
  cat > "$dir/strongswan-$1.conf" <<EOF
charon {
  load_modular = no
  send_vendor_id = yes
  load = random nonce aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey curve25519 gmp kdf openssl kernel-libipsec kernel-netlink socket-default vici updown
  filelog {
    capture {
      path = $dir/charon-$1.log
      default = 1
    }
  }
  plugins {
    vici {
      socket = unix://$dir/charon-$1.vici
    }
  }
}
EOF
  cat > "$dir/swanctl-$1.conf" <<EOF
connections {
  espd {
    version = 1
    local_addrs = $2
    remote_addrs = $3
    proposals = aes256-sha256-ecp256,aes128-sha256-modp2048,aes256-sha512-ecp384,aes128-sha384-curve25519
    aggressive = no
    dpd_delay = 5s
    send_certreq = no
    local {
      auth = psk
      id = $2
    }
    remote {
      auth = psk
      id = $3
    }
    children {
      net {
        local_ts = $4
        remote_ts = $5
        esp_proposals = aes128gcm16-modp2048,aes256gcm16
        mode = tunnel
        start_action = none
      }
    }
  }
}
secrets {
  ike-espd {
    id-a = 203.0.113.1
    id-b = 203.0.113.2
    secret = "espd-ike-capture"
  }
}
EOF
}
conf a 203.0.113.1 203.0.113.2 192.0.2.0/24 198.51.100.0/24
conf b 203.0.113.2 203.0.113.1 198.51.100.0/24 192.0.2.0/24

ip netns exec $A tcpdump -i ikecap0 --immediate-mode -U -n -w "$out" 'udp port 500 or udp port 4500' \
  2> "$dir/tcpdump.err" &
pids+=($!)
for me in a b; do
  ns=ikecap-$me
  ip netns exec $ns unshare -m --propagation private sh -c \
    "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF=$dir/strongswan-$me.conf exec $charon" \
    > "$dir/charon-$me.out" 2>&1 &
  pids+=($!)
done
# Poll (not sleep-for-success): tcpdump listening, both vici sockets accepting the config.
for _ in $(seq 100); do grep -q "listening on" "$dir/tcpdump.err" && break; sleep 0.1; done
grep -q "listening on" "$dir/tcpdump.err" || { echo "tcpdump did not start" >&2; exit 1; }
for me in a b; do
  ok=
  for _ in $(seq 100); do
    if swanctl --load-all --uri "unix://$dir/charon-$me.vici" --file "$dir/swanctl-$me.conf" \
      > /dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "charon $me did not load its config" >&2; exit 1; }
done
swanctl --initiate --child net --uri "unix://$dir/charon-a.vici" > "$dir/initiate.out"
swanctl --list-sas --uri "unix://$dir/charon-a.vici" >&2
swanctl --terminate --ike espd --uri "unix://$dir/charon-a.vici" > "$dir/terminate.out"
# Let b's view of the delete settle: poll until b has no IKE SA left.
for _ in $(seq 50); do
  [ -z "$(swanctl --list-sas --uri "unix://$dir/charon-b.vici" 2>/dev/null)" ] && break
  sleep 0.1
done
kill -INT "${pids[0]}"; wait "${pids[0]}" || true
# One line per ISAKMP message: frame, src:port > dst:port, the ISAKMP bytes in hex (the
# non-ESP marker of port 4500 stripped).
tshark -r "$out" -T fields -E separator=' ' -e frame.number -e ip.src -e udp.srcport \
  -e ip.dst -e udp.dstport -e udp.payload |
  while read -r n s sp d dp hex; do
    [ "$sp" = 4500 ] || [ "$dp" = 4500 ] && hex=${hex#00000000}
    echo "$n $s:$sp > $d:$dp $hex"
  done
