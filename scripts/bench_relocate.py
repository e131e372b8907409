#!/usr/bin/env python3
"""Relocation benchmark (driven by scripts/bench-relocate; a benchmark, it asserts nothing).

A namespace lab, the agent (release build) on its enforcement namespace, a sequence-numbered UDP
stream from the client to the AISI's service address (one socket: one flow, paced at --rate Hz),
receivers on both anchors. The AISI is moved edge -> cloud -> edge ... N times:

  make-before-break   PUT new {relocates: old, drain_ms}: the agent installs the new lease and
                      switches new flows in one transaction; the established stream stays on the
                      old anchor until the drain ends, then moves (its conntrack entry is dropped
                      with the old lease's state).
  break-before-make   the baseline: DELETE old, then PUT new (no relocates).

Per switch: datagrams lost (sequence numbers never received on any anchor, attributed to the switch
whose window holds their send time), the largest gap in the received stream around it, and the
switch latency: inside the agent (`install_us` of the reply: admission to the kernel transaction
that switched) and as the controller sees it (request round trip; for the baseline, DELETE sent to
PUT answered: the time the AISI has no steering at all).
"""
import argparse, http.client, json, os, signal, socket, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--agent", required=True)
ap.add_argument("--repo", required=True)
ap.add_argument("-n", "--relocations", type=int, default=20)
ap.add_argument("--drain-ms", type=int, default=200)
ap.add_argument("--spacing-ms", type=int, default=500, help="time between two relocations")
ap.add_argument("--rate", type=int, default=1000, help="stream rate (datagrams/s)")
ap.add_argument("--json", action="store_true", help="also print the per-switch figures as JSON")
a = ap.parse_args()

