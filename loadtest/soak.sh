#!/usr/bin/env bash
# Soak run (not in CI): mixed load on corelane-http for SECONDS (default 600),
# sampling RSS, descriptors and CPU every second.
#   loadtest/soak.sh [SECONDS] [OUT]      (OUT defaults to docs/soak)
# Writes OUT/soak.csv, OUT/soak.svg and OUT/summary.md. See loadtest/soak.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p corelane-http -p corelane-loadtest
exec python3 loadtest/soak.py "${1:-600}" "${2:-docs/soak}"
