#!/usr/bin/env bash
# What a read replica changes for reads through the Postgres door: pgbench -S
# through two gateways side by side in one run — A without replicas, B with
# the stack's streaming standby in `postgres.replicas` (default
# `[postgres.replica_routing]`) — for -M simple, extended and prepared. The
# two take turns within each round (the first one alternates). Besides TPS
# and the gateway's CPU milliseconds per 1,000 transactions (utime + stime
# from /proc/PID/stat, as in pgbench_compare.sh), it asks the servers where
# the transactions ran: the delta of xact_commit + xact_rollback in
# pg_stat_database for the tenant's database on the primary and on the
# replica, read as the superuser after each run has settled (a backend that
# goes idle flushes its counters within 10 s: SETTLE). Prints a markdown
# table of medians over ROUNDS runs.
#
# One tenant serves both gateways: created through A's admin API, pgbench
# tables written through A's door with the tenant's admin key, the reads run
# with its service key (read-your-writes keeps reads of a key that wrote
# lately on the primary). Needs the local stack with its replica
# (`scripts/stack up --replica`) and a release build of sluice.
#
#   cargo build --release -p sluice && benches/replica_compare.sh
#
# Env: DURATION (s per run, default 5), CLIENTS ("10"), MODES ("simple
# extended prepared"), ROUNDS (3; medians), WARMUP (s of an untimed run per
# gateway and mode at 10 clients, default 1; 0 skips), POOL (the tenant's
# upstream connections per node, default 10), SETTLE (s to wait after a run
# before reading pg_stat_database, default 11), SLUICE_BIN. Per-run figures
# go to stderr, with the gateway's own count of reads routed to the replica
# (sluice_pg_routed_total) beside the servers' count.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack env)"

DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-"10"}
MODES=${MODES:-"simple extended prepared"}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
POOL=${POOL:-10}
SETTLE=${SETTLE:-11}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
PGBENCH="$SLUICE_PG_BIN/pgbench" PSQL="$SLUICE_PG_BIN/psql"
PG_HOST=127.0.0.1 PG_PORT=54320 REPLICA_PORT=54321 ADMIN_USER=sluice ADMIN_PW=sluice-dev
REPLICA_URL=${SLUICE_TEST_PG_REPLICA_URL:-}
A_PG_PORT=${A_PG_PORT:-16432} A_HTTP_PORT=${A_HTTP_PORT:-18080}
B_PG_PORT=${B_PG_PORT:-16442} B_HTTP_PORT=${B_HTTP_PORT:-18090}
OPERATOR_TOKEN=$(sed -n 's/^operator_token = "\(.*\)"$/\1/p' config/dev.toml)
TICK=$(getconf CLK_TCK)

for mode in $MODES; do
  case $mode in simple|extended|prepared) ;; *) echo "unknown mode '$mode' (simple, extended, prepared)" >&2; exit 1 ;; esac
done
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN (cargo build --release -p sluice)" >&2; exit 1; }
[ -n "$REPLICA_URL" ] || { echo "no replica in the stack (scripts/stack up --replica)" >&2; exit 1; }

# sql PORT QUERY: one value, as the superuser, from the postgres database.
sql() { PGPASSWORD=$ADMIN_PW "$PSQL" -qXAt -h $PG_HOST -p "$1" -U $ADMIN_USER -d postgres -c "$2"; }
sql $REPLICA_PORT "SELECT pg_is_in_recovery()" | grep -qx t || {
  echo "127.0.0.1:$REPLICA_PORT is not a hot standby" >&2; exit 1; }

