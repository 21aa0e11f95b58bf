#!/usr/bin/env bash
# Records the known-answer data of tests/ike_kat.rs: two strongSwan 5.9.8 charons (kernel-libipsec,
# each in its own network namespace with a private /run) run IKEv1 PSK main mode + quick mode with
# each proposal below, charon logging ike/enc/cfg at level 4 (it prints nonces, the DH secret,
# SKEYID*, the encryption key, the IVs and the quick-mode KEYMAT). The initiator's log of each run
# is trimmed to the lines the tests read and kept as tests/data/ike/<name>.log.
#
# Root; takes the rig lock itself; removes its namespaces, charons and temp dir on any exit.
# Usage: sudo ./scripts/ike-kat-record.sh [OUTDIR]   (default tests/data/ike)
# The PSK is a throwaway written here; nothing recorded is a real secret.
set -euo pipefail

if [[ -z "${IKE_KAT_LOCKED:-}" ]]; then
    exec env IKE_KAT_LOCKED=1 flock /tmp/espd-rig.lock "$0" "$@"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/tests/data/ike}
charon=""
for c in /usr/lib/ipsec/charon /usr/libexec/ipsec/charon; do
    [[ -x $c ]] && charon=$c && break
done
[[ -n $charon ]] || { echo "charon not installed (./scripts/install-deps.sh)" >&2; exit 1; }
command -v swanctl >/dev/null || { echo "swanctl not installed" >&2; exit 1; }

tmp=$(mktemp -d /tmp/ike-kat.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del ikekat-a 2>/dev/null || true
    ip netns del ikekat-b 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# name  ike-proposal  esp-proposal
runs=(
    "ecp256-sha256-aes256 aes256-sha256-ecp256 aes256gcm16"
    "modp2048-sha256-aes128-pfs aes128-sha256-modp2048 aes128gcm16-modp2048"
    "ecp384-sha384-aes256-pfs aes256-sha384-ecp384 aes256gcm16-ecp384"
    "x25519-sha512-aes128 aes128-sha512-curve25519 aes128gcm16"
)

netns_up() {
    ip netns add ikekat-a
    ip netns add ikekat-b
    ip link add ikekat0 netns ikekat-a type veth peer name ikekat1 netns ikekat-b
    ip -n ikekat-a addr add 203.0.113.1/24 dev ikekat0
    ip -n ikekat-b addr add 203.0.113.2/24 dev ikekat1
    for n in a b; do
        ip -n ikekat-$n link set lo up
    done
    ip -n ikekat-a link set ikekat0 up
    ip -n ikekat-b link set ikekat1 up
    # kernel-libipsec routes the remote subnet through its TUN with a source inside local_ts.
    ip -n ikekat-a addr add 192.0.2.1/32 dev lo
    ip -n ikekat-b addr add 198.51.100.1/32 dev lo
}

# charon_conf ME LOG
charon_conf() {
    cat >"$tmp/strongswan-$1.conf" <<EOF
charon {
  load_modular = no
  load = random nonce aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey curve25519 gmp kdf openssl kernel-libipsec kernel-netlink socket-default vici updown
  plugins {
    vici {
      socket = unix://$tmp/charon-$1.vici
    }
  }
  filelog {
    kat {
      path = $2
      default = 1
      ike = 4
      enc = 4
      cfg = 4
      chd = 4
      flush_line = yes
      append = no
    }
  }
}
EOF
}

# swanctl_conf ME LOCAL REMOTE LOCAL_TS REMOTE_TS IKE ESP
swanctl_conf() {
    cat >"$tmp/swanctl-$1.conf" <<EOF
connections {
  kat {
    version = 1
    local_addrs = $2
    remote_addrs = $3
    proposals = $6
    aggressive = no
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
        esp_proposals = $7
        mode = tunnel
        start_action = none
      }
    }
  }
}
secrets {
  ike-kat {
    id-a = 203.0.113.1
    id-b = 203.0.113.2
    secret = "espd-ike-kat-throwaway-psk"
  }
}
EOF
}

swanctl_retry() {
    for _ in $(seq 1 100); do
        swanctl "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "swanctl $* failed" >&2
    return 1
}

mkdir -p "$out"
for run in "${runs[@]}"; do
    read -r name ike esp <<<"$run"
    echo "== $name: $ike / $esp"
    netns_up
    pids=()
    for me in a b; do
        if [[ $me == a ]]; then l=203.0.113.1 r=203.0.113.2 lt=192.0.2.0/24 rt=198.51.100.0/24
        else l=203.0.113.2 r=203.0.113.1 lt=198.51.100.0/24 rt=192.0.2.0/24; fi
        charon_conf $me "$tmp/$name-$me.log"
        swanctl_conf $me $l $r $lt $rt "$ike" "$esp"
        ip netns exec ikekat-$me unshare -m --propagation private sh -c \
            "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF=$tmp/strongswan-$me.conf exec $charon" \
            >"$tmp/$name-$me.stdout" 2>&1 &
        pids+=($!)
    done
    for me in a b; do
        swanctl_retry --load-all --uri "unix://$tmp/charon-$me.vici" --file "$tmp/swanctl-$me.conf"
    done
    swanctl --initiate --child net --uri "unix://$tmp/charon-a.vici" >"$tmp/$name-initiate.txt" 2>&1 \
        || { cat "$tmp/$name-initiate.txt" >&2; exit 1; }
    swanctl --list-sas --uri "unix://$tmp/charon-a.vici" >"$tmp/$name-sas.txt"
    swanctl --terminate --ike kat --uri "unix://$tmp/charon-a.vici" >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
    ip netns del ikekat-a
    ip netns del ikekat-b
    # Keep the lines the tests read, each heading with its hex dump: the PSK, every [IKE] and
    # [CHD] value (DH secret, SKEYID*, IVs, hashes, KEYMAT seeds and keys), whole messages as sent
    # and received, and the CBC inputs and outputs. Dump lines lose their ASCII column, headings
    # their timestamps, thread ids and buffer addresses, so a re-recording diffs cleanly.
    for me in a b; do
        awk -f - "$tmp/$name-$me.log" >"$out/$name-$me.log" <<'AWK'
{
    sub(/^[A-Z][a-z][a-z] [ 0-9][0-9] [0-9:]+ /, "")
    sub(/^[0-9]+\[/, "[")
}
/^\[[A-Z]+\] +[0-9]+: / {
    if (keep) { i = index($0, ": "); print substr($0, 1, i + 48) }
    next
}
{
    sub(/ @ (0x[0-9a-f]+|\(nil\))/, "")
    keep = ($0 ~ /^\[(IKE|CHD)\] /) \
        || ($0 ~ /^\[CFG\] (key: |selected proposal)/) \
        || ($0 ~ /^\[NET\] (sending|received) packet/) \
        || ($0 ~ /^\[ENC\] (generating|parsed) [A-Z_0-9]+ (request|response)/) \
        || ($0 ~ /^\[ENC\] generated data of this generator/) \
        || ($0 ~ /^\[ENC\] (encrypting|decrypting) payloads/) \
        || ($0 ~ /^\[ENC\] (IV|plain|padding|encrypted) =>/) \
        || (prev ~ /parsing HEADER payload/ && $0 ~ /^\[ENC\] parsing payload from/)
    if ($0 ~ /^\[IKE\] +(queueing|activating)/) keep = 0
    prev = $0
    if (keep) print
}
AWK
        sed -i 's/ *$//' "$out/$name-$me.log"
    done
    cp "$tmp/$name-sas.txt" "$out/$name-sas.txt"
done
echo "recorded into $out"
