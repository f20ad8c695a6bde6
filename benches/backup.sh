#!/usr/bin/env bash
# Backup and restore of one tenant (issue 13): builds the release gateway,
# fills a fresh tenant with rows, objects and a vector collection, then
# times, each with the release `sluice` CLI against the local stack:
#   full backup, unchanged incremental backup, verify, restore in place
#   (the RTO, HNSW rebuild included) and restore as a new tenant.
# Prints a markdown table (wall seconds, CPU seconds, throughput); progress on stderr.
#
#   benches/backup.sh
#
# Env: BK_ROWS_MB (1024), BK_OBJECTS_MB (1024, as 4 MiB random objects),
# BK_POINTS (100000), BK_DIM (384), SLUICE_BIN (another gateway binary),
# BK_KEEP=1 keeps the tenants afterwards.
#
# Setup writes rows through the Postgres door (psql) and objects through
# the HTTP door; the collection is created over HTTP and its points are
# generated in SQL by the admin role (100k HTTP upserts would time the
# upsert path, not backups).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack env)"
export SLUICE_CONFIG=${SLUICE_CONFIG:-config/dev.toml}
if [[ -z ${SLUICE_BIN:-} ]]; then cargo build --release --locked -p sluice --bin sluice >&2; fi
BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
ROWS_MB=${BK_ROWS_MB:-1024}
OBJECTS_MB=${BK_OBJECTS_MB:-1024}
POINTS=${BK_POINTS:-100000}
DIM=${BK_DIM:-384}
HTTP=127.0.0.1:18480
PG=127.0.0.1:16480
PSQL="$SLUICE_PG_BIN/psql"
ADMIN_URL=postgres://sluice:sluice-dev@127.0.0.1:54320
work=$(mktemp -d /tmp/sluice-bk-bench.XXXXXX)
gw_pid=
cleanup() {
    [[ -n $gw_pid ]] && kill "$gw_pid" 2>/dev/null || true
    if [[ ${BK_KEEP:-0} != 1 && -n ${T:-} ]]; then
        for t in "$T" "$T-copy"; do "$BIN" tenant delete "$t" --yes >/dev/null 2>&1 || true; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

SLUICE_SERVER__HTTP_ADDR=$HTTP SLUICE_SERVER__PG_ADDR=$PG SLUICE_BACKUP__SCHEDULER=false \
    SLUICE_RETENTION__INTERVAL_S=0 SLUICE_USAGE__METER=false "$BIN" serve >"$work/gw.log" 2>&1 &
gw_pid=$!
for _ in $(seq 100); do curl -fs "http://$HTTP/healthz" >/dev/null && break; sleep 0.1; done

T=bkbench-$(date +%s)
"$BIN" tenant create "$T" --json >"$work/tenant.json"
KEY=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['service_key']['key'])" "$work/tenant.json")
DB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tenant']['db_name'])" "$work/tenant.json")
"$BIN" tenant quota set "$T" --statement-timeout-ms 600000 >/dev/null

log "rows: $ROWS_MB MB through the Postgres door"
DOOR="postgres://$T:$KEY@$PG/$DB?sslmode=disable"
"$PSQL" -X -q "$DOOR" -c "CREATE TABLE events (id bigint PRIMARY KEY, kind int, body text, at timestamptz DEFAULT now())"
per=100000 # rows of ~1 KiB per statement
total=$((ROWS_MB * 1024))
for ((start = 1; start <= total; start += per)); do
    end=$((start + per - 1)); ((end > total)) && end=$total
    "$PSQL" -X -q "$DOOR" -c "INSERT INTO events (id, kind, body) SELECT g, g % 17, repeat(md5(g::text), 30) FROM generate_series($start, $end) g"
done

