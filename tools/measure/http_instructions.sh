#!/usr/bin/env bash
# User-space instructions per HTTP request under callgrind, plain and
# pipelined 16 deep, for each corelane-http binary given (default: the
# release build). Instruction counts are deterministic to about 1%, unlike
# CPU time on this noisy 2-core machine: the figure to compare builds with.
#
#   tools/measure/http_instructions.sh [BINARY...]
#   SECS=10 tools/measure/http_instructions.sh /tmp/old/corelane-http target/release/corelane-http
#
# As DESIGN.md describes: one worker under valgrind, warmed with wrk, then
# `callgrind_control -z`, `wrk -t1 -c16`, `callgrind_control -d`, and the
# dump's total divided by the requests wrk counted. Plain requests carry
# TechEmpower's headers; pipelined ones (loadtest/pipeline.lua) only Host.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${SECS:-5}
for tool in valgrind callgrind_control wrk; do
  command -v $tool >/dev/null || { echo "$tool is not installed (apt-get install valgrind wrk)"; exit 1; }
done
if [ $# -eq 0 ]; then
  cargo build --release -q -p corelane-http
  set -- target/release/corelane-http
fi
H=(-H 'Host: localhost' -H 'Accept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,application/xml;q=0.8,*/*;q=0.7' -H 'Connection: keep-alive')
count() { # binary mode -> instructions per request
  local bin=$1 mode=$2 port=$((8600 + RANDOM % 300)) dir pid out reqs total
  dir=$(mktemp -d)
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" --addr 127.0.0.1:$port --workers 1 --steering kernel >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port)).close()" 2>/dev/null && break
    sleep 0.2
  done
  local args=(-t1 -c16 "http://127.0.0.1:$port/plaintext")
  [ "$mode" = pipelined ] && args=(-t1 -c16 -s loadtest/pipeline.lua "http://127.0.0.1:$port/plaintext" -- 16) || args=("${H[@]}" "${args[@]}")
  wrk -d2s "${args[@]}" >/dev/null
  callgrind_control -z $pid >/dev/null
  out=$(wrk -d${secs}s "${args[@]}")
  callgrind_control -d $pid >/dev/null
  kill -INT $pid; wait $pid 2>/dev/null || true
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  # The dump taken after zeroing: the newest numbered file.
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$(ls -t "$dir"/cg.out.* | head -1)")
  rm -rf "$dir"
  python3 -c "print(f'{$total / $reqs:.1f} ({$reqs} requests)')"
}
for bin in "$@"; do
  echo "$bin: plain $(count "$bin" plain); pipelined-16 $(count "$bin" pipelined)"
done
