#!/usr/bin/env bash
# What the Postgres door costs next to PgBouncer: pgbench -S through three
# paths in one run — direct Postgres, Sluice's Postgres door (transaction
# pooling) and PgBouncer (transaction mode, max_prepared_statements) — for
# -M simple, extended and prepared at 1, 10 and 50 clients. The three paths
# take turns within each round (the starting path rotates) so they see the
# same machine noise. Prints a markdown table of median TPS over ROUNDS runs
# and, for the two proxies, the proxy process's CPU milliseconds per 1,000
# transactions (utime + stime from /proc/PID/stat, all threads: the figure
# that stays stable on a noisy machine), with the Sluice/PgBouncer ratios.
# Needs the local stack up (`scripts/stack up`), a release build of sluice
# and a PgBouncer binary (1.21 or newer for -M prepared: older ones cannot
# keep protocol-level prepared statements in transaction mode).
#
#   benches/build-pgbouncer.sh /path/to/pgbouncer-git   # once: PgBouncer 1.25 from its source
#   cargo build --release -p sluice && benches/pgbench_compare.sh
#
# Env: DURATION (s per run, default 5), CLIENTS ("1 10 50"), MODES ("simple
# extended prepared"), ROUNDS (3; medians), WARMUP (s of an untimed run per
# path and mode, default 1; 0 skips), POOL (upstream connections for Sluice
# and PgBouncer, default 10), MAX_PREPARED (PgBouncer's max_prepared_statements,
# default 200), PGBOUNCER_BIN (default: the one build-pgbouncer.sh installed
# under .stack/pgbouncer, else `pgbouncer` on PATH), SLUICE_BIN,
# IDLE_CLIENTS (idle connections for the memory figure, default 5000; 0 skips;
# needs psycopg). Per-run figures go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack env)"

DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-"1 10 50"}
MODES=${MODES:-"simple extended prepared"}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
POOL=${POOL:-10}
MAX_PREPARED=${MAX_PREPARED:-200}
built_bouncer=${SLUICE_STACK_DIR:-$PWD/.stack}/pgbouncer/bin/pgbouncer
if [[ -z ${PGBOUNCER_BIN:-} && -x $built_bouncer ]]; then PGBOUNCER_BIN=$built_bouncer; fi
PGBOUNCER_BIN=${PGBOUNCER_BIN:-pgbouncer}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
PGBENCH="$SLUICE_PG_BIN/pgbench"
PG_HOST=127.0.0.1 PG_PORT=54320 ADMIN_USER=sluice ADMIN_PW=sluice-dev
SLUICE_PG_PORT=${SLUICE_PG_PORT:-16432} SLUICE_HTTP_PORT=${SLUICE_HTTP_PORT:-18080} BOUNCER_PORT=${BOUNCER_PORT:-16433}
TICK=$(getconf CLK_TCK)

for mode in $MODES; do
  case $mode in simple|extended|prepared) ;; *) echo "unknown mode '$mode' (simple, extended, prepared)" >&2; exit 1 ;; esac
done
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN (cargo build --release -p sluice)" >&2; exit 1; }

# PgBouncer: which binary, which version, and whether it can do the modes asked.
bouncer=$(command -v "$PGBOUNCER_BIN") || {
  echo "no PgBouncer at '$PGBOUNCER_BIN': set PGBOUNCER_BIN to a pgbouncer binary (1.21+ for -M prepared)" >&2; exit 1; }
