#!/usr/bin/env bash
# HTTPS: corelane-http against nginx, server CPU per request over TLS and
# per new TLS connection (full handshake, and resumed), in alternating
# rounds.
#
#   tools/measure/https_vs_nginx.sh [rounds] [seconds]
#
# Both use one ECDSA P-256 certificate made here, TLS 1.2 and 1.3, session
# tickets on (nginx: `ssl_session_tickets on`, `keepalive_requests` high
# enough that wrk never reconnects), one worker pinned to CPU 0; the client
# runs on CPU 1:
#
# - keep-alive: `wrk -t1 -c16` over https (one handshake per connection,
#   then requests) — CPU per request;
# - full: `openssl s_time -new -www /plaintext` — a new connection and a
#   full handshake per request — CPU per connection;
# - resumed: `openssl s_time -reuse -www /plaintext` — a new connection
#   resuming the first one's session each time — CPU per connection.
#
# CPU is the server's utime+stime from /proc over the run, divided by what
# the client counted; the ratio corelane ÷ nginx is taken per round. A run
# with errors (wrk's socket errors or non-2xx answers, or no connection
# completed) stops the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/measure/common.sh
. tools/measure/common.sh
rounds=${1:-3}
secs=${2:-5}
need wrk nginx openssl
cargo build --release -q -p corelane-http
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1
conf() { # port -> nginx.conf path
  nginx_conf "$1" "keepalive_requests 100000000;" "listen 127.0.0.1:$1 ssl;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on;
    location / { default_type text/plain; return 200 \"Hello, World!\"; }"
}
start() { # server port -> pid
  local server=$1 port=$2
  if [ "$server" = nginx ]; then
    taskset -c 0 nginx -p "$dir/$port" -c "$(conf "$port")" -e "$dir/$port/error.log" >/dev/null 2>&1 &
  else
    taskset -c 0 target/release/corelane-http --addr 127.0.0.1:$port --workers 1 --steering kernel \
      --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" >/dev/null 2>&1 &
  fi
  echo $!
  wait_listening "$port"
}
load() { # mode port seconds -> requests or connections the client counted
  local out n
  case $1 in
    keepalive)
      out=$(taskset -c 1 wrk -t1 -c16 -d"$3"s "https://127.0.0.1:$2/plaintext")
      if grep -q "errors\|Non-2xx" <<<"$out"; then echo "wrk saw errors: $out" >&2; exit 1; fi
      n=$(awk '/requests in/ {print $1}' <<<"$out") ;;
    full|resumed)
      local how=-new; [ "$1" = resumed ] && how=-reuse
      out=$(taskset -c 1 openssl s_time -connect 127.0.0.1:"$2" $how -www /plaintext -time "$3" 2>&1)
      n=$(awk '/connections in [0-9.]+s;/ {print $1; exit}' <<<"$out") ;;
  esac
  [ "${n:-0}" -gt 0 ] || { echo "no $1 connection completed: $out" >&2; exit 1; }
  echo "$n"
}
port=8800
echo "round mode server per_second cpu_us_each"
for r in $(seq 1 "$rounds"); do
  order="corelane-http nginx"; [ $((r % 2)) = 0 ] && order="nginx corelane-http"
  for mode in keepalive full resumed; do
    for server in $order; do
      port=$((port + 1))
      pid=$(start $server $port)
      load $mode $port 1 >/dev/null
      c0=$(cpu "$pid"); n=$(load $mode $port "$secs"); c1=$(cpu "$pid")
      kill "$pid"; wait "$pid" 2>/dev/null || true
      python3 -c "print($r, '$mode', '$server', round($n / $secs), round(($c1 - $c0) * 1e6 / max($n, 1), 2))"
    done
  done
done | tee "$dir/rounds.txt"
python3 - "$dir/rounds.txt" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l[0].isdigit()]
print("| test | corelane-http CPU µs (median) | nginx CPU µs (median) | corelane ÷ nginx, each round | median |")
print("|---|---|---|---|---|")
for mode, what in [("keepalive", "per request, keep-alive"), ("full", "per connection, full handshake"),
                   ("resumed", "per connection, resumed")]:
    by = {}
    for r, m, s, _, us in rows:
        if m == mode:
            by.setdefault(r, {})[s] = float(us)
    med = {s: statistics.median(v[s] for v in by.values() if s in v) for s in ["corelane-http", "nginx"]}
    ratios = [v["corelane-http"] / v["nginx"] for v in by.values() if len(v) == 2]
    print(f"| {what} | {med['corelane-http']:.2f} | {med['nginx']:.2f} | "
          f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} |")
EOF
