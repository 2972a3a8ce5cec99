# Shared by the measuring scripts here (source it): tool checks, a
# process's CPU time, waiting for a server to listen.

# Exits with a message naming the package when a tool is missing.
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install $*)"; exit 1; }
  done
}

# utime + stime of process $1, in seconds.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }

# Waits (up to 10 s) until something accepts on 127.0.0.1:$1.
wait_listening() {
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$1)).close()" 2>/dev/null && return
    sleep 0.1
  done
}

# Writes an nginx.conf for one worker in the foreground under $dir/$1 (its
# temp paths there, no access log) with `http { $2 server { $3 } }`, and
# prints its path.
nginx_conf() {
  local d=$dir/$1; mkdir -p "$d"
  cat >"$d/nginx.conf" <<NGINX
daemon off; master_process off; worker_processes 1; error_log $d/error.log crit; pid $d/nginx.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $d/body; proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi; uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
  $2
  server { $3 } }
NGINX
  echo "$d/nginx.conf"
}
