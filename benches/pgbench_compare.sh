#!/usr/bin/env bash
# pgbench -S through three paths, in one run: direct Postgres, Sluice's
# Postgres door (transaction pooling), and Debian's pgbouncer (transaction
# mode), for -M simple and -M prepared at 1, 10 and 50 clients. Prints a
# markdown table (TPS, mean and p50 latency). Needs the local stack up
# (`scripts/stack up`), a release build of sluice and `pgbouncer`.
#
#   cargo build --release -p sluice && benches/pgbench_compare.sh
#
# Env: DURATION (s per run, default 5), CLIENTS ("1 10 50"), POOL (upstream
# connections for Sluice and pgbouncer, default 10), SLUICE_BIN, IDLE_CLIENTS
# (idle connections for the memory figure, default 5000; 0 skips; needs psycopg).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack env)"

DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-"1 10 50"}
POOL=${POOL:-10}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
PGBENCH="$SLUICE_PG_BIN/pgbench"
PG_HOST=127.0.0.1 PG_PORT=54320 ADMIN_USER=sluice ADMIN_PW=sluice-dev
SLUICE_PG_PORT=${SLUICE_PG_PORT:-16432} SLUICE_HTTP_PORT=${SLUICE_HTTP_PORT:-18080} BOUNCER_PORT=${BOUNCER_PORT:-16433}
command -v pgbouncer >/dev/null || { echo "pgbouncer missing: apt-get install -y pgbouncer" >&2; exit 1; }
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN (cargo build --release -p sluice)" >&2; exit 1; }

work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  [ -n "${sluice_pid:-}" ] && kill "$sluice_pid" 2>/dev/null || true
  [ -n "${bouncer_pid:-}" ] && kill "$bouncer_pid" 2>/dev/null || true
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
db="tenant_${tenant//-/_}"
PGPASSWORD=$ADMIN_PW "$SLUICE_PG_BIN/psql" -qX -h $PG_HOST -p $PG_PORT -U $ADMIN_USER -d sluice_control -c \
  "UPDATE quotas SET pg_pool_size = $POOL, pg_max_connections = 100000, query_rps = 1000000, query_burst = 1000000
   WHERE tenant_id = (SELECT id FROM tenants WHERE name = '$tenant')" >/dev/null
PGPASSWORD=$key "$PGBENCH" -i -s 1 -q -h 127.0.0.1 -p "$SLUICE_PG_PORT" -U "$tenant" "$db" >"$work/init.log" 2>&1

# 2. pgbouncer (transaction mode) in front of the same database, run as the
# stack's unprivileged user (pgbouncer refuses root).
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
echo "\"bench\" \"bench\"" >"$work/userlist.txt"
chmod 644 "$work"/*.ini "$work"/userlist.txt
mkdir -p "$work/bouncer" && chown sluice-pg "$work/bouncer"
runuser -u sluice-pg -- pgbouncer "$work/pgbouncer.ini" >"$work/pgbouncer.out" 2>&1 &
bouncer_pid=$!
sleep 1

# One run: prints "tps|mean_ms|p50_ms" or "failed".
run() { # target mode clients
  local target=$1 mode=$2 c=$3 host_args pw
  case $target in
    direct) host_args=(-h $PG_HOST -p $PG_PORT -U $ADMIN_USER); pw=$ADMIN_PW ;;
    sluice) host_args=(-h 127.0.0.1 -p "$SLUICE_PG_PORT" -U "$tenant"); pw=$key ;;
    pgbouncer) host_args=(-h 127.0.0.1 -p "$BOUNCER_PORT" -U bench); pw=bench ;;
  esac
  local dir="$work/$target-$mode-$c"; mkdir -p "$dir"
  local threads=$(( c < 2 ? 1 : 2 ))
  if ! (cd "$dir" && PGPASSWORD=$pw "$PGBENCH" -S -M "$mode" -c "$c" -j "$threads" -T "$DURATION" -l \
        "${host_args[@]}" "$db" >out.txt 2>err.txt); then
    echo "$target $mode $c failed: $(tail -n 3 "$dir/err.txt")" >&2
    [ "$target" = pgbouncer ] && tail -n 5 "$work/bouncer/pgbouncer.log" "$work/pgbouncer.out" >&2 2>/dev/null
    echo "failed"; return
  fi
  local tps mean p50
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$dir/out.txt")
  mean=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$dir/out.txt")
  p50=$(cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]/1000}')
  echo "${tps%.*}|$mean|$p50"
}

echo "| mode | clients | direct TPS | Sluice TPS | pgbouncer TPS | direct mean / p50 ms | Sluice mean / p50 ms | pgbouncer mean / p50 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for mode in simple prepared; do
  for c in $CLIENTS; do
    d=$(run direct "$mode" "$c"); s=$(run sluice "$mode" "$c"); b=$(run pgbouncer "$mode" "$c")
    f() { [ "$1" = failed ] && echo "failed" || echo "$1" | cut -d'|' -f"$2"; }
    lat() { [ "$1" = failed ] && echo "–" || echo "$(echo "$1" | cut -d'|' -f2) / $(echo "$1" | cut -d'|' -f3)"; }
    echo "| $mode | $c | $(f "$d" 1) | $(f "$s" 1) | $(f "$b" 1) | $(lat "$d") | $(lat "$s") | $(lat "$b") |"
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
echo "sluice RSS after the runs: $(ps -o rss= -p "$sluice_pid") KiB; $(nproc) CPUs; DURATION=${DURATION}s; POOL=$POOL"
curl -sf -X DELETE "http://127.0.0.1:$SLUICE_HTTP_PORT/admin/v1/tenants/$tenant?confirm=$tenant" \
  -H "authorization: Bearer dev-operator-token-0123456789" >/dev/null || true
