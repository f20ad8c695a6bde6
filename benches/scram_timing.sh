#!/usr/bin/env bash
# Does the Postgres door's login timing tell tenant names apart? Sends a
# StartupMessage for three kinds of user name — a tenant that exists, a
# valid name no tenant has, and a name that is not even valid — and times
# the door's first reply (AuthenticationSASL, before any password) and,
# after a client-first message, the server-first message (with the salt,
# real or fake), SAMPLES times each, the kinds interleaved so they see the
# same machine noise.
# Prints the median and p90 per kind and the ratio of each median to the
# existing tenant's. Needs the local stack up and a sluice binary.
#
#   cargo build --release -p sluice && benches/scram_timing.sh
#
# Env: SAMPLES (default 300), SLUICE_BIN (default target/release/sluice).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack env)"

SAMPLES=${SAMPLES:-300}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
SLUICE_PG_PORT=${SLUICE_PG_PORT:-16532} SLUICE_HTTP_PORT=${SLUICE_HTTP_PORT:-18180}
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN (cargo build --release -p sluice)" >&2; exit 1; }

work=$(mktemp -d /tmp/sluice-scram.XXXXXX)
cleanup() {
  [ -n "${sluice_pid:-}" ] && kill "$sluice_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export SLUICE_SERVER__PG_ADDR="127.0.0.1:$SLUICE_PG_PORT" SLUICE_SERVER__HTTP_ADDR="127.0.0.1:$SLUICE_HTTP_PORT"
export SLUICE_LOG__LEVEL=warn SLUICE_USAGE__METER=false
"$SLUICE_BIN" --config config/dev.toml serve >"$work/sluice.log" 2>&1 &
sluice_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$SLUICE_HTTP_PORT/healthz" >/dev/null && break; sleep 0.2; done
tenant="scram-$(date +%s)"
curl -sf -X POST "http://127.0.0.1:$SLUICE_HTTP_PORT/admin/v1/tenants" \
  -H "authorization: Bearer dev-operator-token-0123456789" -H 'content-type: application/json' \
  -d "{\"name\":\"$tenant\"}" >/dev/null

python3 - "$SLUICE_PG_PORT" "$SAMPLES" "$tenant" <<'PY'
import socket, statistics, struct, sys, time

port, samples, tenant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
kinds = {
    "existing tenant": tenant,
    "unknown valid name": "nobody-" + tenant[6:],
    "invalid name": "Not A Tenant!",
}

def recv_message(s):
    head = b""
    while len(head) < 5:
        chunk = s.recv(5 - len(head))
        assert chunk, "connection closed"
        head += chunk
    n = struct.unpack("!I", head[1:5])[0] - 4
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        assert chunk, "connection closed"
        body += chunk
    return head[:1], body

def first_reply(user):
    """(ms to the mechanism list, ms from the client-first message to the salt)"""
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + user.encode() + b"\0\0"
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        t0 = time.perf_counter()
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        tag, _ = recv_message(s)
        t1 = time.perf_counter()
        assert tag == b"R", f"{user}: first reply {tag!r}, expected an authentication request"
        first = b"n,,n=,r=abcdefghijklmnopqrstuvwx"
        msg = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
        s.sendall(b"p" + struct.pack("!I", len(msg) + 4) + msg)
        tag, _ = recv_message(s)
        t2 = time.perf_counter()
        assert tag == b"R", f"{user}: server-first {tag!r}, expected SASLContinue"
        return (t1 - t0) * 1000, (t2 - t0) * 1000
    finally:
        s.close()

times = {k: ([], []) for k in kinds}
for _ in range(5):  # warm-up
    for user in kinds.values():
        first_reply(user)
for _ in range(samples):
    for k, user in kinds.items():
        a, b = first_reply(user)
        times[k][0].append(a)
        times[k][1].append(b)
for i, what in enumerate(["first reply (mechanisms)", "server-first (salt), from the start"]):
    base = statistics.median(times["existing tenant"][i])
    print(f"\n{what}:\n")
    print(f"| user name | median ms | p90 ms | median ÷ existing |")
    print(f"|---|---|---|---|")
    for k, v in times.items():
        v = sorted(v[i])
        p90 = v[int(len(v) * 0.9) - 1]
        print(f"| {k} | {statistics.median(v):.3f} | {p90:.3f} | {statistics.median(v) / base:.2f} |")
PY
