#!/usr/bin/env bash
# corelane-http vs. the raw-mio yardstick, measured in one run. Two
# yardsticks: `yardstick` finds request ends with SIMD memmem (the strictest
# floor), `yardstick-bytes` with a byte-at-a-time scan (as DESIGN.md
# describes it); ratios are to the SIMD one.
#
#   tools/measure/http_vs_yardstick.sh [rounds] [seconds]
#   BASELINE=/tmp/old/corelane-http tools/measure/http_vs_yardstick.sh 5 8
#
# With BASELINE, another corelane-http binary (an earlier build) runs in the
# same rounds, and the table adds each server's CPU ratio to it: the check
# that a change left the cost per request where it was.
#
# Each server runs one worker pinned to CPU 0; wrk -t1 -c64 runs pinned to
# CPU 1 with TechEmpower's headers, plain and pipelined 16 deep
# (loadtest/pipeline.lua). Rounds alternate servers (A B A B) so drift hits
# both alike. Reports req/s and server CPU µs per request (utime+stime from
# /proc ÷ requests wrk counted), median over rounds, and the ratio to the
# yardstick.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-10}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk"; exit 1; }
cargo build --release -q -p corelane-http -p corelane-benches
tck=$(getconf CLK_TCK)
out=target/http-vs-yardstick; mkdir -p "$out"; results=$out/results.txt; : > "$results"
H=(-H 'Host: localhost' -H 'Accept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,application/xml;q=0.8,*/*;q=0.7' -H 'Connection: keep-alive')
port=8200
for r in $(seq 1 "$rounds"); do
  for mode in ${MODES:-plain pipelined}; do
    for server in yardstick yardstick-bytes corelane-http ${BASELINE:+baseline}; do
      port=$((port + 1))
      if [ $server = yardstick ]; then
        taskset -c 0 target/release/yardstick --addr 127.0.0.1:$port 2>/dev/null & pid=$!
      elif [ $server = yardstick-bytes ]; then
        taskset -c 0 target/release/yardstick --scan bytes --addr 127.0.0.1:$port 2>/dev/null & pid=$!
      elif [ $server = baseline ]; then
        taskset -c 0 "$BASELINE" --addr 127.0.0.1:$port --workers 1 2>/dev/null & pid=$!
      else
        taskset -c 0 target/release/corelane-http --addr 127.0.0.1:$port --workers 1 2>/dev/null & pid=$!
      fi
      sleep 0.3
      extra=(); [ $mode = pipelined ] && extra=(-s loadtest/pipeline.lua)
      read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
      wout=$(taskset -c 1 wrk -t1 -c64 -d${secs}s "${H[@]}" "${extra[@]}" http://127.0.0.1:$port/plaintext ${extra:+-- 16})
      read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
      kill -TERM $pid; wait $pid 2>/dev/null || true
      reqs=$(awk '/requests in/ {print $1}' <<<"$wout")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$wout")
      errs=$(grep -E "Non-2xx|Socket errors" <<<"$wout" || true)
      cpu_us=$(python3 -c "print(((($u1-$u0)+($s1-$s0))/$tck)*1e6/$reqs)")
      echo "$r $mode $server $rps $cpu_us $errs" | tee -a "$results"
    done
  done
done
python3 - "$results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
by, per_round = {}, {}
for row in rows:
    r, mode, server, rps, cpu = row[:5]
    by.setdefault((mode, server), []).append((float(rps), float(cpu)))
    per_round.setdefault((mode, r), {})[server] = float(cpu)
base = any(s == "baseline" for (_, s) in by)
print("| mode | server | req/s | server CPU µs/request | CPU vs SIMD yardstick | CPU vs byte-scan yardstick |" + (" CPU vs baseline (min–max) |" if base else ""))
print("|---|---|---|---|---|---|" + ("---|" if base else ""))
for mode in [m for m in ("plain", "pipelined") if (m, "yardstick") in by]:
    for server in ("yardstick", "yardstick-bytes", "corelane-http") + (("baseline",) if base else ()):
        xs = by[(mode, server)]
        rps = statistics.median(x[0] for x in xs)
        cpu = statistics.median(x[1] for x in xs)
        # Ratios are taken within each round, then the median over rounds.
        simd = [v[server] / v["yardstick"] for (m, _), v in per_round.items() if m == mode]
        byte = [v[server] / v["yardstick-bytes"] for (m, _), v in per_round.items() if m == mode]
        row = f"| {mode} | {server} | {rps:,.0f} | {cpu:.3f} | {statistics.median(simd):.3f} | {statistics.median(byte):.3f} |"
        if base:
            rb = [v[server] / v["baseline"] for (m, _), v in per_round.items() if m == mode]
            row += f" {statistics.median(rb):.3f} ({min(rb):.3f}–{max(rb):.3f}) |"
        print(row)
PY
