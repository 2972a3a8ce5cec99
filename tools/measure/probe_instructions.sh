#!/usr/bin/env bash
# Instructions per echoed message with USDT probes compiled in vs. out,
# counted by valgrind (callgrind): deterministic, unlike timings on a noisy
# 2-core machine. Two loads (small, large) per build; the difference divided
# by the extra messages cancels start-up and shutdown.
#
#   tools/measure/probe_instructions.sh        (after probe_cost.sh built both)
#   tools/measure/probe_instructions.sh OLD_ECHO NEW_ECHO ...
#
# With binaries given, measures those instead (to compare two builds: the
# figure moves by a few percent with the loop's batching under valgrind,
# so compare builds within one run).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/probe-cost
count() { # binary messages-per-connection -> instructions
  local bin=$1 m=$2 port=$((7600 + RANDOM % 300)) f
  f=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" --addr 127.0.0.1:$port --workers 1 >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port)).close()" 2>/dev/null && break; sleep 0.2; done
  python3 tools/measure/echo_rtt.py --port $port -c 4 -m "$m" >/dev/null
  kill -INT $pid; wait $pid 2>/dev/null || true
  awk '/^summary:|^totals:/ {print $2; exit}' "$f"; rm -f "$f"
}
per_message() { # binary -> instructions per extra echoed message
  local small large
  small=$(count "$1" 500)
  large=$(count "$1" 5500)
  python3 -c "print(($large - $small) / (4 * 5000))"
}
if [ $# -gt 0 ]; then
  for bin in "$@"; do echo "$bin instructions_per_message=$(per_message "$bin")"; done
  exit 0
fi
[ -x "$out/echo-on" ] && [ -x "$out/echo-off" ] || { echo "run tools/measure/probe_cost.sh first"; exit 1; }
for v in off on; do
  echo "$v instructions_per_message=$(per_message "$out/echo-$v")"
done