work=$(mktemp -d /tmp/sluice-replica-bench.XXXXXX)
cleanup() {
  if [ -n "${tenant:-}" ] && [ -n "${a_pid:-}" ]; then
    curl -sf -X DELETE "http://127.0.0.1:$A_HTTP_PORT/admin/v1/tenants/$tenant?confirm=$tenant" \
      -H "authorization: Bearer $OPERATOR_TOKEN" >/dev/null || echo "could not delete tenant $tenant" >&2
  fi
  local p
  for p in ${a_pid:-} ${b_pid:-}; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME PG_PORT HTTP_PORT [REPLICAS]: a gateway in the background; sets
# NAME_pid. The S3 door is off (two instances would share its port).
start() {
  local name=$1 pg=$2 http=$3 replicas=${4:-[]} pid
  SLUICE_SERVER__PG_ADDR="127.0.0.1:$pg" SLUICE_SERVER__HTTP_ADDR="127.0.0.1:$http" SLUICE_SERVER__S3_ADDR= \
    SLUICE_LOG__LEVEL=warn SLUICE_POSTGRES__REPLICAS="$replicas" \
    "$SLUICE_BIN" --config config/dev.toml serve >"$work/$name.log" 2>&1 &
  pid=$!
  printf -v "${name}_pid" %s "$pid"
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && return 0; sleep 0.2; done
  echo "gateway $name did not start: $(tail -n 5 "$work/$name.log")" >&2
  exit 1
}

# 1. Gateway A (no replicas), the tenant, pgbench tables written through A.
start a "$A_PG_PORT" "$A_HTTP_PORT"
tenant="bench-rep-$(date +%s)"
created=$(curl -sf -X POST "http://127.0.0.1:$A_HTTP_PORT/admin/v1/tenants" \
  -H "authorization: Bearer $OPERATOR_TOKEN" -H 'content-type: application/json' \
  -d "{\"name\":\"$tenant\"}") || { echo "could not create tenant $tenant" >&2; tenant=; exit 1; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)" <<<"$created"; }
admin_key=$(field '["admin_key"]["key"]') service_key=$(field '["service_key"]["key"]') db=$(field '["tenant"]["db_name"]')
PGPASSWORD=$ADMIN_PW "$PSQL" -qX -h $PG_HOST -p $PG_PORT -U $ADMIN_USER -d sluice_control -c \
  "UPDATE quotas SET pg_pool_size = $POOL, pg_max_connections = 100000, query_rps = 1000000, query_burst = 1000000
   WHERE tenant_id = (SELECT id FROM tenants WHERE name = '$tenant')" >/dev/null
PGPASSWORD=$admin_key "$PGBENCH" -i -s 1 -q -h 127.0.0.1 -p "$A_PG_PORT" -U "$tenant" "$db" >"$work/init.log" 2>&1 ||
  { echo "pgbench -i through A failed: $(tail -n 5 "$work/init.log")" >&2; exit 1; }

# 2. The replica has replayed the tables; gateway B sees it fit.
lsn=$(sql $PG_PORT "SELECT pg_current_wal_lsn()")
for i in $(seq 300); do
  [ "$(sql $REPLICA_PORT "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && break
  [ "$i" = 300 ] && { echo "the replica did not replay up to $lsn within 30 s" >&2; exit 1; }
  sleep 0.1
done
start b "$B_PG_PORT" "$B_HTTP_PORT" "[\"$REPLICA_URL\"]"
replica_state() {
  curl -s "http://127.0.0.1:$B_HTTP_PORT/readyz" | python3 -c '
import json, sys
r = (json.load(sys.stdin).get("replicas") or [{}])[0]
print(r.get("health", "none"), r.get("lag_ms", "-"), r.get("lag_bytes", "-"))' 2>/dev/null || echo "none - -"
}
for i in $(seq 150); do
  read -r health lag_ms lag_bytes <<<"$(replica_state)"
  [ "$health" = fit ] && break
  [ "$i" = 150 ] && { echo "B's replica is not fit within 30 s: $health (lag $lag_ms ms, $lag_bytes bytes)" >&2; exit 1; }
  sleep 0.2
done
echo "# tenant $tenant (db $db); replica replayed $lsn; B sees replica-1 $health (lag $lag_ms ms, $lag_bytes bytes)" >&2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
xacts() { sql "$1" "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$db'"; }
# B's reads routed to the replica by its own count (A routes nothing).
routed() {
  curl -sf "http://127.0.0.1:$B_HTTP_PORT/metrics" -H "authorization: Bearer $OPERATOR_TOKEN" |
    awk '/^sluice_pg_routed_total\{/ && /door="pg"/ && /node="replica-1"/ { s += $NF } END { printf "%d\n", s }'
}

# B's replica bans so far, by reason ("lagging=2 down=1"; empty when none):
# why reads went to the primary after all.
bans() {
  curl -sf "http://127.0.0.1:$B_HTTP_PORT/metrics" -H "authorization: Bearer $OPERATOR_TOKEN" |
    sed -n 's/^sluice_pg_replica_bans_total{.*reason="\([a-z_]*\)".*} \([0-9.e+]*\)$/\1=\2/p' | sort | paste -sd' '
}

# run GATEWAY MODE CLIENTS SECONDS: prints "tps cpu_ms_per_1000_txn
# replica_share_percent server_xacts_per_txn routed_to_replica txns
# primary_xacts replica_xacts", nothing if pgbench failed. Waits SETTLE s after pgbench so the servers' counters are
# flushed before they are read (and before the next run's baseline).
run() {
  local gw=$1 mode=$2 c=$3 secs=$4 port pid
  case $gw in a) port=$A_PG_PORT; pid=$a_pid ;; b) port=$B_PG_PORT; pid=$b_pid ;; esac
  local threads=$(( c < 2 ? 1 : 2 )) out p0 r0 p1 r1 m0 m1 b0 b1 t0 t1 ok=1
  p0=$(xacts $PG_PORT) r0=$(xacts $REPLICA_PORT) m0=$(routed) b0=$(bans)
  t0=$(cpu_ticks "$pid")
  out=$(PGPASSWORD=$service_key "$PGBENCH" -S -n -M "$mode" -c "$c" -j "$threads" -T "$secs" \
        -h 127.0.0.1 -p "$port" -U "$tenant" "$db" 2>&1) || ok=0
  t1=$(cpu_ticks "$pid")
  sleep "$SETTLE"
  p1=$(xacts $PG_PORT) r1=$(xacts $REPLICA_PORT) m1=$(routed) b1=$(bans)
  [ "$b0" = "$b1" ] || echo "# B banned replica-1 during the $gw $mode c=$c run: bans ${b0:-none} -> $b1" >&2
  if [ "$ok" = 0 ]; then
    echo "$gw $mode $c failed: $(tail -n 3 <<<"$out")" >&2
    return 0
  fi
  local tps txns
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  awk -v tps="$tps" -v n="$txns" -v d=$((t1 - t0)) -v hz="$TICK" -v p=$((p1 - p0)) -v r=$((r1 - r0)) -v m=$((m1 - m0)) \
    'BEGIN { printf "%.0f %.1f %.1f %.3f %d %d %d %d\n", tps, (n > 0 ? d * 1000 / hz / n * 1000 : 0),
             (p + r > 0 ? 100 * r / (p + r) : 0), (n > 0 ? (p + r) / n : 0), m, n, p, r }'
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
label() { [ "$1" = a ] && echo "0 replicas" || echo "1 replica"; }

