#!/usr/bin/env python3
"""An execution anchor's stand-in service for the lab: answers UDP datagrams and TCP lines on a
port with "<anchor-id> <payload>", on IPv4 and IPv6, so a client can see which anchor served it."""
import os, signal, socket, sys, threading

# Run as a daemon: do not hold on to file descriptors (pipes) inherited from whoever started us,
# and let SIGTERM end us even if the starter (a test process) had it blocked.
os.closerange(3, 1024)
signal.pthread_sigmask(signal.SIG_SETMASK, [])

anchor, port = sys.argv[1], int(sys.argv[2])

def udp(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(anchor.encode() + b" " + data, peer)

def tcp_client(c):
    with c:
        f = c.makefile("rwb", buffering=0)
        for line in f:
            f.write(anchor.encode() + b" " + line)

def tcp(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    s.listen(128)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_client, args=(c,), daemon=True).start()

threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in
           [(udp, (socket.AF_INET, "0.0.0.0")), (udp, (socket.AF_INET6, "::")),
            (tcp, (socket.AF_INET, "0.0.0.0")), (tcp, (socket.AF_INET6, "::"))]]
for t in threads:
    t.start()
for t in threads:
    t.join()
