#!/usr/bin/env python3
"""Lab traffic for aipaging demos and benchmarks (test addresses only).

  flow.py probe ADDR PORT [--count N] [--tcp]   send N requests, print which anchor answered each
  flow.py blast ADDR PORT --mbit R --seconds S   send UDP at R Mbit/s, report the echoed throughput
  flow.py seqstream ADDR PORT --rate HZ --seconds S
                                               ONE UDP flow sending "seq N" datagrams at HZ; prints the count
  flow.py stream ADDR PORT --seconds S [--interval-ms I] [--tcp]
                                               ONE flow (one socket / connection) sending a request
                                               every I ms; prints "<epoch ms> <anchor or ->" per request
  flow.py rtt ADDR PORT --seconds S [--interval-ms I] [--priority CLASSID]
                                               UDP round trips to an echo service (an independent delay
                                               measurement); prints JSON {n, lost, median_ms, mean_ms, p90_ms}
  flow.py flood ADDR PORT --mbit R --seconds S [--size B]
                                               UDP at a constant rate, nothing read back (background load
                                               that keeps a shaped queue standing)
"""
import argparse, socket, sys, time

def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET

def probe(a):
    answers = []
    for i in range(a.count):
        try:
            if a.tcp:
                with socket.create_connection((a.addr, a.port), timeout=a.timeout) as s:
                    s.sendall(b"probe %d\n" % i)
                    answers.append(s.recv(200).split(b" ")[0].decode())
            else:
                s = socket.socket(family(a.addr), socket.SOCK_DGRAM)
                s.settimeout(a.timeout)
                s.sendto(b"probe %d" % i, (a.addr, a.port))
                answers.append(s.recvfrom(200)[0].split(b" ")[0].decode())
                s.close()
        except (socket.timeout, OSError) as e:
            answers.append("-" if isinstance(e, socket.timeout) else type(e).__name__)
    print(" ".join(answers))
    return 0 if all(x not in ("-",) and not x[0].isupper() for x in answers) else 1

def blast(a):
    """Sends UDP at a fixed rate for a.seconds; the anchor echoes each datagram. Reports the rate
    of echoes that arrived during the sending window's second half (steady state, after the
    shaper's burst allowance), i.e. the throughput of the shaped forward path."""
    s = socket.socket(family(a.addr), socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect((a.addr, a.port))
    payload = b"x" * a.size
    wire = a.size + (48 if ":" in a.addr else 28)  # + IP/UDP headers: what HTB counts (plus L2)
    interval = a.size * 8 / (a.mbit * 1e6)
    sent = 0
    steady = 0
    start = time.monotonic()
    half = start + a.seconds / 2
    end = start + a.seconds
    next_send = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_send:
            try:
                s.send(payload)
                sent += 1
            except BlockingIOError:
                pass
            next_send += interval
            continue
        try:
            while True:
                s.recv(65535)
                if time.monotonic() >= half:
                    steady += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass
        time.sleep(min(0.0005, max(0.0, next_send - time.monotonic())))
    secs = end - half
    print("sent %.2f Mbit/s, delivered %.2f Mbit/s (IP bytes, steady state)" % (
        sent * wire * 8 / a.seconds / 1e6, steady * wire * 8 / secs / 1e6))
    return 0

def stream(a):
    """One established flow: the same UDP socket (same source port) or one TCP connection for
    the whole run. A request that gets no answer in time prints "-"; a TCP connection that
    breaks is not reopened (the flow is over)."""
    out = sys.stdout
    pending = b""   # TCP bytes received but not yet consumed (a raw buffer: a file object
                    # made by makefile() is unusable after one timeout)
    if a.tcp:
        s = socket.create_connection((a.addr, a.port), timeout=1.0)
    else:
        s = socket.socket(family(a.addr), socket.SOCK_DGRAM)
        s.connect((a.addr, a.port))
    s.settimeout(a.interval_ms / 1000.0)
    end = time.time() + a.seconds
    seq = 0
    broken = False
    while time.time() < end:
        t0 = time.time()
        answer = "-"
        if not broken:
            try:
                if a.tcp:
                    s.sendall(b"seq %d\n" % seq)
                    # Skip answers to earlier requests that arrived late (they say their seq).
                    deadline = time.time() + a.interval_ms / 1000.0
                    while answer == "-" and not broken:
                        while b"\n" in pending:
                            line, pending = pending.split(b"\n", 1)
                            parts = line.split()
                            if parts[-1:] == [str(seq).encode()]:
                                answer = parts[0].decode()
                                break
                        if answer != "-":
                            break
                        left = deadline - time.time()
                        if left <= 0:
                            break
                        s.settimeout(left)
                        try:
                            data = s.recv(4096)
                        except socket.timeout:
                            break
                        if not data:
                            broken = True
                        pending += data
                else:
                    s.send(b"seq %d" % seq)
                    while True:
                        data = s.recv(200)
                        parts = data.split(b" ")
                        if parts[-1] == str(seq).encode():
                            answer = parts[0].decode()
                            break
            except socket.timeout:
                pass
            except OSError:
                if a.tcp:
                    broken = True
        out.write("%d %s\n" % (int(t0 * 1000), answer))
        out.flush()
        seq += 1
        rest = a.interval_ms / 1000.0 - (time.time() - t0)
        if rest > 0:
            time.sleep(rest)
    return 0

def rtt(a):
    """Independent of the agent's STAMP code: plain UDP datagrams with a sequence number to an
    echo service, timed with the monotonic clock around send and receive."""
    import json, struct
    s = socket.socket(family(a.addr), socket.SOCK_DGRAM)
    if a.priority:
        major, minor = a.priority.split(":")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, int(major, 16) << 16 | int(minor, 16))
    s.connect((a.addr, a.port))
    s.settimeout(1.0)
    samples, lost, seq = [], 0, 0
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        seq += 1
        t0 = time.monotonic()
        s.send(b"rtt %d" % seq)
        try:
            while True:
                data = s.recv(200)
                if data.endswith(b" %d" % seq):
                    samples.append((time.monotonic() - t0) * 1000)
                    break
        except socket.timeout:
            lost += 1
        rest = a.interval_ms / 1000.0 - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
    samples.sort()
    n = len(samples)
    q = lambda p: samples[min(n - 1, int(p * n))] if n else None
    print(json.dumps({"n": n, "lost": lost, "median_ms": q(0.5), "p90_ms": q(0.9),
                      "mean_ms": sum(samples) / n if n else None, "min_ms": samples[0] if n else None}))
    return 0