echo "| mode | clients | TPS 0 replicas | TPS 1 replica | TPS ratio | CPU ms/1k txn 0 replicas | CPU ms/1k txn 1 replica | CPU ratio | share on replica, 0 replicas | share on replica, 1 replica |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for mode in $MODES; do
  if [ "$WARMUP" -gt 0 ]; then
    for g in a b; do run "$g" "$mode" 10 "$WARMUP" >/dev/null; done
  fi
  for c in $CLIENTS; do
    : >"$work/a" && : >"$work/b"
    for r in $(seq "$ROUNDS"); do
      order="a b"; [ $((r % 2)) = 0 ] && order="b a"
      for g in $order; do
        res=$(run "$g" "$mode" "$c" "$DURATION")
        [ -n "$res" ] && echo "$res" >>"$work/$g"
        if [ -n "$res" ]; then
          read -r tps cpu share per routed_n txns on_primary on_replica <<<"$res"
          echo "# round $r $mode c=$c $(label "$g"): $tps tps, $cpu CPU ms/1k, $txns txns;" \
            "servers: primary +$on_primary, replica +$on_replica xacts (replica share $share %, $per per txn);" \
            "B routed $routed_n to replica-1" >&2
        else
          echo "# round $r $mode c=$c $(label "$g"): failed" >&2
        fi
      done
    done
    # med GATEWAY FIELD: the median, or "failed" when no run succeeded.
    med() { local m; m=$(cut -d' ' -f"$2" "$work/$1" | median); echo "${m:-failed}"; }
    awk -v m="$mode" -v c="$c" -v at="$(med a 1)" -v bt="$(med b 1)" -v ac="$(med a 2)" -v bc="$(med b 2)" \
      -v as="$(med a 3)" -v bs="$(med b 3)" '
      function ratio(x, y) { return (x + 0 > 0 && y + 0 > 0) ? sprintf("%.2f", x / y) : "–" }
      function pct(x) { return (x == "failed") ? x : x " %" }
      BEGIN { printf "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", m, c, at, bt, ratio(bt, at), ac, bc, ratio(bc, ac), pct(as), pct(bs) }'
  done
done

echo
read -r health lag_ms lag_bytes <<<"$(replica_state)"
echo "B's replica-1 after the runs: $health (lag $lag_ms ms, $lag_bytes bytes; bans: $(b=$(bans); echo "${b:-none}"));" \
  "sluice RSS A $(ps -o rss= -p "$a_pid") KiB, B $(ps -o rss= -p "$b_pid") KiB"
echo "$(nproc) CPUs; DURATION=${DURATION}s; ROUNDS=$ROUNDS (medians; the gateways alternate within a round); WARMUP=${WARMUP}s; POOL=$POOL; SETTLE=${SETTLE}s"