bouncer_version=$("$bouncer" --version 2>&1 | head -n 1)
ver=$(grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' <<<"$bouncer_version" | head -n 1) || true
[ -n "$ver" ] || { echo "cannot tell the version of $bouncer ('$bouncer_version')" >&2; exit 1; }
IFS=. read -r vmaj vmin _ <<<"$ver"
echo "PgBouncer: $bouncer ($bouncer_version)" >&2
prepared_ok=$(( vmaj > 1 || (vmaj == 1 && vmin >= 21) ))
if [ "$prepared_ok" = 0 ] && [[ " $MODES " == *" prepared "* ]]; then
  echo "PgBouncer $ver cannot serve -M prepared in transaction mode (needs 1.21+, max_prepared_statements):" \
    "set PGBOUNCER_BIN to a newer build or MODES without prepared" >&2
  exit 1
fi
# PgBouncer refuses to run as root: it runs as the stack's unprivileged user.
runuser -u sluice-pg -- test -x "$bouncer" || { echo "$bouncer is not executable by user sluice-pg" >&2; exit 1; }

work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  [ -n "${sluice_pid:-}" ] && kill "$sluice_pid" 2>/dev/null || true
  [ -n "${bouncer_pid:-}" ] && kill "$bouncer_pid" 2>/dev/null || true
  [ -n "${runuser_pid:-}" ] && kill "$runuser_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# 1. Sluice, and a tenant with a pgbench database initialised through it.
export SLUICE_SERVER__PG_ADDR="127.0.0.1:$SLUICE_PG_PORT" SLUICE_SERVER__HTTP_ADDR="127.0.0.1:$SLUICE_HTTP_PORT"
export SLUICE_LOG__LEVEL=warn
# Room for the idle-connection figure (one descriptor per client).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
"$SLUICE_BIN" --config config/dev.toml serve >"$work/sluice.log" 2>&1 &
sluice_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$SLUICE_HTTP_PORT/healthz" >/dev/null && break; sleep 0.2; done
tenant="bench-$(date +%s)"
created=$(curl -sf -X POST "http://127.0.0.1:$SLUICE_HTTP_PORT/admin/v1/tenants" \
  -H "authorization: Bearer dev-operator-token-0123456789" -H 'content-type: application/json' \
  -d "{\"name\":\"$tenant\"}")
key=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["service_key"]["key"])' <<<"$created")
db=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["db_name"])' <<<"$created")
PGPASSWORD=$ADMIN_PW "$SLUICE_PG_BIN/psql" -qX -h $PG_HOST -p $PG_PORT -U $ADMIN_USER -d sluice_control -c \
  "UPDATE quotas SET pg_pool_size = $POOL, pg_max_connections = 100000, query_rps = 1000000, query_burst = 1000000
   WHERE tenant_id = (SELECT id FROM tenants WHERE name = '$tenant')" >/dev/null
PGPASSWORD=$key "$PGBENCH" -i -s 1 -q -h 127.0.0.1 -p "$SLUICE_PG_PORT" -U "$tenant" "$db" >"$work/init.log" 2>&1

