#!/usr/bin/env python3
"""Driver of scripts/bench-evidence: the evidence exporter's cost, measured on a namespace lab.

For each scenario it starts the release agent on a fresh lab (with aipaging-reflector on the
anchor), admits N leases (one AISI flow each, distinct ports), lets one window pass, then
measures over --seconds: the agent's CPU time (utime + stime from /proc/PID/stat, and per thread),
its RSS, probes sent/received, and the evidence bytes written, extrapolated to a lease-hour.
Prints a table. A benchmark: it asserts nothing about time."""
import argparse, http.client, json, os, socket, subprocess, sys, time

HZ = os.sysconf("SC_CLK_TCK")

class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("agent")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

def call(sock, method, path, body=None):
    c = UnixHTTP(sock)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, (json.loads(data) if data else None)

def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])   # utime + stime (fields 14, 15)

def thread_ticks(pid):
    """(utime, stime) in clock ticks per thread name, summed over threads of the same name."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            f = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            u, s = out.get(comm, (0, 0))
            out[comm] = (u + int(f[11]), s + int(f[12]))
        except OSError:
            pass
    return out

def thread_id(pid, name):
    for tid in os.listdir(f"/proc/{pid}/task"):
        if open(f"/proc/{pid}/task/{tid}/comm").read().strip() == name:
            return int(tid)
    raise SystemExit(f"no thread {name}")

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def sh(*args, check=True):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout

def scenario(a, name, leases, window_ms, interval_ms):
    prefix = "bev%d" % (os.getpid() % 10000)
    repo = a.repo
    sh(f"{repo}/scripts/lab.sh", "up", prefix, "--services")
    state = f"/tmp/{prefix}-state"
    sh("rm", "-rf", state)
    os.makedirs(state)
    sock = state + "/agent.sock"
    cfg = state + "/config.json"
    json.dump({"evidence_window_ms": window_ms, "probe_interval_ms": interval_ms, "probe_timeout_ms": min(1000, window_ms // 2),
               "reconcile_interval_ms": 1000}, open(cfg, "w"))
    refl = subprocess.Popen(["ip", "netns", "exec", prefix + "-edge", a.bin + "/aipaging-reflector", "--quiet"])
    agent = subprocess.Popen([a.bin + "/aipaging-agent", "--netns", prefix + "-enforce", "--socket", sock,
                              "--state-dir", state, "--config", cfg, "--capacity-kbit", "100000000",
                              "--log-level", "error", "--flush-on-exit"], stderr=open(state + "/agent.log", "w"))
    try:
        for _ in range(200):
            if os.path.exists(sock) or agent.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(sock):
            raise SystemExit(f"{name}: the agent did not start: " + open(state + "/agent.log").read()[-2000:])
        t = time.time()
        for i in range(leases):
            port = 10000 + i
            body = {"lease_id": f"b{i}", "aisi": f"aisi-{i}", "aist": "tok", "ttl_ms": 3_600_000,
                    "classifier": {"client": "198.18.1.2", "service": "198.18.100.10", "protocol": "udp", "port": port},
                    "anchor": {"id": "edge-1", "address": "198.18.2.2", "port": port},
                    "qos": {"rate_kbit": 100, "ceil_kbit": 1000, "priority": 4, "latency_ms": 20}}
            s, r = call(sock, "PUT", f"/v1/leases/b{i}", body)
            if s != 201:
                raise SystemExit(f"lease b{i}: {s} {r}")
        admit_s = time.time() - t
        # Let every lease get through its first (partial) window before measuring.
        time.sleep(window_ms / 1000 + 1.5)
        st0 = call(sock, "GET", "/v1/status")[1]["evidence"]
        c0, th0, w0 = cpu_ticks(agent.pid), thread_ticks(agent.pid), time.time()
        if a.perf and interval_ms:
            tid = thread_id(agent.pid, "aip-evidence")
            subprocess.run(["timeout", "-s", "INT", str(a.seconds), "perf", "record", "-g", "-t", str(tid), "-o", a.perf],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            time.sleep(a.seconds)
        c1, th1, w1 = cpu_ticks(agent.pid), thread_ticks(agent.pid), time.time()
        st1 = call(sock, "GET", "/v1/status")[1]["evidence"]
        rss = rss_kib(agent.pid)
        wall = w1 - w0
        cpu = (c1 - c0) / HZ / wall
        m0, m1 = st0.get("measurement", {}), st1.get("measurement", {})
        sent = (m1.get("probes_sent", 0) - m0.get("probes_sent", 0)) / wall
        recv = (m1.get("probes_received", 0) - m0.get("probes_received", 0)) / wall
        written = st1["bytes_written"] - st0["bytes_written"]
        records = st1["records_written"] - st0["records_written"]
        per_lease_hour = written / max(1, leases) / wall * 3600 if leases else 0
        def delta(name):
            u1, s1 = th1.get(name, (0, 0))
            u0, s0 = th0.get(name, (0, 0))
            return (u1 - u0) / HZ / wall * 100, (s1 - s0) / HZ / wall * 100
        threads = {k: sum(delta(k)) / 100 for k in th1}
        top = sorted(threads.items(), key=lambda kv: -kv[1])[:4]
        exp_user, exp_sys = delta("aip-evidence")
        log_user, log_sys = delta("aip-evi-log")
        return {"name": name, "leases": leases, "window_s": window_ms / 1000, "probe_hz": (1000 / interval_ms) if interval_ms else 0,
                "cpu_pct": cpu * 100, "cpu_pct_per_1000": cpu * 100 * 1000 / leases if leases else cpu * 100,
                "rss_mib": rss / 1024, "probes_sent_s": sent, "probes_recv_s": recv,
                "records_s": records / wall, "bytes_per_lease_hour": per_lease_hour,
                "exporter_user": exp_user, "exporter_sys": exp_sys, "log_cpu": log_user + log_sys, "rss_kib": rss,
                "threads": ", ".join(f"{k} {v * 100:.2f}%" for k, v in top if v > 0), "admit_s": admit_s}
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        refl.kill()
        refl.wait()
        sh(f"{repo}/scripts/lab.sh", "down", prefix, check=False)
        sh("rm", "-rf", state, check=False)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--leases", default="1000,5000", help="lease counts, comma-separated (e.g. 1000,5000)")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--windows", default="10000,1000", help="window lengths (ms) of the probing scenarios")
    p.add_argument("--probing-only", action="store_true", help="skip the idle and no-probe scenarios")
    p.add_argument("--perf", help="record a perf profile of the exporter thread to this file (probing scenarios)")
    a = p.parse_args()
    rows = [] if a.probing_only else [scenario(a, "idle agent", 0, 10000, 100)]
    for n in [int(x) for x in a.leases.split(",")]:
        if not a.probing_only:
            rows.append(scenario(a, "counters + records, no probes", n, 10000, 0))
        for w in [int(x) for x in a.windows.split(",")]:
            rows.append(scenario(a, "probing 10 Hz", n, w, 100))
    idle = next((r for r in rows if r["leases"] == 0), None)
    print()
    print(f"evidence exporter cost, {a.seconds:.0f} s per scenario, agent release build, {os.cpu_count()} CPUs.")
    print("exporter = the agent's 'aip-evidence' thread (probes, replies, counters, records) plus its log writer")
    print("'aip-evi-log' (utime+stime from /proc/PID/task/TID/stat); sys includes the kernel's UDP, HTB and")
    print("veth work done in the thread's context (in this lab also the anchor namespace's receive softirq).")
    hdr = ["scenario", "leases", "window", "probes/s out/in", "exporter CPU % (user+sys)", "exporter % per 1000 leases",
           "agent CPU %", "agent RSS MiB", "RSS over idle per 1000 leases MiB", "records/s", "evidence B per lease-hour"]
    print(" | ".join(hdr))
    print(" | ".join("---" for _ in hdr))
    for r in rows:
        n = r["leases"]
        exp = r["exporter_user"] + r["exporter_sys"] + r["log_cpu"]
        rss_over = (r["rss_kib"] - idle["rss_kib"]) / 1024 * 1000 / n if (idle and n) else None
        print(" | ".join([r["name"], str(n), f"{r['window_s']:g} s", f"{r['probes_sent_s']:.0f}/{r['probes_recv_s']:.0f}",
                          f"{exp:.2f} ({r['exporter_user']:.2f}+{r['exporter_sys']:.2f}, log {r['log_cpu']:.2f})",
                          f"{exp * 1000 / n:.2f}" if n else "-",
                          f"{r['cpu_pct']:.2f}", f"{r['rss_mib']:.1f}", f"{rss_over:.1f}" if rss_over is not None else "-",
                          f"{r['records_s']:.1f}", f"{r['bytes_per_lease_hour']:.0f}" if n else "-"]))
    print()
    for r in rows:
        print(f"{r['name']} ({r['leases']} leases, window {r['window_s']:g} s): admitted in {r['admit_s']:.1f} s; busiest threads: {r['threads']}")
    print("target: under 5 % of one core per 1000 leases probing at 10 Hz")

main()
