#!/usr/bin/env bash
# Installs what espd needs on a Debian machine, idempotently (as root): clang/llvm for the XDP
# program, iproute2/ethtool/tcpdump for the rig, tshark and scapy for the interop tests.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(clang llvm libelf-dev m4 ethtool tshark tcpdump zlib1g-dev pkg-config iproute2 make curl
      strongswan strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
python3 -c "import scapy.layers.ipsec, cryptography" 2>/dev/null || python3 -m pip install -q scapy cryptography
