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
