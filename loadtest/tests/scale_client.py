#!/usr/bin/env python3
"""Client half of the scale system test (loadtest/tests/scale.rs).

    scale_client.py HOST PORT N SRC_IP

Opens N keep-alive connections from SRC_IP (a 127.0.0.x address, so many
processes do not run out of ports), makes one request on each and prints
`READY <answered>`; then, for each `go` line on stdin, makes one more request
on every connection and prints `DONE <answered>`. Exits (closing everything)
at the end of stdin.
"""
import resource, selectors, socket, sys, time

REQUEST = b"GET /plaintext HTTP/1.1\r\nHost: scale\r\n\r\n"
END = b"Hello, World!"


def one_round(socks, timeout=60.0):
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        s.sendall(REQUEST)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    answered = 0
    deadline = time.time() + timeout
    while bufs and time.time() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(s)
                del bufs[s]
                continue
            bufs[s] += data
            if bufs[s].endswith(END):
                answered += 1
                sel.unregister(s)
                del bufs[s]
    sel.close()
    return answered


def main():
    host, port, n, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((src, 0))
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    print("READY", one_round(socks), flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            print("DONE", one_round(socks), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
