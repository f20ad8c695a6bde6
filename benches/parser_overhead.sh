#!/usr/bin/env bash
# What parsing every statement costs the Postgres door: pgbench -S through two
# gateway binaries side by side in one run — BEFORE_BIN (a build without the
# statement model) and SLUICE_BIN (this tree) — alternating A/B runs so both
# see the same machine noise. Prints per mode and client count the median TPS
# of ROUNDS runs and the gateway's CPU milliseconds per 1,000 transactions
# (utime + stime from /proc/PID/stat: the figure that stays stable on a noisy
# machine). Needs the local stack up.
#
#   git worktree add /tmp/sluice-before <commit> && \
#     (cd /tmp/sluice-before && CARGO_TARGET_DIR=$PWD/../main/target cargo build --release -p sluice) && \
#     cp target/release/sluice /tmp/sluice-before.bin      # then build this tree:
#   cargo build --release -p sluice && BEFORE_BIN=/tmp/sluice-before.bin benches/parser_overhead.sh
#
# Env: DURATION (s per run, default 5), CLIENTS ("1 10"), MODES ("simple extended prepared"),
# ROUNDS (3), POOL (10).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack env)"

DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-"1 10"}
MODES=${MODES:-"simple extended prepared"}
ROUNDS=${ROUNDS:-3}
POOL=${POOL:-10}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
BEFORE_BIN=${BEFORE_BIN:?set BEFORE_BIN to a gateway binary built without the statement model}
PGBENCH="$SLUICE_PG_BIN/pgbench"
OPERATOR="dev-operator-token-0123456789"
TICK=$(getconf CLK_TCK)

work=$(mktemp -d /tmp/sluice-parser-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME BIN PG_PORT HTTP_PORT: a gateway in the background.
start() {
  SLUICE_SERVER__PG_ADDR="127.0.0.1:$3" SLUICE_SERVER__HTTP_ADDR="127.0.0.1:$4" SLUICE_LOG__LEVEL=warn \
    "$2" --config config/dev.toml serve >"$work/$1.log" 2>&1 &
  pids+=($!)
  eval "pid_$1=$!"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$4/healthz" >/dev/null && return; sleep 0.2; done
  echo "gateway $1 did not start: $(tail -n 5 "$work/$1.log")" >&2
  exit 1
}
start before "$BEFORE_BIN" 16442 18090
start after "$SLUICE_BIN" 16443 18091

tenant="parse-$(date +%s)"
created=$(curl -sf -X POST "http://127.0.0.1:18091/admin/v1/tenants" -H "authorization: Bearer $OPERATOR" \
  -H 'content-type: application/json' -d "{\"name\":\"$tenant\"}")
key=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["service_key"]["key"])' <<<"$created")
db=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["db_name"])' <<<"$created")
PGPASSWORD=sluice-dev "$SLUICE_PG_BIN/psql" -qX -h 127.0.0.1 -p 54320 -U sluice -d sluice_control -c \
  "UPDATE quotas SET pg_pool_size = $POOL, pg_max_connections = 100000, query_rps = 1000000, query_burst = 1000000
   WHERE tenant_id = (SELECT id FROM tenants WHERE name = '$tenant')" >/dev/null
PGPASSWORD=$key "$PGBENCH" -i -s 1 -q -h 127.0.0.1 -p 16443 -U "$tenant" "$db" >"$work/init.log" 2>&1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME MODE CLIENTS -> "tps cpu_ms_per_1000"
run() {
  local name=$1 mode=$2 c=$3 port pid
  if [ "$name" = before ]; then port=16442; pid=$pid_before; else port=16443; pid=$pid_after; fi
  local threads=$(( c < 2 ? 1 : 2 ))
  local t0; t0=$(cpu_ticks "$pid")
  local out; out=$(PGPASSWORD=$key "$PGBENCH" -S -M "$mode" -c "$c" -j "$threads" -T "$DURATION" \
    -h 127.0.0.1 -p "$port" -U "$tenant" "$db" 2>&1) || { echo "0 0"; return; }
  local t1; t1=$(cpu_ticks "$pid")
  local tps txns
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  awk -v tps="$tps" -v n="$txns" -v d=$((t1 - t0)) -v hz="$TICK" \
    'BEGIN { printf "%.0f %.1f\n", tps, (n > 0 ? d * 1000 / hz / n * 1000 : 0) }'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| mode | clients | TPS before | TPS after | ratio | CPU ms/1k txn before | after | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for mode in $MODES; do
  for c in $CLIENTS; do
    : >"$work/b" && : >"$work/a"
    for _ in $(seq "$ROUNDS"); do
      run before "$mode" "$c" >>"$work/b"
      run after "$mode" "$c" >>"$work/a"
    done
    bt=$(cut -d' ' -f1 "$work/b" | median); at=$(cut -d' ' -f1 "$work/a" | median)
    bc=$(cut -d' ' -f2 "$work/b" | median); ac=$(cut -d' ' -f2 "$work/a" | median)
    awk -v m="$mode" -v c="$c" -v bt="$bt" -v at="$at" -v bc="$bc" -v ac="$ac" 'BEGIN {
      printf "| %s | %d | %d | %d | %.2f | %.1f | %.1f | %.2f |\n", m, c, bt, at, (bt > 0 ? at / bt : 0), bc, ac, (bc > 0 ? ac / bc : 0) }'
  done
done
echo
echo "$(nproc) CPUs; DURATION=${DURATION}s; ROUNDS=$ROUNDS (medians); POOL=$POOL"
curl -sf -X DELETE "http://127.0.0.1:18091/admin/v1/tenants/$tenant?confirm=$tenant" \
  -H "authorization: Bearer $OPERATOR" >/dev/null || true
