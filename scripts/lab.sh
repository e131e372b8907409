#!/usr/bin/env bash
# A namespace lab for aipaging (addresses from 198.18.0.0/15 and 2001:db8::/32 only):
#
#   PREFIX-client  (198.18.1.2, 2001:db8:1::2) ──┐
#   PREFIX-client2 (198.18.4.2, 2001:db8:4::2) ──┤  PREFIX-enforce  (router; the agent's namespace)
#                                                 ├── r-edge  ── PREFIX-edge  anchor edge-1  198.18.2.2 / 2001:db8:2::2
#                                                 └── r-cloud ── PREFIX-cloud anchor cloud-1 198.18.3.2 / 2001:db8:3::2
#
# The AISI's stable service address (VIP) 198.18.100.10 / 2001:db8:100::10 exists nowhere: clients
# route it to the enforcement point, which has no route for it. Only a lease's DNAT steers it.
#
#   scripts/lab.sh up PREFIX [--services]   create (and start the anchor services on port 7000)
#   scripts/lab.sh down PREFIX              remove everything
set -euo pipefail
cmd=${1:?usage: lab.sh up|down PREFIX [--services]}
P=${2:?prefix}
services=${3:-}
here=$(cd "$(dirname "$0")" && pwd)

down() {
  for ns in client client2 enforce edge cloud; do
    if [ -f "/run/aipaging-lab/$P-$ns.pids" ]; then
      xargs -r kill -9 2>/dev/null < "/run/aipaging-lab/$P-$ns.pids" || true
      rm -f "/run/aipaging-lab/$P-$ns.pids"
    fi
    # SIGKILL: a process started by a test may have SIGTERM blocked (inherited), and a process
    # left in the namespace would keep it (and its veths) alive after `ip netns del`.
    ip netns pids "$P-$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$P-$ns" 2>/dev/null || true
  done
}

link() { # link NS_A IF_A ADDR4_A ADDR6_A NS_B IF_B ADDR4_B ADDR6_B
  ip link add "$2" netns "$1" type veth peer name "$6" netns "$5"
  ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" addr add "$4" dev "$2" nodad
  ip -n "$5" addr add "$7" dev "$6"; ip -n "$5" addr add "$8" dev "$6" nodad
  ip -n "$1" link set "$2" up; ip -n "$5" link set "$6" up
}

up() {
  down
  for ns in client client2 enforce edge cloud; do
    ip netns add "$P-$ns"
    # No duplicate address detection: tentative (link-local) addresses would hold up the first
    # IPv6 packets for about a second.
    ip netns exec "$P-$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$P-$ns" link set lo up
  done
  link "$P-client" c0 198.18.1.2/24 2001:db8:1::2/64 "$P-enforce" r-client 198.18.1.1/24 2001:db8:1::1/64
  link "$P-client2" c0 198.18.4.2/24 2001:db8:4::2/64 "$P-enforce" r-client2 198.18.4.1/24 2001:db8:4::1/64
  link "$P-edge" e0 198.18.2.2/24 2001:db8:2::2/64 "$P-enforce" r-edge 198.18.2.1/24 2001:db8:2::1/64
  link "$P-cloud" k0 198.18.3.2/24 2001:db8:3::2/64 "$P-enforce" r-cloud 198.18.3.1/24 2001:db8:3::1/64
  ip -n "$P-client" route add default via 198.18.1.1
  ip -n "$P-client" -6 route add default via 2001:db8:1::1
  ip -n "$P-client2" route add default via 198.18.4.1
  ip -n "$P-client2" -6 route add default via 2001:db8:4::1
  ip -n "$P-edge" route add default via 198.18.2.1
  ip -n "$P-edge" -6 route add default via 2001:db8:2::1
  ip -n "$P-cloud" route add default via 198.18.3.1
  ip -n "$P-cloud" -6 route add default via 2001:db8:3::1
  ip netns exec "$P-enforce" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  # Unreplied UDP entries should not outlive the test that made them by much.
  ip netns exec "$P-enforce" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=10 2>/dev/null || true
  if [ "$services" = "--services" ]; then
    mkdir -p /run/aipaging-lab
    ip netns exec "$P-edge" python3 "$here/anchor-service.py" edge-1 7000 >/dev/null 2>&1 &
    echo $! > "/run/aipaging-lab/$P-edge.pids"
    ip netns exec "$P-cloud" python3 "$here/anchor-service.py" cloud-1 7000 >/dev/null 2>&1 &
    echo $! > "/run/aipaging-lab/$P-cloud.pids"
    sleep 0.3
  fi
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: lab.sh up|down PREFIX [--services]" >&2; exit 2 ;;
esac
