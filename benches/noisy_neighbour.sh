#!/usr/bin/env bash
# The noisy-neighbour bench of issue 12: builds the release gateway, then
# runs benches/noisy_neighbour.rs, which starts it as its own process and
# prints B's latency and errors and the gateway's peak RSS per phase as
# markdown (progress and per-phase details on stderr).
# Needs the local stack up (`scripts/stack up`) and the guest plugins
# (scripts/build-plugins, or NN_PLUGIN_DIR pointing at a built set).
#
#   benches/noisy_neighbour.sh
#
# Env: NN_RATE (B's requests/s, 200), NN_SECONDS (per attack, 10),
# NN_QUIET_SECONDS (5), NN_A_TIMEOUT_MS (A's statement timeout quota, 5000),
# NN_ATTACKS (comma-separated subset: locks, plugins, compile, semcache,
# points, repeat_http, repeat_pg, partial_query, timeout, work_mem),
# NN_PLUGIN_DIR, SLUICE_BIN (another gateway binary).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/stack env)"
cargo build --release --locked -p sluice --bin sluice
# `cargo bench` builds its own `sluice` (dev-dependency features unified in),
# at the same path: measure a copy of the release build instead.
bin=$(mktemp /tmp/sluice-noisy.XXXXXX)
trap 'rm -f "$bin"' EXIT
cp "${CARGO_TARGET_DIR:-target}/release/sluice" "$bin"
chmod 755 "$bin"
SLUICE_BIN=${SLUICE_BIN:-$bin} cargo bench --locked -p sluice --bench noisy_neighbour
