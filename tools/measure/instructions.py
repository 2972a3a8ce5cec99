#!/usr/bin/env python3
"""User-space instructions per request under callgrind, for echo and HTTP.

Instruction counts are deterministic to about 1% where CPU time on this
noisy 2-core machine swings ±15%: they are the figure to optimise, compare
builds with, and guard in CI.

    cargo build --release -p corelane-http -p corelane-echo
    python3 tools/measure/instructions.py                     # the table
    python3 tools/measure/instructions.py --runs 10           # worst and best of ten
    python3 tools/measure/instructions.py --check .ci/instruction-budgets.json

The method (as DESIGN.md and issue 14 describe it): the server runs with one
worker under `valgrind --tool=callgrind`, is warmed for 2 s, its counters are
zeroed (`callgrind_control -z`), the load runs, the counters are dumped
(`callgrind_control -d`), and the dump's total is divided by the requests the
client counted. Loads:

| row | load |
|---|---|
| echo | `tools/measure/echo_rtt.py -c 4`: 4 connections, one 64-byte message in flight on each (per message) |
| http plain | `wrk -t1 -c16 -s tools/measure/plaintext.lua -- keep-alive`: TechEmpower's plaintext request, its headers in TechEmpower's order (Host, Accept, Connection) |
| http pipelined-16 | `wrk -t1 -c16 -s loadtest/pipeline.lua -- 16` (requests carrying only Host) |
| http connection per request | `wrk -t1 -c16 -s tools/measure/plaintext.lua -- close`: every request on a new connection (per connection) |

The HTTP server scans request heads 32 bytes at a time where the CPU has
AVX2 (16 with SSE2 elsewhere, or with `--no-avx2`, which this tool passes
on). Each HTTP row's budget is for the scan the run used: `budget` with
AVX2, `budget_sse2` without; the table says which.

Under valgrind the server is the slow side by far, so every loop turn finds
all 16 (or 4) connections ready and the counts barely move with the
machine's load. With --check, each figure must be within its budget times
(1 + margin); the budgets file says why each margin is what it is.
"""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The TechEmpower plaintext request, headers in a fixed order (wrk's `-H`
# headers change order from run to run); `-- keep-alive` or `-- close`.
PLAINTEXT = "tools/measure/plaintext.lua"
ROWS = ["echo", "http_plain", "http_pipelined_16", "http_connection_per_request"]
LABELS = {
    "echo": "echo, per message",
    "http_plain": "HTTP plain, per request",
    "http_pipelined_16": "HTTP pipelined-16, per request",
    "http_connection_per_request": "HTTP connection per request, per connection",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited under valgrind (status {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on port {port} within 30 s under valgrind")


def wrk(port, script, script_arg, secs):
    out = subprocess.run(["wrk", f"-d{secs}s", "-t1", "-c16", "-s", script,
                          f"http://127.0.0.1:{port}/plaintext", "--", script_arg],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m:
        sys.exit(f"could not read wrk's request count:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        sys.exit(f"wrk saw errors, the count would be wrong:\n{out}")
    return int(m.group(1))


def echo_load(port, secs):
    # echo_rtt.py sends -m messages per connection; size the run to `secs`.
    messages = max(200, 400 * secs)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools/measure/echo_rtt.py"),
                    "--port", str(port), "-c", "4", "-m", str(messages)],
                   check=True, capture_output=True)
    return 4 * messages


def load(row, port, secs):
    if row == "echo":
        return echo_load(port, secs)
    if row == "http_plain":
        return wrk(port, PLAINTEXT, "keep-alive", secs)
    if row == "http_pipelined_16":
        return wrk(port, "loadtest/pipeline.lua", "16", secs)
    if row == "http_connection_per_request":
        return wrk(port, PLAINTEXT, "close", secs)
    raise ValueError(row)


def cpu_has_avx2():
    """Whether this CPU has AVX2 (as the server detects it; valgrind passes
    it through)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


def measure(row, binary, secs, keep=None, extra=()):
    """Instructions per request (message, connection) for one row; with
    `keep`, the callgrind dump is copied there for `callgrind_annotate`;
    `extra`: more arguments for the server."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", *os.environ.get("CALLGRIND_ARGS", "").split(), f"--callgrind-out-file={out}", binary,
             "--addr", f"127.0.0.1:{port}", "--workers", "1", "--steering", "kernel", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, proc, binary)
            load(row, port, 2)  # warm: pools, tables and caches at their size
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True)
            requests = load(row, port, secs)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        dumps = sorted((f for f in os.listdir(d) if f.startswith("cg.out.")),
                       key=lambda f: os.path.getmtime(os.path.join(d, f)))
        if not dumps:
            sys.exit(f"callgrind wrote no dump for {row}")
        if keep:
            import shutil
            shutil.copy(os.path.join(d, dumps[-1]), os.path.join(keep, f"{row}.callgrind"))
        with open(os.path.join(d, dumps[-1]), errors="replace") as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1]) / requests, requests
    sys.exit(f"no total in the callgrind dump for {row}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--http", default=os.path.join(ROOT, "target/release/corelane-http"))
    ap.add_argument("--echo", default=os.path.join(ROOT, "target/release/corelane-echo"))
    ap.add_argument("--secs", type=int, default=5, help="seconds of load per row (default 5)")
    ap.add_argument("--runs", type=int, default=1, help="measure each row this many times")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    ap.add_argument("--check", metavar="BUDGETS", help="fail if a figure is over its budget")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--keep", metavar="DIR", help="keep each row's callgrind dump in DIR")
    ap.add_argument("--no-avx2", action="store_true",
                    help="HTTP server scans heads 16 bytes at a time even with AVX2")
    args = ap.parse_args()
    wide = cpu_has_avx2() and not args.no_avx2
    scan = "AVX2, 32 bytes" if wide else "SSE2, 16 bytes"
    print(f"HTTP head scan: {scan} at a time", file=sys.stderr)
    for tool in ["valgrind", "callgrind_control", "wrk"]:
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"{tool} is not installed (apt-get install valgrind wrk)")
    budgets = None
    if args.check:
        with open(args.check) as f:
            budgets = json.load(f)
    rows = [r for r in args.rows.split(",") if r]
    results = {}
    for row in rows:
        binary = args.echo if row == "echo" else args.http
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} is missing: cargo build --release -p corelane-http -p corelane-echo")
        extra = ["--no-avx2"] if args.no_avx2 and row != "echo" else []
        figures = [measure(row, binary, args.secs, args.keep, extra) for _ in range(args.runs)]
        results[row] = {"scan": "echo" if row == "echo" else scan,
                        "per_request": [round(f, 1) for f, _ in figures],
                        "requests": [n for _, n in figures]}
        print(f"{row}: {', '.join(f'{f:,.1f}' for f, _ in figures)}", file=sys.stderr)
    print("| what | instructions | runs (worst, best) |" + (" budget | limit |" if budgets else ""))
    print("|---|---|---|" + ("---|---|" if budgets else ""))
    failed = []
    for row in rows:
        figs = results[row]["per_request"]
        label = LABELS[row] if row == "echo" else f"{LABELS[row]} ({scan.split(',')[0]})"
        line = f"| {label} | {figs[0]:,.1f} | {len(figs)} ({max(figs):,.1f}, {min(figs):,.1f}) |"
        if budgets:
            entry = budgets["rows"][row]
            budget = entry["budget"] if wide or row == "echo" else entry.get("budget_sse2", entry["budget"])
            margin = entry["margin"]
            limit = budget * (1 + margin)
            line += f" {budget:,} | {limit:,.0f} (+{margin:.0%}) |"
            if max(figs) > limit:
                failed.append(f"{label}: {max(figs):,.1f} instructions, over the limit "
                              f"{limit:,.0f} ({budget:,} + {margin:.0%})")
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if failed:
        print("\ninstruction budgets exceeded:\n  " + "\n  ".join(failed), file=sys.stderr)
        print("If the cost is deliberate, raise the budget in the same commit and say why.",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
