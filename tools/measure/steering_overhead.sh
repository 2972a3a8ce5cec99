#!/usr/bin/env bash
# Server CPU per request with eBPF least-loaded steering vs the kernel's hash,
# one worker pinned to CPU 0, wrk -t1 -c64 on CPU 1, ROUNDS paired rounds.
#   cargo build --release -p corelane-http && tools/measure/steering_overhead.sh [ROUNDS] [SECONDS]
# Needs root (CAP_BPF) for the eBPF side; prints round, mode, requests,
# µs of server CPU per request.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; secs=${2:-6}; port=18200
for round in $(seq "$rounds"); do
  for mode in least-loaded kernel; do
    port=$((port + 1))
    taskset -c 0 target/release/corelane-http --addr 127.0.0.1:$port --workers 1 --steering $mode 2>/dev/null &
    pid=$!
    sleep 0.5
    t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    reqs=$(taskset -c 1 wrk -t1 -c64 -d"${secs}"s http://127.0.0.1:$port/plaintext | awk '/requests in/ {print $1}')
    t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$round $mode $reqs $(python3 -c "print(round(($t1 - $t0) / $(getconf CLK_TCK) * 1e6 / $reqs, 3))")"
  done
done
