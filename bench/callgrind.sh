#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: the measure that
# bench/findings.md uses to compare request-path changes (perf has no hardware counters on
# these VMs, and wall-clock numbers on 2 shared cores are too noisy for a few percent).
#
#   bench/callgrind.sh [BINARY] [REQUESTS]    default target/release/portcullis, 20000
#
# Starts the demo upstream, then for each protocol (HTTP/1.1 keep-alive with `h2load --h1`,
# and h2c) two runs of the proxy under callgrind (plain listener, one route), with 2,000 and
# 2,000 + REQUESTS requests, and prints the difference per request.
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client).
set -euo pipefail
bin=$(realpath "${1:-target/release/portcullis}")
n=${2:-20000}
command -v valgrind >/dev/null && command -v h2load >/dev/null || {
    echo "needs valgrind and h2load: apt-get install -y valgrind nghttp2-client" >&2
    exit 2
}
# Listeners use SO_REUSEPORT: a leftover process on these ports would silently take a share
# of the connections (and of the instructions).
if ss -Htln | grep -qE ':(29000|29443|29901|29902) '; then
    echo "ports 29000/29443/29901/29902 are in use (a leftover run?): $(ss -Htlnp | grep -E ':(29000|29443|29901|29902) ')" >&2
    exit 2
fi
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
cat >"$dir/config.yaml" <<'EOF'
address: 127.0.0.1:29443
insecure_server: true
http_redirect_address: ""
admin_address: 127.0.0.1:29901
metrics_address: 127.0.0.1:29902
routes:
  - name: bench
    from: https://*
    to: [http://127.0.0.1:29000]
EOF
"$bin" demo-upstream --listen 127.0.0.1:29000 --name bench >/dev/null 2>&1 &
url=http://127.0.0.1:29443/
# One run: the proxy under callgrind, `REQUESTS` requests with h2load's arguments, then
# SIGTERM; prints the instructions of the whole run. A run is start-up + the load + shutdown,
# so the difference of two runs with different counts is the cost of the extra requests
# alone (callgrind's own dump command is served only when a thread next wakes, which made
# its numbers land in the wrong dump).
run() {
    local count=$1 out="$dir/cg.$1.$RANDOM"
    shift
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" --log-level off serve --config "$dir/config.yaml" >/dev/null 2>>"$dir/valgrind.log" &
    local pid=$!
    for _ in $(seq 1 300); do
        curl -sf http://127.0.0.1:29901/readyz >/dev/null 2>&1 && break
        sleep 0.2
    done
    h2load -n "$count" "$@" "$url" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^summary:/ {print $2; exit}' "$out"
}
per_request() { # name, h2load arguments
    local name=$1 small big
    shift
    small=$(run 2000 "$@")
    big=$(run $((2000 + n)) "$@")
    printf '%-20s %d instructions per request (%d requests: %d - %d instructions)\n' \
        "$name" $(((big - small) / n)) "$n" "$big" "$small"
}
per_request "HTTP/1.1 keep-alive" --h1 -c 4
per_request "h2c" -c 4 -m 8
