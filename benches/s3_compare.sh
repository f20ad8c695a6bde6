#!/usr/bin/env bash
# The S3 door vs the object store directly, in one run (issue 14).
#
# Starts a release `sluice serve` (S3 door on a free loopback port) against the
# local stack, creates a tenant with its rate limits lifted and an S3 access
# key, and measures with the same clients on both sides, one side after the
# other:
#   - 4 KiB GET: wrk (S3C_CONNECTIONS connections, S3C_SECONDS s) on a SigV4
#     presigned URL of one 4 KiB object, via the door and straight from Garage
#     (same object, the gateway's own store credentials): req/s, p50/p99, and
#     the CPU time the gateway and Garage spent per request (utime+stime from
#     /proc/PID/stat over the run); and, for comparison, the same GET through
#     `/v1/objects` with the tenant's service key;
#   - 64 MiB PUT: curl -T of a 64 MiB random file to a presigned PUT URL,
#     S3C_PUTS times per side, alternating: median MiB/s and gateway CPU per
#     PUT; and, to tell the door's cost from the write pattern, the same bytes
#     straight to Garage the way the gateway writes a body of unknown length (a multipart upload of
#     8 MiB parts, one at a time);
#   - memory: the gateway's VmRSS/VmHWM (/proc/PID/status) after start, after
#     streaming S3C_STREAM_MIB (1 GiB) up through the door and after streaming
#     it back down (sha256 checked), before the other measurements.
# Presigned URLs (made by boto3) keep the client's own signing out of the
# loop; the door still checks each request's signature and expiry.
# Prints markdown; deletes the tenant at the end.
#
# Usage: benches/s3_compare.sh   (stack up: scripts/stack up; wrk from Debian
#        is installed by `scripts/stack bench-tools`; boto3 from PyPI:
#        scripts/test installs it)
# Env: S3C_SECONDS (10), S3C_CONNECTIONS (16), S3C_PUTS (5), S3C_STREAM_MIB
# (1024; 0 skips), SLUICE_BIN (measure this binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${S3C_SECONDS:-10}
conns=${S3C_CONNECTIONS:-16}
puts=${S3C_PUTS:-5}
stream_mib=${S3C_STREAM_MIB:-1024}
command -v wrk >/dev/null || scripts/stack bench-tools
python3 -c 'import boto3' 2>/dev/null || { echo "s3_compare: boto3 is missing (pip install boto3)" >&2; exit 1; }
eval "$(scripts/stack env)"
export SLUICE_CONFIG=${SLUICE_CONFIG:-config/dev.toml}
# Garage's pid, for its CPU time (the stack's state dir: SLUICE_STACK_DIR
# when the stack was started from another checkout).
garage_pid=$(cat "$SLUICE_STACK_DIR/garage/garage.pid" 2>/dev/null) && [[ -d /proc/$garage_pid ]] || {
    echo "s3_compare: no running Garage under $SLUICE_STACK_DIR (scripts/stack up, or set SLUICE_STACK_DIR)" >&2
    exit 1
}
if [[ -z ${SLUICE_BIN:-} ]]; then
    cargo build --locked --release -p sluice --bin sluice >/dev/null
    SLUICE_BIN=${CARGO_TARGET_DIR:-target}/release/sluice
fi
work=$(mktemp -d /tmp/sluice-s3c.XXXXXX)
name="bench-s3c-$(date +%s)" pid=""
cleanup() {
    if [[ -n $pid ]]; then
        "$bin" --json tenant delete "$name" --yes >/dev/null 2>&1 || true
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# A copy: a build running meanwhile cannot swap the binary under the bench.
bin=$work/sluice
cp "$SLUICE_BIN" "$bin"
"$bin" migrate up --control-only >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port) s3_port=$(free_port) pg_port=$(free_port)
# Quiet logs and no background schedulers: only the measured requests run.
SLUICE_LOG__LEVEL=warn SLUICE_BACKUP__SCHEDULER=false SLUICE_USAGE__METER=false SLUICE_RETENTION__INTERVAL_S=0 \
    SLUICE_SERVER__S3_ADDR="127.0.0.1:$s3_port" SLUICE_SERVER__PG_ADDR="127.0.0.1:$pg_port" \
    "$bin" serve --http-addr "127.0.0.1:$http_port" >"$work/gateway.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null && break; sleep 0.1; done

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
tenant=$("$bin" --json tenant create "$name")
bucket=$(json '["tenant"]["bucket"]' <<<"$tenant")
service_key=$(json '["service_key"]["key"]' <<<"$tenant")
# Lift the tenant's limits: the door's side must not be capped by them.
"$bin" --json tenant quota set "$name" --http-rps 1000000 --http-burst 1000000 \
    --bytes-in-per-sec 1000000000000 --bytes-out-per-sec 1000000000000 --max-object-bytes $((4 << 30)) >/dev/null
