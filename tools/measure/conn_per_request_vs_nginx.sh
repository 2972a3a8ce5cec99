#!/usr/bin/env bash
# A connection per request: corelane-http against nginx, server CPU per
# connection in alternating rounds, and the system calls each makes per
# connection (counted by bpftrace under the same load: strace slows the
# server so much that events batch up and the counts are not the real
# ones; with strace -c corelane-http showed 5.2 calls per connection
# while it made 6.7).
#
#   tools/measure/conn_per_request_vs_nginx.sh [rounds] [seconds]
#   CORELANE_ARGS='--defer-accept 1s' NGINX_LISTEN=deferred tools/measure/conn_per_request_vs_nginx.sh 3 6
#
# (both servers with TCP_DEFER_ACCEPT: a connection is accepted only once
# its request has arrived)
#
# Each server runs one worker (nginx: one process, master_process off,
# `return 200 "Hello, World!"`, access_log off) pinned to CPU 0; wrk -t1
# -c16 with `Connection: close` runs on CPU 1, so every request opens and
# closes a connection. CPU is the server's utime+stime from /proc over the
# run, divided by the requests wrk counted; the ratio is taken per round.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/measure/common.sh
. tools/measure/common.sh
rounds=${1:-3}
secs=${2:-8}
need wrk nginx bpftrace
cargo build --release -q -p corelane-http
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
conf() { # port -> nginx.conf path
  nginx_conf "$1" "" "listen 127.0.0.1:$1 ${NGINX_LISTEN:-};
    location / { default_type text/plain; return 200 \"Hello, World!\"; }"
}
start() { # server port [prefix...] -> pid
  local server=$1 port=$2; shift 2
  if [ "$server" = nginx ]; then
    "$@" nginx -p "$dir/$port" -c "$(conf "$port")" -e "$dir/$port/error.log" >/dev/null 2>&1 &
  else
    # shellcheck disable=SC2086 # CORELANE_ARGS is a list of options
    "$@" target/release/corelane-http --addr 127.0.0.1:$port --workers 1 --steering kernel ${CORELANE_ARGS:-} >/dev/null 2>&1 &
  fi
  echo $!
  wait_listening "$port"
}
load() { taskset -c 1 wrk -t1 -c16 -d"$2"s -H 'Connection: close' "http://127.0.0.1:$1/plaintext" | awk '/requests in/ {print $1}'; }
port=8700
echo "round server requests/s cpu_us_per_connection"
for r in $(seq 1 "$rounds"); do
  order="corelane-http nginx"; [ $((r % 2)) = 0 ] && order="nginx corelane-http"
  for server in $order; do
    port=$((port + 1))
    pid=$(start $server $port taskset -c 0)
    load $port 1 >/dev/null
    c0=$(cpu "$pid"); n=$(load $port "$secs"); c1=$(cpu "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c "print($r, '$server', round($n / $secs), round(($c1 - $c0) * 1e6 / $n, 2))"
  done
done | tee "$dir/rounds.txt"
python3 - "$dir/rounds.txt" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l[0].isdigit()]
by = {}
for r, s, rps, us in rows:
    by.setdefault(int(r), {})[s] = float(us)
ratios = [v["corelane-http"] / v["nginx"] for v in by.values() if len(v) == 2]
for s in ["corelane-http", "nginx"]:
    print(f"{s}: median {statistics.median(float(u) for _, n, _, u in rows if n == s):.2f} µs CPU per connection")
print("ratio corelane-http / nginx per round:", ", ".join(f"{x:.2f}" for x in ratios),
      f"(median {statistics.median(ratios):.2f})")
EOF
echo "system calls per connection (bpftrace, 3 s under the same load, per accepted connection):"
for server in corelane-http nginx; do
  port=$((port + 1))
  pid=$(start $server $port taskset -c 0)
  load $port 6 >/dev/null &
  sleep 1
  # Every system call of the server's threads by number (one probe: the
  # counts start together), the accepts that returned a connection, and
  # the packets both ends send (loopback: the load's only traffic; each a
  # TCP segment).
  bpftrace -q -e "tracepoint:raw_syscalls:sys_enter /pid == $pid/ { @calls[args->id] = count(); }
    tracepoint:syscalls:sys_exit_accept4 /pid == $pid && args->ret >= 0/ { @conns = count(); }
    tracepoint:net:net_dev_xmit { @segs = count(); }
    interval:s:3 { exit(); }" >"$dir/calls.$server" 2>/dev/null || true
  wait
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$dir/calls.$server" "$server" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
n = int(re.search(r"@conns: (\d+)", text).group(1))
# x86_64 numbers of the calls these servers make per connection.
names = {0: "read", 1: "write", 3: "close", 7: "poll", 20: "writev", 43: "accept",
         44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 48: "shutdown",
         54: "setsockopt", 55: "getsockopt", 202: "futex", 228: "clock_gettime",
         232: "epoll_wait", 233: "epoll_ctl", 281: "epoll_pwait", 288: "accept4"}
calls = {names.get(int(m[0]), "syscall " + m[0]): int(m[1])
         for m in re.findall(r"@calls\[(\d+)\]: (\d+)", text)}
# Every call made at least once per hundred connections.
per = {k: c / n for k, c in sorted(calls.items(), key=lambda kv: -kv[1]) if c / n >= 0.01}
segs = re.search(r"@segs: (\d+)", text)
print(f"  {sys.argv[2]}: {sum(per.values()):.2f} —", ", ".join(f"{k} {v:.2f}" for k, v in per.items()),
      f"(TCP segments per connection, both ends: {int(segs.group(1)) / n:.1f})" if segs else "")
EOF
done
