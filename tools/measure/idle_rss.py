#!/usr/bin/env python3
"""RSS growth of a server per idle keep-alive connection.

Opens N connections to HOST:PORT, makes one round trip on each (so each has
been served once and is now an idle keep-alive connection), waits, and reads
the server's VmRSS from /proc before and after.

    python3 tools/measure/idle_rss.py --pid PID --port 7000 -n 10000 [--payload ping]

Run the client on another CPU than the server (taskset -c 1 ...). Needs
`ulimit -n` above N. Prints one line: connections, RSS before/after (KiB), and
bytes per connection.
"""
import argparse, os, selectors, socket, sys, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--payload", default="ping\n")
    ap.add_argument("--request", default=None, help="send this instead (e.g. an HTTP request)")
    ap.add_argument("--settle", type=float, default=2.0)
    a = ap.parse_args()
    msg = (a.request or a.payload).encode().decode("unicode_escape").encode()
    time.sleep(0.5)
    before = rss_kib(a.pid)
    socks = []
    for i in range(a.n):
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((a.host, a.port))
        s.sendall(msg)
        got = s.recv(65536)
        if not got:
            sys.exit(f"connection {i} closed by the server")
        socks.append(s)
    time.sleep(a.settle)
    after = rss_kib(a.pid)
    per = (after - before) * 1024 / a.n
    print(f"connections={a.n} rss_before_kib={before} rss_after_kib={after} bytes_per_conn={per:.0f}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
