#!/usr/bin/env python3
"""How evenly each steering mode spreads concurrent connections over workers.

For each mode, starts corelane-http with --workers W (pinned round the CPUs:
0,1,0,1 on two cores), opens N connections and keeps them open (half from a
thread pinned to CPU 0, half from CPU 1), then reads the per-worker accepted
counts and the eBPF program's counters from /metrics. Prints one table row per
mode: the counts, max/mean, fallbacks and migrations.

    cargo build --release -p corelane-http
    python3 tools/measure/steering_spread.py [-n 10000] [--workers 4] [--runs 1] [--bin target/release/corelane-http]

With --runs R, each mode runs R times (a fresh server each time) and its row
shows the worst run's counts, the worst and the best max/mean.

eBPF modes need root (CAP_BPF); the script says so and stops if the server
fell back to another mode.
"""
import argparse, os, re, resource, signal, socket, subprocess, sys, threading, time

MODES = ["kernel", "classic-cpu", "hash", "cpu", "round-robin", "least-loaded"]


def start(binary, workers, mode):
    p = subprocess.Popen(
        [binary, "--addr", "127.0.0.1:0", "--workers", str(workers), "--steering", mode],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=dict(os.environ, RUST_LOG="info"))
    for line in p.stderr:
        if "corelane listening" in line:
            addr = re.search(r"addr=(\S+)", line).group(1)
            got = re.search(r"steering=(\S+)", line).group(1)
            host, port = addr.rsplit(":", 1)
            # Keep draining stderr so the server never blocks on it.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, (host, int(port)), got
    raise SystemExit(f"{binary} exited before listening (mode {mode})")


def connect(addr, n, cpu, out):
    os.sched_setaffinity(0, {cpu})
    for _ in range(n):
        s = socket.create_connection(addr)
        out.append(s)


def metrics(addr):
    s = socket.create_connection(addr)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return data.decode()


def series(text, name):
    return {m.group(1): int(m.group(2))
            for m in re.finditer(name + r'\{worker="(\d+)"\} (\d+)', text)}


def scalar(text, name):
    m = re.search(r"^" + name + r" (\d+)$", text, re.M)
    return int(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--bin", default="target/release/corelane-http")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.n + 100 > hard:
        raise SystemExit(f"needs {a.n + 100} descriptors, the hard limit is {hard}")
    cpus = sorted(os.sched_getaffinity(0))
    print(f"{a.n} concurrent connections over {a.workers} workers; clients on CPUs {cpus[0]} and {cpus[-1]}")
    print(f"{a.runs} run(s) per mode")
    print("| mode | per worker (worst run) | max/mean worst | best | fallbacks | migrated |")
    print("|---|---|---|---|---|---|")
    for mode in a.modes.split(","):
        runs = []
        for _ in range(a.runs):
            r = one_run(a, mode)
            if r is None:
                print(f"| {mode} | fell back (eBPF needs root) | | | | |")
                break
            runs.append(r)
        if runs:
            worst = max(runs, key=lambda r: r[1])
            best = min(r[1] for r in runs)
            counts, ratio, fb, mg = worst
            print(f"| {mode} | {counts} | {ratio:.3f} | {best:.3f} | "
                  f"{'-' if fb is None else fb} | {'-' if mg is None else mg} |", flush=True)


def one_run(a, mode):
    """One server, N connections; (counts, max/mean, fallbacks, migrated), or None if it fell back."""
    cpus = sorted(os.sched_getaffinity(0))
    p, addr, got = start(a.bin, a.workers, mode)
    try:
        if got != mode:
            return None
        socks = []
        halves = [a.n // 2, a.n - a.n // 2]
        for cpu, n in zip([cpus[0], cpus[-1]], halves):
            t = threading.Thread(target=connect, args=(addr, n, cpu, socks))
            t.start()
            t.join()
        deadline = time.time() + 20
        while True:
            text = metrics(addr)
            acc = series(text, "corelane_connections_accepted_total")
            # The scrapes' own connections count too.
            if sum(acc.values()) >= a.n or time.time() > deadline:
                break
            time.sleep(0.2)
        # The counts include the scrapes' own connections (one or two).
        counts = [acc.get(str(w), 0) for w in range(a.workers)]
        mean = sum(counts) / len(counts)
        fb = scalar(text, "corelane_steering_fallbacks_total")
        mg = scalar(text, "corelane_steering_migrated_total")
        for s in socks:
            s.close()
        return counts, max(counts) / mean, fb, mg
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    main()