PREFIX = "aipl%d" % (os.getpid() % 10000)
NS = lambda n: "%s-%s" % (PREFIX, n)
PORT = 7100
VIP = "198.18.100.10"
ANCHORS = {"edge-1": ("198.18.2.2", "edge"), "cloud-1": ("198.18.3.2", "cloud")}
tmp = tempfile.mkdtemp(prefix="aipaging-bench-relocate.")
procs = []


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    sh(a.repo + "/scripts/lab.sh", "down", PREFIX, check=False)
    subprocess.run(["rm", "-rf", tmp])


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(conn, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = conn.getresponse()
    text = r.read()
    return r.status, (json.loads(text) if text.strip().startswith(b"{") else text)


def lease(lid, anchor, relocates=None):
    o = {"lease_id": lid, "aisi": "aisi-bench", "aist": "tok-bench", "ttl_ms": 120000,
         "classifier": {"client": "198.18.1.2", "service": VIP, "protocol": "udp", "port": PORT},
         "anchor": {"id": anchor, "address": ANCHORS[anchor][0], "port": PORT},
         "qos": {"rate_kbit": 2000, "ceil_kbit": 4000, "priority": 1}}
    if relocates:
        o["relocates"] = relocates
        o["drain_ms"] = a.drain_ms
    return o


def start_sinks(tag):
    logs = {}
    for anchor, (_, ns) in ANCHORS.items():
        path = "%s/%s-%s.log" % (tmp, tag, ns)
        p = subprocess.Popen(["ip", "netns", "exec", NS(ns), "python3", a.repo + "/scripts/udp-sink.py", str(PORT), path],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        logs[anchor] = (p, path)
    time.sleep(0.3)
    return logs


def stop_sinks(logs):
    got = []
    time.sleep(0.3)
    for anchor, (p, path) in logs.items():
        p.kill()
        p.wait()
        with open(path) as f:
            for line in f:
                t, s, sent = line.split()
                got.append((int(t) / 1000.0, int(s), anchor, int(sent) / 1000.0))   # (ms, seq, anchor, sent ms)
    got.sort()
    return got


def start_stream(seconds):
    p = subprocess.Popen(["ip", "netns", "exec", NS("client"), "python3", a.repo + "/scripts/flow.py", "seqstream",
                          VIP, str(PORT), "--rate", str(a.rate), "--seconds", str(seconds)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p, int(seconds * a.rate)


def now_ms():
    return time.time() * 1000.0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def analyse(got, generated, windows):
    """windows: [(start_ms, end_ms)] per switch. Per switch: datagrams lost, the longest run of
    consecutive lost sequence numbers (ms of stream), the largest gap between arrivals, and the
    largest one-way delay (send to receive: the sender's own jitter does not count)."""
    seqs = {g[1] for g in got}
    missing = sorted(set(range(generated)) - seqs)
    # Send time of a lost sequence number, from the received ones (the stream is paced on
    # absolute times: send(seq) = start + seq / rate). Robust start: the median offset.
    offs = sorted(g[3] - g[1] * 1000.0 / a.rate for g in got)
    start = offs[len(offs) // 2] if offs else 0
    sent_at = lambda s: start + s * 1000.0 / a.rate
    k = len(windows)
    lost, run, gaps, delay = [0] * k, [0.0] * k, [0.0] * k, [0.0] * k
    which = lambda t: next((i for i, (w0, w1) in enumerate(windows) if w0 - 5 <= t <= w1 + 5), None)
    outside = 0
    cur, cur_start = 0, None
    for j, s in enumerate(missing):
        i = which(sent_at(s))
        if i is None:
            outside += 1
        else:
            lost[i] += 1
        cur = cur + 1 if j > 0 and missing[j - 1] == s - 1 else 1
        if i is not None:
            run[i] = max(run[i], cur * 1000.0 / a.rate)
    steady_gap, steady_delays = 0.0, []
    for g0, g1 in zip(got, got[1:]):
        inside = [i for i, (w0, w1) in enumerate(windows) if g1[0] >= w0 and g0[0] <= w1]
        for i in inside:
            gaps[i] = max(gaps[i], g1[0] - g0[0])
        if not inside:
            steady_gap = max(steady_gap, g1[0] - g0[0])
    # The path's share of each gap: arrival gap minus send gap of consecutive sequence numbers
    # (what the network and the agent added to the spacing the sender produced).
    pathgap = [0.0] * k
    byseq = sorted(got, key=lambda g: g[1])
    for g0, g1 in zip(byseq, byseq[1:]):
        if g1[1] != g0[1] + 1:
            continue
        i = which(g1[3])
        if i is not None:
            pathgap[i] = max(pathgap[i], (g1[0] - g0[0]) - (g1[3] - g0[3]))
    for g in got:
        i = which(g[3])
        d = g[0] - g[3]
        if i is None:
            steady_delays.append(d)
        else:
            delay[i] = max(delay[i], d)
    return dict(lost=lost, run=run, gaps=gaps, pathgap=pathgap, delay=delay, outside=outside, steady_gap=steady_gap,
                steady_delay_p50=pct(steady_delays, 0.5), steady_delay_max=max(steady_delays or [0.0]),
                dups=len(got) - len(seqs), missing=len(missing))


def main():
    sh(a.repo + "/scripts/lab.sh", "up", PREFIX)
    policy = {"policy_version": 1, "name": "bench-relocate",
              "anchors": [{"id": k, "address": v[0], "ports": [PORT]} for k, v in ANCHORS.items()],
              "max_ttl_ms": 3600000, "default_drain_ms": a.drain_ms, "max_drain_ms": 60000,
              "max_relocations_per_minute": 1000000,
              "enforcement_points": [{"name": "enforce", "capacity_kbit": 1000000}],
              "peers": {"uids": [0], "gids": []}, "accept_unsigned": True, "controller_keys": []}
    with open(tmp + "/policy.json", "w") as f:
        json.dump(policy, f)
    sockpath = tmp + "/agent.sock"
    agent = subprocess.Popen([a.agent, "--netns", NS("enforce"), "--socket", sockpath, "--state-dir", tmp,
                              "--policy", tmp + "/policy.json", "--log-level", "warning", "--flush-on-exit"],
                             stdout=subprocess.DEVNULL, stderr=open(tmp + "/agent.log", "w"))
    procs.append(agent)
    for _ in range(100):
        if os.path.exists(sockpath):
            break
        time.sleep(0.05)
    conn = UnixHTTP(sockpath)
    while True:
        try:
            if call(conn, "GET", "/v1/status")[0] == 200:
                break
        except OSError:
            conn = UnixHTTP(sockpath)
        time.sleep(0.05)

    n = a.relocations
    seconds = 1.0 + n * a.spacing_ms / 1000.0 + a.drain_ms / 1000.0 + 1.0
    results = {}
    anchors = ["edge-1", "cloud-1"]
    for mode in ["make-before-break", "break-before-make"]:
        tag = "mbb" if mode.startswith("make") else "bbm"
        logs = start_sinks(tag)
        first = "%s-0" % tag
        st, body = call(conn, "PUT", "/v1/leases/" + first, lease(first, "edge-1"))
        assert st == 201, (st, body)
        stream, generated = start_stream(seconds)
        time.sleep(1.0)
        prev = first
        windows, agent_us, rtt_ms = [], [], []
        for i in range(1, n + 1):
            lid, anchor = "%s-%d" % (tag, i), anchors[i % 2]
            t0 = now_ms()
            if mode == "make-before-break":
                st, body = call(conn, "PUT", "/v1/leases/" + lid, lease(lid, anchor, relocates=prev))
                t1 = now_ms()
                assert st == 201 and body.get("result") == "relocated", (st, body)
                agent_us.append(body["install_us"])
                rtt_ms.append(t1 - t0)
                # The established stream moves when the old lease's drain ends.
                windows.append((t0, t0 + a.drain_ms + 100))
            else:
                sd, bd = call(conn, "DELETE", "/v1/leases/" + prev)
                assert sd == 200, (sd, bd)
                st, body = call(conn, "PUT", "/v1/leases/" + lid, lease(lid, anchor))
                t1 = now_ms()
                assert st == 201, (st, body)
                agent_us.append(body["install_us"])
                rtt_ms.append(t1 - t0)
                windows.append((t0, t1 + 100))
            prev = lid
            rest = (t0 + a.spacing_ms) - now_ms()
            if rest > 0:
                time.sleep(rest / 1000.0)
        out, _ = stream.communicate()
        got = stop_sinks(logs)
        call(conn, "DELETE", "/v1/leases/" + prev)
        r = analyse(got, generated, windows)
        r.update(generated=generated, received=len(got), agent_us=agent_us, rtt_ms=rtt_ms,
                 anchors={k: sum(1 for g in got if g[2] == k) for k in ANCHORS})
        results[mode] = r
        time.sleep(0.5)

    print("\nbench-relocate: %d relocations each way, stream %d datagrams/s (interval %.1f ms), drain %d ms, one every %d ms"
          % (n, a.rate, 1000.0 / a.rate, a.drain_ms, a.spacing_ms))
    rows = [
        ("datagrams sent / received", lambda r: "%d / %d" % (r["generated"], r["received"])),
        ("lost per switch: mean / max", lambda r: "%.1f / %d" % (sum(r["lost"]) / n, max(r["lost"]))),
        ("lost in total (outside switches)", lambda r: "%d (%d)" % (r["missing"], r["outside"])),
        ("interruption (lost run) per switch: max", lambda r: "%.1f ms" % max(r["run"])),
        ("arrival gap around a switch: p50 / max", lambda r: "%.1f / %.1f ms" % (pct(r["gaps"], 0.5), max(r["gaps"]))),
        ("arrival gap away from switches: max", lambda r: "%.1f ms" % r["steady_gap"]),
        ("path's share of a gap around a switch: max", lambda r: "%.2f ms" % max(r["pathgap"])),
        ("one-way delay around a switch: max", lambda r: "%.2f ms" % max(r["delay"])),
        ("one-way delay away from switches: p50 / max", lambda r: "%.2f / %.2f ms" % (r["steady_delay_p50"], r["steady_delay_max"])),
        ("switch in the agent (install_us): p50 / p99", lambda r: "%.2f / %.2f ms" % (pct(r["agent_us"], 0.5) / 1000, pct(r["agent_us"], 0.99) / 1000)),
        ("controller's view: p50 / p99", lambda r: "%.2f / %.2f ms" % (pct(r["rtt_ms"], 0.5), pct(r["rtt_ms"], 0.99))),
        ("duplicates", lambda r: "%d" % r["dups"]),
    ]
    w = max(len(r[0]) for r in rows) + 2
    print("%-*s %-22s %s" % (w, "", "make-before-break", "break-before-make"))
    for name, f in rows:
        print("%-*s %-22s %s" % (w, name, f(results["make-before-break"]), f(results["break-before-make"])))
    print("controller's view: make-before-break = PUT round trip; break-before-make = DELETE sent to PUT answered,\n"
          "  the time the AISI has no steering. Arrival gaps include the sender's own pacing jitter (a Python\n"
          "  process); the path's share (arrival gap minus send gap of consecutive datagrams) and the one-way delay\n"
          "  (send to receive, one clock) are what the switch itself did to the stream.")
    if a.json:
        print(json.dumps({"config": vars(a), "results": results}))


try:
    main()
finally:
    cleanup()
