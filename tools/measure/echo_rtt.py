#!/usr/bin/env python3
"""Ping-pong load for syscall counting: C connections, M round trips each.

    python3 tools/measure/echo_rtt.py --port 7000 -c 8 -m 5000
"""
import argparse, socket, time

ap = argparse.ArgumentParser()
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("-c", type=int, default=8)
ap.add_argument("-m", type=int, default=5000)
ap.add_argument("--size", type=int, default=64)
a = ap.parse_args()
socks = [socket.create_connection((a.host, a.port)) for _ in range(a.c)]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"x" * (a.size - 1) + b"\n"
t0 = time.time()
for _ in range(a.m):
    for s in socks:
        s.sendall(msg)
    for s in socks:
        got = 0
        while got < len(msg):
            got += len(s.recv(65536))
dt = time.time() - t0
for s in socks:
    s.close()
print(f"messages={a.c * a.m} seconds={dt:.2f}")