log "objects: $OBJECTS_MB MB as 4 MiB random objects through the HTTP door"
for ((i = 0; i < OBJECTS_MB / 4; i++)); do
    head -c 4194304 /dev/urandom >"$work/obj"
    curl -fsS -o /dev/null -X PUT "http://$HTTP/v1/objects/data/$i.bin" -H "authorization: Bearer $KEY" \
        -H "x-sluice-meta-n: $i" --data-binary @"$work/obj"
done

log "collection: $POINTS x $DIM"
curl -fsS -o /dev/null -X PUT "http://$HTTP/v1/collections/vecs" -H "authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d "{\"dimension\": $DIM, \"metric\": \"cosine\"}"
# Loaded without its HNSW index, which is then built in bulk (as a restore does).
PGOPTIONS='-c maintenance_work_mem=512MB' "$PSQL" -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL/$DB" <<SQL
CREATE TEMP TABLE hnsw AS SELECT indexname, indexdef FROM pg_indexes
    WHERE schemaname = 'sluice' AND tablename = 'c_vecs' AND indexdef LIKE '%hnsw%';
DO \$\$ BEGIN EXECUTE (SELECT format('DROP INDEX sluice.%I', indexname) FROM hnsw); END \$\$;
INSERT INTO sluice.c_vecs (id, embedding, metadata)
    SELECT g::text, (SELECT array_agg(random()::real) FROM generate_series(1, $DIM) d WHERE g > 0)::vector,
           jsonb_build_object('g', g) FROM generate_series(1, $POINTS) g;
DO \$\$ BEGIN EXECUTE (SELECT indexdef FROM hnsw); END \$\$;
SQL
kill "$gw_pid"; gw_pid=

# `run NAME CMD…`: wall and CPU seconds of the command, its stdout kept.
run() {
    local name=$1; shift
    log "$name"
    /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$@" >"$work/$name.out"
}
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$work/$1.out" "$2"; }

run full "$BIN" backup create --tenant "$T" --json
run incremental "$BIN" backup create --tenant "$T" --json
ID=$(field incremental "d['id']")
run verify "$BIN" backup verify "$ID" --json
run restore_in_place "$BIN" backup restore "$ID" --yes --json
run restore_as_new "$BIN" backup restore "$ID" --as "$T-copy" --json

db_mb=$(field full "round(d['db_bytes'] / 1048576)")
obj_mb=$(field full "round(d['object_bytes'] / 1048576)")
size_mb=$(field full "(d['db_bytes'] + d['object_bytes']) / 1048576")
echo
echo "Tenant: ${ROWS_MB} MB of rows (pg_dump ${db_mb} MiB), ${obj_mb} MiB of objects ($((OBJECTS_MB / 4)) × 4 MiB random), ${POINTS} × ${DIM} collection; $(nproc) cores."
echo
echo "| step | wall s | CPU s (user+sys, sluice) | MB/s of tenant data | notes |"
echo "|---|---:|---:|---:|---|"
for step in full incremental verify restore_in_place restore_as_new; do
    read -r wall user sys <"$work/$step.time"
    cpu=$(python3 -c "print(round($user + $sys, 1))")
    rate=$(python3 -c "print(round($size_mb / $wall, 1))")
    note=""
    case $step in
        full) note="uploaded $(field full "round(d['uploaded_bytes'] / 1048576)") MiB, stored $(field full "round(d['stored_bytes'] / 1048576)") MiB" ;;
        incremental) note="uploaded $(field incremental "round(d['uploaded_bytes'] / 1024)") KiB" ;;
        verify) note="ok=$(field verify "d['ok']"), $(field verify "d['tables_checked']") tables, $(field verify "d['objects_checked']") objects" ;;
        restore_in_place) note="fenced $(field restore_in_place "round(d['fenced_ms'] / 1000, 1)") s; objects unchanged $(field restore_in_place "d['objects_unchanged']")" ;;
        restore_as_new) note="objects written $(field restore_as_new "d['objects_written']")" ;;
    esac
    echo "| $step | $wall | $cpu | $rate | $note |"
done
