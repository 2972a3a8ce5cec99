#!/usr/bin/env bash
# User-space instructions per proxied request of corelane-proxy under
# callgrind (deterministic to about 1%, unlike CPU time here): one proxy
# worker in front of the yardstick, corelane-loadtest with 16 connections,
# counters zeroed after a warm-up, total divided by the requests answered.
#
#   tools/measure/proxy_instructions.sh [PROXY_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }
cargo build --release -q -p corelane-proxy -p corelane-benches -p corelane-loadtest
bin=${1:-target/release/corelane-proxy}
up=$((19600 + RANDOM % 100)); port=$((up + 100))
dir=$(mktemp -d)
taskset -c 0 target/release/yardstick --addr 127.0.0.1:$up >/dev/null 2>&1 & ys=$!
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" --addr 127.0.0.1:$port \
  --workers 1 --steering kernel --upstream 127.0.0.1:$up >/dev/null 2>&1 & vg=$!
trap 'kill $vg $ys 2>/dev/null || true; [ -n "${KEEP:-}" ] && cp "$dir"/cg.out.1 "$KEEP"; rm -rf "$dir"' EXIT
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port)).close()" 2>/dev/null && break; sleep 0.2; done
load() { taskset -c 1 target/release/corelane-loadtest run "http://127.0.0.1:$port/plaintext" --connections 16 --duration "$1" --json 2>/dev/null; }
load 2s >/dev/null
callgrind_control -z $vg >/dev/null
n=$(load 4s | python3 -c 'import json,sys; print(json.load(sys.stdin)["report"]["requests"])')
callgrind_control -d $vg >/dev/null
sleep 1
total=$(callgrind_annotate "$dir"/cg.out.1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
python3 -c "print(f'$bin: {$total/$n:.1f} instructions per proxied request ({$n} requests)')"
