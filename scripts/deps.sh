#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a fresh Debian 12 machine.
# Idempotent: installs only missing packages. Needs root (CI runs as root).
set -euo pipefail
PKGS=(pkg-config libnftnl-dev libmnl-dev libnl-3-dev libnl-route-3-dev nftables conntrack iproute2 curl python3 util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]}; run as root (sudo $0)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "swift is not on PATH (Swift 6 toolchain expected, e.g. /opt/swift/usr/bin)" >&2; exit 1; }
