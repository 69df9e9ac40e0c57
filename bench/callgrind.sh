#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: the measure that
# bench/findings.md uses to compare request-path changes (perf has no hardware counters on
# these VMs, and wall-clock numbers on 2 shared cores are too noisy for a few percent).
#
#   bench/callgrind.sh [BINARY] [REQUESTS]    default target/release/portcullis, 20000
#
# Starts the demo upstream, then the proxy under callgrind (plain listener, one route),
# warms up, zeroes the counters, sends REQUESTS requests with h2load over HTTP/1.1 keep-alive
# (--h1) and over h2c, dumps the counters after each, and prints instructions per request.
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client).
set -euo pipefail
bin=$(realpath "${1:-target/release/portcullis}")
n=${2:-20000}
command -v valgrind >/dev/null && command -v h2load >/dev/null || {
    echo "needs valgrind and h2load: apt-get install -y valgrind nghttp2-client" >&2
    exit 2
}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
cat >"$dir/config.yaml" <<'EOF'
address: 127.0.0.1:19443
insecure_server: true
http_redirect_address: ""
admin_address: 127.0.0.1:19901
metrics_address: 127.0.0.1:19902
routes:
  - name: bench
    from: https://*
    to: [http://127.0.0.1:19000]
EOF
"$bin" demo-upstream --listen 127.0.0.1:19000 --name bench >/dev/null 2>&1 &
PORTCULLIS_LOG=off valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" \
    "$bin" --log-level off serve --config "$dir/config.yaml" >/dev/null 2>"$dir/valgrind.log" &
for _ in $(seq 1 300); do
    curl -sf http://127.0.0.1:19901/readyz >/dev/null 2>&1 && break
    sleep 0.2
done
url=http://127.0.0.1:19443/
dump() { # zero, run the load, dump; print the instruction count of the dump
    callgrind_control -z "$bin" >/dev/null
    "$@" >/dev/null
    callgrind_control -d "$bin" >/dev/null
    sleep 1
    local f
    f=$(ls -t "$dir"/cg.* | head -1)
    awk '/^(summary|totals):/ {print $2; exit}' "$f"
}
h2load --h1 -n 1000 -c 4 "$url" >/dev/null
h2load -n 1000 -c 4 -m 8 "$url" >/dev/null
h1=$(dump h2load --h1 -n "$n" -c 4 "$url")
h2=$(dump h2load -n "$n" -c 4 -m 8 "$url")
echo "HTTP/1.1 keep-alive: $((h1 / n)) instructions per request ($n requests, $h1 in all)"
echo "h2c:                 $((h2 / n)) instructions per request ($n requests, $h2 in all)"