def flood(a):
    s = socket.socket(family(a.addr), socket.SOCK_DGRAM)
    s.connect((a.addr, a.port))
    payload = b"f" * a.size
    interval = a.size * 8 / (a.mbit * 1e6)
    start = time.monotonic()
    next_send = start
    while True:
        now = time.monotonic()
        if now - start >= a.seconds:
            break
        if now >= next_send:
            try:
                s.send(payload)
            except OSError:
                pass
            next_send += interval
        else:
            time.sleep(min(0.0005, next_send - now))
    return 0

def seqstream(a):
    """One UDP flow (one socket: one conntrack entry) sending "seq N <epoch_us>" at a steady
    rate, paced on absolute times so the rate holds under load. Prints how many were sent."""
    s = socket.socket(family(a.addr), socket.SOCK_DGRAM)
    s.connect((a.addr, a.port))
    interval = 1.0 / a.rate
    start = time.monotonic()
    n = int(a.seconds * a.rate)
    sent = 0
    for i in range(n):
        target = start + i * interval
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        try:
            s.send(b"seq %d %d" % (i, time.time_ns() // 1000))
            sent += 1
        except OSError:
            pass
    print("sent %d" % sent)
    return 0

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
pp = sub.add_parser("probe"); pp.add_argument("addr"); pp.add_argument("port", type=int)
pp.add_argument("--count", type=int, default=3); pp.add_argument("--tcp", action="store_true"); pp.add_argument("--timeout", type=float, default=0.5)
pb = sub.add_parser("blast"); pb.add_argument("addr"); pb.add_argument("port", type=int)
pb.add_argument("--mbit", type=float, required=True); pb.add_argument("--seconds", type=float, default=2); pb.add_argument("--size", type=int, default=1200)
ps = sub.add_parser("stream"); ps.add_argument("addr"); ps.add_argument("port", type=int)
ps.add_argument("--seconds", type=float, required=True); ps.add_argument("--interval-ms", type=float, default=20); ps.add_argument("--tcp", action="store_true")
pr = sub.add_parser("rtt"); pr.add_argument("addr"); pr.add_argument("port", type=int)
pr.add_argument("--seconds", type=float, required=True); pr.add_argument("--interval-ms", type=float, default=10); pr.add_argument("--priority")
pf = sub.add_parser("flood"); pf.add_argument("addr"); pf.add_argument("port", type=int)
pf.add_argument("--mbit", type=float, required=True); pf.add_argument("--seconds", type=float, required=True); pf.add_argument("--size", type=int, default=1200)
pq = sub.add_parser("seqstream"); pq.add_argument("addr"); pq.add_argument("port", type=int)
pq.add_argument("--rate", type=float, default=1000); pq.add_argument("--seconds", type=float, required=True)
a = p.parse_args()
sys.exit({"probe": probe, "blast": blast, "stream": stream, "seqstream": seqstream, "rtt": rtt, "flood": flood}[a.cmd](a))
