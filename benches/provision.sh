#!/usr/bin/env bash
# Tenant provisioning time against the local stack: creates N tenants one after
# another with `sluice tenant create --json` (elapsed_ms is measured inside the
# gateway, from the first control-plane write to the committed activation),
# then deletes them and prints p50/p90/p99/max for create and delete.
#
# Usage: benches/provision.sh [N=30]   (stack must be up: scripts/stack up)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-30}
eval "$(scripts/stack env)"
export SLUICE_CONFIG=${SLUICE_CONFIG:-config/dev.toml}
cargo build --locked --release -p sluice --bin sluice >/dev/null
bin=${CARGO_TARGET_DIR:-target}/release/sluice
"$bin" migrate up --control-only >/dev/null
run=$(date +%s)
creates=() deletes=()
for i in $(seq 1 "$n"); do
    name="bench-$run-$i"
    creates+=("$("$bin" --json tenant create "$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["elapsed_ms"])')")
done
for i in $(seq 1 "$n"); do
    name="bench-$run-$i"
    deletes+=("$("$bin" --json tenant delete "$name" --yes | python3 -c 'import json,sys; print(json.load(sys.stdin)["elapsed_ms"])')")
done
python3 - "$n" "${creates[*]}" "${deletes[*]}" <<'PY'
import sys, statistics
n = int(sys.argv[1])
def report(label, xs):
    xs = sorted(float(x) for x in xs.split())
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
    print(f"{label:<7} n={len(xs)}  p50={q(0.5):.0f} ms  p90={q(0.9):.0f} ms  p99={q(0.99):.0f} ms  max={xs[-1]:.0f} ms  mean={statistics.mean(xs):.0f} ms")
report("create", sys.argv[2])
report("delete", sys.argv[3])
PY