key=$("$bin" --json s3 credentials create --tenant "$name")
export S3C_KEY_ID S3C_SECRET
S3C_KEY_ID=$(json '["access_key_id"]' <<<"$key")
S3C_SECRET=$(json '["secret_access_key"]' <<<"$key")

# One 4 KiB object (put through the door, read from both sides) and the
# presigned URLs, one per line: door GET, direct GET, door PUT, direct PUT,
# door PUT and GET of the streamed object.
head -c 4096 /dev/urandom >"$work/4k.bin"
head -c $((64 << 20)) /dev/urandom >"$work/64m.bin"
mapfile -t urls < <(python3 - "http://127.0.0.1:$s3_port" "$name" "$bucket" "$work/4k.bin" <<'PY'
import os, sys
import boto3
from botocore.config import Config

door_endpoint, door_bucket, store_bucket, small = sys.argv[1:5]
cfg = Config(signature_version="s3v4", s3={"addressing_style": "path"})
door = boto3.client("s3", endpoint_url=door_endpoint, region_name="us-east-1", config=cfg,
                    aws_access_key_id=os.environ["S3C_KEY_ID"], aws_secret_access_key=os.environ["S3C_SECRET"])
store = boto3.client("s3", endpoint_url=os.environ["SLUICE_S3__ENDPOINT"], region_name=os.environ["SLUICE_S3__REGION"],
                     config=cfg, aws_access_key_id=os.environ["SLUICE_S3__ACCESS_KEY_ID"],
                     aws_secret_access_key=os.environ["SLUICE_S3__SECRET_ACCESS_KEY"])
with open(small, "rb") as f:
    door.put_object(Bucket=door_bucket, Key="bench/4k.bin", Body=f.read())
sign = lambda c, op, b, k: c.generate_presigned_url(op, Params={"Bucket": b, "Key": k}, ExpiresIn=3600)
print(sign(door, "get_object", door_bucket, "bench/4k.bin"))
print(sign(store, "get_object", store_bucket, "bench/4k.bin"))
print(sign(door, "put_object", door_bucket, "bench/64m-door.bin"))
print(sign(store, "put_object", store_bucket, "bench/64m-direct.bin"))
print(sign(door, "put_object", door_bucket, "bench/stream.bin"))
print(sign(door, "get_object", door_bucket, "bench/stream.bin"))
PY
)

ticks_per_s=$(getconf CLK_TCK)
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
mem() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MiB  ", $1, $2 / 1024 }' "/proc/$pid/status"; echo; }
now() { date +%s.%N; }
echo "gateway pid $pid (S3 door 127.0.0.1:$s3_port), Garage pid $garage_pid, tenant $name"

# Memory while streaming a large object up and down through the door.
if ((stream_mib > 0)); then
    printf 'after start:    '; mem
    head -c "$((stream_mib << 20))" /dev/urandom >"$work/stream.bin"
    sum_up=$(sha256sum "$work/stream.bin" | cut -d' ' -f1)
    t0=$(now)
    curl -sf -T "$work/stream.bin" "${urls[4]}" >/dev/null
    up=$(python3 -c "print(f'{$stream_mib / ($(now) - $t0):.0f}')")
    rm -f "$work/stream.bin"
    printf 'after %s MiB up:   ' "$stream_mib"; mem
    t0=$(now)
    sum_down=$(curl -sf "${urls[5]}" | sha256sum | cut -d' ' -f1)
    down=$(python3 -c "print(f'{$stream_mib / ($(now) - $t0):.0f}')")
    printf 'after %s MiB down: ' "$stream_mib"; mem
    [[ $sum_up == "$sum_down" ]] || { echo "sha256 MISMATCH"; exit 1; }
    echo "sha256 matches; up ${up} MiB/s, down ${down} MiB/s"
fi

# 4 KiB GET, door then direct.
echo
echo "4 KiB GET: wrk -t2 -c$conns -d${seconds}s --latency, presigned SigV4 URL"
echo "| path | req/s | p50 ms | p99 ms | non-2xx/errors | gateway CPU ms/req | Garage CPU ms/req |"
echo "|---|---|---|---|---|---|---|"
get_row() {
    local label=$1 g0 s0 out
    shift
    g0=$(cpu "$pid") s0=$(cpu "$garage_pid")
    out=$(wrk -t2 -c"$conns" -d"${seconds}s" --latency "$@")
    WRK_OUT=$out python3 - "$label" "$(($(cpu "$pid") - g0))" "$(($(cpu "$garage_pid") - s0))" "$ticks_per_s" <<'PY'
import os, re, sys
label, g, s, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
text = os.environ["WRK_OUT"]
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
bad += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
per = lambda ticks: f"{ticks / hz * 1000 / max(total, 1):.3f}"
print(f"| {label} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {bad} | {per(g)} | {per(s)} |")
PY
}
door_get=$(get_row "through the S3 door" "${urls[0]}")
direct_get=$(get_row "direct (Garage)" "${urls[1]}")
http_get=$(get_row "through /v1/objects (for comparison)" -H "authorization: Bearer $service_key" \
    "http://127.0.0.1:$http_port/v1/objects/bench/4k.bin")