# 2. PgBouncer (transaction mode) in front of the same database.
cat >"$work/pgbouncer.ini" <<INI
[databases]
$db = host=$PG_HOST port=$PG_PORT dbname=$db user=$ADMIN_USER password=$ADMIN_PW
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = plain
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 1000
logfile = $work/bouncer/pgbouncer.log
pidfile = $work/bouncer/pgbouncer.pid
INI
[ "$prepared_ok" = 1 ] && echo "max_prepared_statements = $MAX_PREPARED" >>"$work/pgbouncer.ini"
echo "\"bench\" \"bench\"" >"$work/userlist.txt"
chmod 644 "$work"/*.ini "$work"/userlist.txt
mkdir -p "$work/bouncer" && chown sluice-pg "$work/bouncer"
runuser -u sluice-pg -- "$bouncer" "$work/pgbouncer.ini" >"$work/pgbouncer.out" 2>&1 &
runuser_pid=$!
# runuser stays as PgBouncer's parent: the CPU figure needs PgBouncer's own pid.
for _ in $(seq 50); do [ -s "$work/bouncer/pgbouncer.pid" ] && break; sleep 0.1; done
bouncer_pid=$(cat "$work/bouncer/pgbouncer.pid" 2>/dev/null || true)
[ -n "$bouncer_pid" ] && [ -r "/proc/$bouncer_pid/stat" ] || {
  echo "PgBouncer did not start: $(tail -n 5 "$work/pgbouncer.out" "$work/bouncer/pgbouncer.log" 2>/dev/null)" >&2; exit 1; }
sleep 0.5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run TARGET MODE CLIENTS SECONDS: prints "tps cpu_ms_per_1000_txn" (cpu "-"
# for direct), nothing if pgbench failed.
run() {
  local target=$1 mode=$2 c=$3 secs=$4 host_args pw pid=
  case $target in
    direct) host_args=(-h $PG_HOST -p $PG_PORT -U $ADMIN_USER); pw=$ADMIN_PW ;;
    sluice) host_args=(-h 127.0.0.1 -p "$SLUICE_PG_PORT" -U "$tenant"); pw=$key; pid=$sluice_pid ;;
    pgbouncer) host_args=(-h 127.0.0.1 -p "$BOUNCER_PORT" -U bench); pw=bench; pid=$bouncer_pid ;;
  esac
  local threads=$(( c < 2 ? 1 : 2 )) t0=0 t1=0 out
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  if ! out=$(PGPASSWORD=$pw "$PGBENCH" -S -M "$mode" -c "$c" -j "$threads" -T "$secs" \
        "${host_args[@]}" "$db" 2>&1); then
    echo "$target $mode $c failed: $(tail -n 3 <<<"$out")" >&2
    [ "$target" = pgbouncer ] && tail -n 5 "$work/bouncer/pgbouncer.log" >&2 2>/dev/null
    return 0
  fi
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  local tps txns
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  awk -v tps="$tps" -v n="$txns" -v d=$((t1 - t0)) -v hz="$TICK" -v cpu="${pid:+1}" \
    'BEGIN { if (cpu) printf "%.0f %.1f\n", tps, (n > 0 ? d * 1000 / hz / n * 1000 : 0); else printf "%.0f -\n", tps }'
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }

targets=(sluice pgbouncer direct)
echo "| mode | clients | direct TPS | Sluice TPS | PgBouncer TPS | TPS Sluice/PgBouncer | Sluice CPU ms/1k txn | PgBouncer CPU ms/1k txn | CPU Sluice/PgBouncer |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for mode in $MODES; do
  if [ "$WARMUP" -gt 0 ]; then
    for t in "${targets[@]}"; do run "$t" "$mode" 10 "$WARMUP" >/dev/null; done
  fi
  for c in $CLIENTS; do
    for t in "${targets[@]}"; do : >"$work/$t"; done
    for r in $(seq "$ROUNDS"); do
      for i in 0 1 2; do
        t=${targets[$(( (r - 1 + i) % 3 ))]}
        res=$(run "$t" "$mode" "$c" "$DURATION")
        [ -n "$res" ] && echo "$res" >>"$work/$t"
        echo "# round $r $mode c=$c $t: ${res:-failed}" >&2
      done
    done
    # med TARGET FIELD: the median, or "failed" when no run succeeded.
    med() { local m; m=$(cut -d' ' -f"$2" "$work/$1" | median); echo "${m:-failed}"; }
    awk -v m="$mode" -v c="$c" -v dt="$(med direct 1)" -v st="$(med sluice 1)" -v bt="$(med pgbouncer 1)" \
      -v sc="$(med sluice 2)" -v bc="$(med pgbouncer 2)" '
      function ratio(a, b) { return (a + 0 > 0 && b + 0 > 0) ? sprintf("%.2f", a / b) : "–" }
      BEGIN { printf "| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", m, c, dt, st, bt, ratio(st, bt), sc, bc, ratio(sc, bc) }'
  done
done

# Memory per idle client: open IDLE_CLIENTS connections, compare RSS.
IDLE_CLIENTS=${IDLE_CLIENTS:-5000}
if [ "$IDLE_CLIENTS" -gt 0 ] && python3 -c 'import psycopg' 2>/dev/null; then
  before=$(ps -o rss= -p "$sluice_pid")
  python3 - "$IDLE_CLIENTS" "postgresql://$tenant:$key@127.0.0.1:$SLUICE_PG_PORT/$db" "$sluice_pid" <<'PY'
import resource, subprocess, sys
import psycopg
n, url, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
conns = [psycopg.connect(url, autocommit=True) for _ in range(n)]
conns[0].execute("SELECT 1")
rss = int(subprocess.check_output(["ps", "-o", "rss=", "-p", pid]))
open("/tmp/sluice-idle-rss", "w").write(str(rss))
for c in conns:
    c.close()
PY
  after=$(cat /tmp/sluice-idle-rss)
  echo
  echo "idle clients: $IDLE_CLIENTS; gateway RSS $before KiB -> $after KiB; $(( (after - before) * 1024 / IDLE_CLIENTS )) bytes per idle client"
fi

echo
echo "$bouncer_version (max_prepared_statements = $([ "$prepared_ok" = 1 ] && echo "$MAX_PREPARED" || echo unset));" \
  "sluice RSS after the runs: $(ps -o rss= -p "$sluice_pid") KiB; PgBouncer RSS: $(ps -o rss= -p "$bouncer_pid") KiB"
echo "$(nproc) CPUs; DURATION=${DURATION}s; ROUNDS=$ROUNDS (medians; paths alternate within a round); WARMUP=${WARMUP}s; POOL=$POOL"
curl -sf -X DELETE "http://127.0.0.1:$SLUICE_HTTP_PORT/admin/v1/tenants/$tenant?confirm=$tenant" \
  -H "authorization: Bearer dev-operator-token-0123456789" >/dev/null || true
