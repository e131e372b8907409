#!/usr/bin/env bash
# The main job: the agent on a namespace lab, steering real traffic under a COMMIT lease.
#
# Builds the agent, creates the lab (scripts/lab.sh: client, enforcement point, edge and cloud
# anchors), starts aipaging-agent on the enforcement namespace, and then shows:
#   1. without a lease, the client's flow to the AISI's service address reaches no anchor;
#   2. a COMMIT steers it to the edge anchor, under its own HTB class (nft and tc counters);
#   3. the class shapes the flow to its ceiling;
#   4. a make-before-break relocation to the cloud anchor keeps the AISI's address;
#   5. when the lease expires, the kernel state and the steering are gone;
#   6. the evidence: EVI records per window and event (STAMP probes to aipaging-reflector on each
#      anchor, per-lease counters), a tail audit, and the verified hash chain.
# Everything is removed at the end, also on failure. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
scripts/deps.sh
echo "== building"
swift build 2>&1 | tail -1
BIN=$(swift build --show-bin-path)
P=aipdemo
STATE=$(mktemp -d /tmp/aipaging-demo.XXXXXX)
export AIPAGING_SOCKET=$STATE/agent.sock
AGENT_PID=
cleanup() {
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  scripts/lab.sh down $P
  rm -rf "$STATE"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { echo "\$ aipagingctl $*"; "$BIN/aipagingctl" "$@"; }
in_ns() { ip netns exec "$P-$1" "${@:2}"; }
probe() { echo "\$ client: probe 198.18.100.10 udp/7000 -> $(in_ns client python3 scripts/flow.py probe 198.18.100.10 7000 --count 3 || true)"; }

step "lab: client 198.18.1.2, enforcement point $P-enforce, anchors edge-1 198.18.2.2 and cloud-1 198.18.3.2"
scripts/lab.sh up $P --services
# STAMP reflectors on the anchors (lab.sh down ends every process in the lab's namespaces).
# (started directly, not through in_ns: a function's subshell would report "Killed" at the end)
ip netns exec "$P-edge" "$BIN/aipaging-reflector" --quiet & disown
ip netns exec "$P-cloud" "$BIN/aipaging-reflector" --quiet & disown
echo '{"evidence_window_ms": 2000}' > "$STATE/config.json"
"$BIN/aipaging-agent" --netns $P-enforce --socket "$AIPAGING_SOCKET" --state-dir "$STATE" --config "$STATE/config.json" \
    --policy policies/example.json --capacity-kbit 100000 --flush-on-exit 2> "$STATE/agent.log" &
AGENT_PID=$!
for _ in $(seq 50); do [ -S "$AIPAGING_SOCKET" ] && break; sleep 0.1; done
ctl status

step "1. no COMMIT: no steering (each '-' is a probe nobody answered)"
probe

step "2. COMMIT c-demo-1: AISI aisi-summarize -> anchor edge-1, rate 2 Mbit/s, ceil 4 Mbit/s, ttl 12 s"
ctl commit --lease-id c-demo-1 --aisi aisi-summarize --client 198.18.1.2 --service 198.18.100.10 --port 7000 \
    --anchor-id edge-1 --anchor-address 198.18.2.2 --ttl-ms 12000 --rate-kbit 2000 --ceil-kbit 4000 --priority 1 --latency-ms 5
probe
echo "\$ nft list table inet aipaging   (elements only)"
in_ns enforce nft list table inet aipaging | grep -A1 "elements ="
echo "\$ tc -s class show dev r-edge"
in_ns enforce tc -s class show dev r-edge

step "3. the lease's class shapes the flow: 12 Mbit/s offered, ceil 4 Mbit/s"
in_ns client python3 scripts/flow.py blast 198.18.100.10 7000 --mbit 12 --seconds 2
in_ns enforce tc -s class show dev r-edge | grep -A2 "class htb 100:2"

step "4. make-before-break relocation to cloud-1 (drain 1 s): same AISI, same service address"
ctl commit --lease-id c-demo-2 --aisi aisi-summarize --client 198.18.1.2 --service 198.18.100.10 --port 7000 \
    --anchor-id cloud-1 --anchor-address 198.18.3.2 --ttl-ms 6000 --rate-kbit 2000 --ceil-kbit 4000 --priority 1 --latency-ms 5 \
    --relocates c-demo-1 --drain-ms 1000
sleep 1.3
probe
ctl list

step "5. expiry: wait for c-demo-2's deadline (kernel timeouts and the agent's timer)"
while "$BIN/aipagingctl" show c-demo-2 >/dev/null 2>&1; do sleep 0.2; done
ctl list
probe
echo "\$ nft list table inet aipaging | grep -c 'elements ='   (0: no element left)"
in_ns enforce nft list table inet aipaging | grep -c "elements =" || true
echo "\$ tc class show dev r-edge; tc class show dev r-cloud   (nothing: no class left)"
in_ns enforce tc class show dev r-edge
in_ns enforce tc class show dev r-cloud

step "6. evidence: a record per 2 s window and per event, bound to the lease and anchor; tail audit; chain"
ctl evidence --aisi aisi-summarize
ctl evidence audit --aisi aisi-summarize
ctl evidence verify --file "$STATE"

step "agent log"
cat "$STATE/agent.log"
echo
echo "demo complete"
