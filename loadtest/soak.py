#!/usr/bin/env python3
"""Soak: mixed load on corelane-http for a long time, sampling the server.

Run through loadtest/soak.sh (which builds the binaries). For SECONDS
(default 600) it runs at once, at moderate rates:

  - keep-alive requests, open loop, 3,000 req/s (corelane-loadtest run --rate)
  - a new connection per request, 500/s (corelane-loadtest run --close --rate)
  - slowloris: 200 connections trickling a request head, 1 byte/s each
  - hostile bytes: 50 connections/s sending mutated fuzz-corpus requests
  - slow readers: 50 connections pipelining without reading, renewed every 30 s
  - a stalled worker: GET /_test/stall/20 every 5 s

and samples the server's RSS, open descriptors and CPU every second into
OUT/soak.csv, draws OUT/soak.svg, and writes OUT/summary.md with the drift
(last minute against the first minute after warm-up) and the load errors.
"""
import json, os, random, re, signal, socket, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HTTP = os.path.join(ROOT, "target/release/corelane-http")
LOADTEST = os.path.join(ROOT, "target/release/corelane-loadtest")
CORPUS = os.path.join(ROOT, "examples/http/fuzz/corpus/request")


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        after = f.read().rsplit(")", 1)[1].split()
    cpu = (int(after[11]) + int(after[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, cpu


def slowloris(addr, stop):
    head = b"GET /plaintext HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    conns = []
    while not stop.is_set():
        while len(conns) < 200:
            try:
                s = socket.create_connection(addr, timeout=2)
                s.setblocking(False)
                conns.append([s, 0])
            except OSError:
                break
        alive = []
        for c in conns:
            try:
                c[0].send(head[c[1] % len(head):c[1] % len(head) + 1])
                c[1] += 1
                alive.append(c)
            except OSError:
                c[0].close()
        conns = alive
        time.sleep(1)
    for c in conns:
        c[0].close()


def hostile(addr, stop):
    seeds = [open(os.path.join(CORPUS, f), "rb").read() for f in sorted(os.listdir(CORPUS))]
    rng = random.Random(7)
    while not stop.is_set():
        start = time.time()
        for _ in range(50):
            m = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(m) + 1)
                op = rng.randrange(3)
                if op == 0 and i < len(m):
                    m[i] = rng.randrange(256)
                elif op == 1:
                    m.insert(i, rng.choice(b"\r\n: \0%xG09"))
                elif i < len(m):
                    del m[i]
            try:
                s = socket.create_connection(addr, timeout=2)
                s.sendall(bytes(m))
                s.close()
            except OSError:
                pass
        time.sleep(max(0, 1 - (time.time() - start)))


def slow_readers(addr, stop):
    req = b"GET /plaintext HTTP/1.1\r\nHost: soak\r\n\r\n" * 1600
    while not stop.is_set():
        conns = []
        for _ in range(50):
            try:
                s = socket.create_connection(addr, timeout=2)
                s.setblocking(False)
                try:
                    s.send(req)
                except BlockingIOError:
                    pass
                conns.append(s)
            except OSError:
                pass
        stop.wait(30)
        for s in conns:
            s.close()


def staller(addr, stop):
    while not stop.wait(5):
        try:
            s = socket.create_connection(addr, timeout=5)
            s.sendall(b"GET /_test/stall/20 HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            while s.recv(4096):
                pass
            s.close()
        except OSError:
            pass


def chart(rows, path):
    w, h, pad = 900, 180, 40
    series = [("RSS MiB", [r[1] / 1024 for r in rows], "#1f77b4"),
              ("open descriptors", [r[2] for r in rows], "#2ca02c"),
              ("CPU % of one core", [r[3] for r in rows], "#d62728")]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * 3}" font-family="sans-serif" font-size="12">']
    t_max = max(r[0] for r in rows) or 1
    for k, (name, ys, color) in enumerate(series):
        y0 = k * h
        top = max(ys) * 1.1 or 1
        pts = " ".join(f"{pad + (w - 2 * pad) * r[0] / t_max:.1f},{y0 + h - pad - (h - 2 * pad) * y / top:.1f}"
                       for r, y in zip(rows, ys))
        out.append(f'<text x="{pad}" y="{y0 + 20}">{name} (max {max(ys):.1f})</text>')
        out.append(f'<line x1="{pad}" y1="{y0 + h - pad}" x2="{w - pad}" y2="{y0 + h - pad}" stroke="#999"/>')
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        out.append(f'<text x="{w - pad}" y="{y0 + h - pad + 15}" text-anchor="end">{t_max:.0f} s</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs/soak")
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "server.log"), "w")
    server = subprocess.Popen([HTTP, "--addr", "127.0.0.1:0", "--workers", "2", "--header-timeout", "3s",
                               "--idle-timeout", "5s", "--test-routes"], stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        log.write(line)
        if "corelane listening" in line:
            addr = re.search(r"addr=(\S+)", line).group(1)
            break
    threading.Thread(target=lambda: [log.write(l) for l in server.stderr], daemon=True).start()
    host, port = addr.rsplit(":", 1)
    target = (host, int(port))
    url = f"http://{addr}/plaintext"
    loads = {
        "keep-alive 3000/s": subprocess.Popen([LOADTEST, "run", url, "--rate", "3000", "--connections", "32",
                                               "--duration", f"{seconds}s", "--json"], stdout=subprocess.PIPE, text=True),
        "connection per request 500/s": subprocess.Popen([LOADTEST, "run", url, "--close", "--rate", "500",
                                                          "--connections", "8", "--duration", f"{seconds}s", "--json"],
                                                         stdout=subprocess.PIPE, text=True),
    }
    stop = threading.Event()
    chaos = [threading.Thread(target=f, args=(target, stop), daemon=True)
             for f in (slowloris, hostile, slow_readers, staller)]
    for t in chaos:
        t.start()
    rows = []
    start = time.time()
    prev_cpu = sample(server.pid)[2]
    with open(os.path.join(out, "soak.csv"), "w") as csv:
        csv.write("seconds,rss_kib,fds,cpu_percent\n")
        while time.time() - start < seconds:
            time.sleep(1)
            rss, fds, cpu = sample(server.pid)
            row = (round(time.time() - start), rss, fds, (cpu - prev_cpu) * 100)
            prev_cpu = cpu
            rows.append(row)
            csv.write("%d,%d,%d,%.1f\n" % row)
            csv.flush()
    stop.set()
    results = {name: json.loads(p.communicate()[0])["report"] for name, p in loads.items()}
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=30)
    chart(rows, os.path.join(out, "soak.svg"))
    warm = [r for r in rows if 30 <= r[0] < 90] or rows[:60]
    last = rows[-60:]
    avg = lambda rs, i: sum(r[i] for r in rs) / len(rs)
    lines = [f"# Soak: {seconds} s of mixed load on corelane-http (2 workers)", "",
             "Keep-alive requests 3,000/s, a connection per request 500/s, 200 slowloris connections, "
             "50 hostile connections/s, 50 slow readers renewed every 30 s, a 20 ms worker stall every 5 s.", "",
             "| | first minute after warm-up (30–90 s) | last minute | drift |", "|---|---|---|---|",
             "| RSS (MiB) | %.1f | %.1f | %+.1f |" % (avg(warm, 1) / 1024, avg(last, 1) / 1024, (avg(last, 1) - avg(warm, 1)) / 1024),
             "| open descriptors | %.0f | %.0f | %+.0f |" % (avg(warm, 2), avg(last, 2), avg(last, 2) - avg(warm, 2)),
             "| CPU (%% of one core) | %.1f | %.1f | |" % (avg(warm, 3), avg(last, 3)), ""]
    for name, r in results.items():
        lat = r["latency_us"]
        lines.append(f"- {name}: {r['requests']} requests, errors {r['errors']}, p50 {lat['p50']} µs, "
                     f"p99 {lat['p99']} µs, p99.9 {lat['p999']} µs")
    lines += ["", f"Server exit code after SIGTERM: {code}.", "", "![soak](soak.svg)", ""]
    open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
