#!/usr/bin/env python3
"""A receiver for sequence-numbered UDP streams (lab only): logs "<epoch_us> <seq>" for every
datagram "seq N ..." it gets, so loss, duplicates and gaps can be computed across anchors.
  udp-sink.py PORT OUTFILE     (IPv4 and IPv6, runs until killed)"""
import os, socket, sys, threading
os.closerange(3, 1024)
port, path = int(sys.argv[1]), sys.argv[2]
out = open(path, "a", buffering=1)
lock = threading.Lock()

def serve(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((addr, port))
    import time
    while True:
        data = s.recv(2048)
        t = time.time_ns() // 1000
        parts = data.split(b" ")
        if len(parts) >= 2 and parts[0] == b"seq":
            with lock:
                out.write("%d %s\n" % (t, parts[1].decode()))

threads = [threading.Thread(target=serve, args=a, daemon=True) for a in [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]]
for t in threads: t.start()
for t in threads: t.join()
