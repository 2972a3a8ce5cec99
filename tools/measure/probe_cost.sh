#!/usr/bin/env bash
# Cost of the USDT probes, as ratios measured in one run.
#
#   tools/measure/probe_cost.sh [rounds] [seconds]
#
# Builds corelane-echo twice (probes compiled in, and compiled out with
# --no-default-features), then alternates three variants round by round:
#   off     probes compiled out
#   on      probes compiled in, nobody tracing
#   traced  probes compiled in, tools/top.bt attached (needs root + bpftrace)
# Each round: the server (1 worker) pinned to CPU 0, echo-load pinned to CPU 1
# for the given seconds. Reports messages/s and server CPU µs per message
# (utime+stime from /proc ÷ messages), median over rounds, and ratios to off.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
secs=${2:-5}
out=target/probe-cost
mkdir -p "$out"
cargo build --release -q -p corelane-benches --bin echo-load
cargo build --release -q -p corelane-echo --no-default-features
cp target/release/corelane-echo "$out/echo-off"
cargo build --release -q -p corelane-echo
cp target/release/corelane-echo "$out/echo-on"
tck=$(getconf CLK_TCK)
variants=${VARIANTS:-"off on"}
if [ -z "${VARIANTS:-}" ] && [ "$(id -u)" = 0 ] && command -v bpftrace >/dev/null; then variants="off on traced"; fi

port=7400
results="$out/results.txt"
: > "$results"
for r in $(seq 1 "$rounds"); do
  for v in $variants; do
    port=$((port + 1))
    bin="$out/echo-on"; [ "$v" = off ] && bin="$out/echo-off"
    taskset -c 0 "$bin" --addr 127.0.0.1:$port --workers 1 2>/dev/null &
    pid=$!
    sleep 0.3
    bt=""
    if [ "$v" = traced ]; then
      bpftrace -p $pid tools/top.bt >/dev/null 2>&1 &
      bt=$!
      sleep 2
    fi
    read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
    line=$(taskset -c 1 target/release/echo-load --addr 127.0.0.1:$port --connections 32 --depth 1 --duration ${secs}s)
    read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
    [ -n "$bt" ] && kill -INT $bt && wait $bt 2>/dev/null || true
    kill -INT $pid; wait $pid 2>/dev/null || true
    msgs=$(sed -E 's/.*messages=([0-9]+).*/\1/' <<<"$line")
    rate=$(sed -E 's/.*rate=([0-9]+).*/\1/' <<<"$line")
    cpu_us=$(python3 -c "print(((($u1-$u0)+($s1-$s0))/$tck)*1e6/$msgs)")
    echo "$r $v $rate $cpu_us" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, v, rate, cpu in rows:
    by.setdefault(v, []).append((float(rate), float(cpu)))
base_rate = statistics.median(x[0] for x in by["off"])
base_cpu = statistics.median(x[1] for x in by["off"])
print(f"{'variant':8} {'msgs/s':>10} {'cpu us/msg':>11} {'rate ratio':>11} {'cpu ratio':>10}")
for v, xs in by.items():
    rate = statistics.median(x[0] for x in xs)
    cpu = statistics.median(x[1] for x in xs)
    print(f"{v:8} {rate:10.0f} {cpu:11.3f} {rate/base_rate:11.3f} {cpu/base_cpu:10.3f}")
PY
