#!/usr/bin/env bash
# Peak memory of the gateway while streaming one large object up and down.
#
# Starts a release `sluice serve` on a free loopback port against the local
# stack, creates a tenant, uploads SIZE bytes of random data with a chunked
# body (curl -T -, so the gateway does not know the size: the multipart path),
# downloads it again, checks the sha256, and prints the gateway's VmRSS/VmHWM
# (from /proc/PID/status) after start, after the upload and after the download,
# plus the throughput of each direction. Deletes the tenant at the end.
#
# Usage: benches/object_stream.sh [SIZE_MIB=1024]   (stack up: scripts/stack up)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
eval "$(scripts/stack env)"
export SLUICE_CONFIG=${SLUICE_CONFIG:-config/dev.toml}
cargo build --locked --release -p sluice --bin sluice >/dev/null
bin=${CARGO_TARGET_DIR:-target}/release/sluice
"$bin" migrate up --control-only >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
log=$(mktemp)
"$bin" serve --http-addr "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
name="bench-obj-$(date +%s)"
cleanup() {
    "$bin" --json tenant delete "$name" --yes >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done

mem() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MiB  ", $1, $2 / 1024 }' "/proc/$pid/status"; echo; }
key=$("$bin" --json tenant create "$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["service_key"]["key"])')
echo "gateway pid $pid, tenant $name, object ${size_mib} MiB"
printf 'after start:    '; mem

sum_up=$(mktemp)
start=$(date +%s.%N)
head -c "$((size_mib << 20))" /dev/urandom | tee >(sha256sum | cut -d' ' -f1 >"$sum_up") |
    curl -sf -T - -H "authorization: Bearer $key" -H 'content-type: application/octet-stream' \
        "$base/v1/objects/bench/blob" >/dev/null
up=$(python3 -c "import sys; print(f'{$size_mib / ($(date +%s.%N) - $start):.0f}')")
printf 'after upload:   '; mem

start=$(date +%s.%N)
sum_down=$(curl -sf -H "authorization: Bearer $key" "$base/v1/objects/bench/blob" | sha256sum | cut -d' ' -f1)
down=$(python3 -c "import sys; print(f'{$size_mib / ($(date +%s.%N) - $start):.0f}')")
printf 'after download: '; mem
sleep 0.2
[ "$(cat "$sum_up")" = "$sum_down" ] && echo "sha256 matches ($sum_down)" || { echo "sha256 MISMATCH"; exit 1; }
rm -f "$sum_up"
echo "upload ${up} MiB/s, download ${down} MiB/s"