printf '%s\n%s\n%s\n' "$door_get" "$direct_get" "$http_get"
ratio() { python3 -c "a=float('$1'.split('|')[2]); b=float('$2'.split('|')[2]); print(f'{a / b:.2f}')"; }
echo "req/s ratio door/direct: $(ratio "$door_get" "$direct_get")"

# 64 MiB PUT, alternating door and direct.
echo
echo "64 MiB PUT: curl -T to a presigned SigV4 URL, $puts times per side (alternating)"
door_rates=() direct_rates=() door_ticks=0 door_store_ticks=0 direct_store_ticks=0
for _ in $(seq 1 "$puts"); do
    g0=$(cpu "$pid") s0=$(cpu "$garage_pid") t0=$(now)
    curl -sf -T "$work/64m.bin" "${urls[2]}" >/dev/null
    door_rates+=("$(python3 -c "print(64 / ($(now) - $t0))")")
    door_ticks=$((door_ticks + $(cpu "$pid") - g0))
    door_store_ticks=$((door_store_ticks + $(cpu "$garage_pid") - s0))
    s0=$(cpu "$garage_pid") t0=$(now)
    curl -sf -T "$work/64m.bin" "${urls[3]}" >/dev/null
    direct_rates+=("$(python3 -c "print(64 / ($(now) - $t0))")")
    direct_store_ticks=$((direct_store_ticks + $(cpu "$garage_pid") - s0))
done
per_put() { python3 -c "print(f'{$1 / $ticks_per_s * 1000 / $puts:.0f}')"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# What the gateway does with a body above 8 MiB: a multipart upload of 8 MiB
# parts, one at a time. The same, straight to Garage (presigned part URLs,
# Python's http.client; timed in the process, from create to complete).
parts_rates=()
for _ in $(seq 1 "$puts"); do
    parts_rates+=("$(python3 - "$bucket" "$work/64m.bin" <<'PY'
import http.client, os, sys, time, urllib.parse
import boto3
from botocore.config import Config

bucket, path = sys.argv[1:3]
store = boto3.client("s3", endpoint_url=os.environ["SLUICE_S3__ENDPOINT"], region_name=os.environ["SLUICE_S3__REGION"],
                     config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
                     aws_access_key_id=os.environ["SLUICE_S3__ACCESS_KEY_ID"],
                     aws_secret_access_key=os.environ["SLUICE_S3__SECRET_ACCESS_KEY"])
data = open(path, "rb").read()
part = 8 << 20
key = "bench/64m-parts.bin"
t0 = time.monotonic()
upload = store.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
etags = []
for n, off in enumerate(range(0, len(data), part), start=1):
    url = urllib.parse.urlsplit(store.generate_presigned_url(
        "upload_part", Params={"Bucket": bucket, "Key": key, "UploadId": upload, "PartNumber": n}, ExpiresIn=600))
    conn = http.client.HTTPConnection(url.hostname, url.port)
    conn.request("PUT", f"{url.path}?{url.query}", body=data[off:off + part])
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    etags.append({"PartNumber": n, "ETag": resp.getheader("ETag")})
    conn.close()
store.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": etags})
print(len(data) / (1 << 20) / (time.monotonic() - t0))
PY
)")
done
dm=$(median "${door_rates[@]}") xm=$(median "${direct_rates[@]}") pm=$(median "${parts_rates[@]}")
echo "| path | median MiB/s | runs (MiB/s) | gateway CPU ms/PUT | Garage CPU ms/PUT |"
echo "|---|---|---|---|---|"
printf '| through the S3 door | %.1f | %s | %s | %s |\n' "$dm" "$(printf '%.0f ' "${door_rates[@]}")" \
    "$(per_put "$door_ticks")" "$(per_put "$door_store_ticks")"
printf '| direct (Garage) | %.1f | %s | – | %s |\n' "$xm" "$(printf '%.0f ' "${direct_rates[@]}")" "$(per_put "$direct_store_ticks")"
printf '| direct, 8 MiB parts one at a time (how the gateway writes a body of unknown length) | %.1f | %s | – | – |\n' "$pm" \
    "$(printf '%.0f ' "${parts_rates[@]}")"
echo "MiB/s ratio door/direct: $(python3 -c "print(f'{$dm / $xm:.2f}')")"
echo
printf 'at the end:     '; mem
