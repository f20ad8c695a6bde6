#!/usr/bin/env bash
# Build PgBouncer from its source for the benchmark baseline
# (benches/pgbench_compare.sh). Debian's package is 1.18, which cannot keep
# prepared statements in transaction mode; the comparison wants 1.25. The
# source comes from outside this repository (nothing of it is committed):
#
#   benches/build-pgbouncer.sh SRC [TAG]
#
# SRC is a PgBouncer git repository (bare or not; e.g. a clone of
# https://github.com/pgbouncer/pgbouncer), from which TAG (default
# pgbouncer_1_25_2, libusual vendored) is built, or an unpacked source tree
# or release tarball. Installs the build tools from Debian, builds with
# `./configure --without-cares` and `make pgbouncer`, and installs the
# binary as $SLUICE_STACK_DIR/pgbouncer/bin/pgbouncer (default .stack/…),
# where pgbench_compare.sh looks first. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?usage: benches/build-pgbouncer.sh SRC [TAG]}
TAG=${2:-pgbouncer_1_25_2}
STACK=${SLUICE_STACK_DIR:-$PWD/.stack}
OUT=$STACK/pgbouncer
log() { echo "[build-pgbouncer] $*" >&2; }

need=(autoconf automake libtool pkg-config libevent-dev libssl-dev make gcc git)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    SUDO=; [[ $(id -u) != 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

work=$(mktemp -d /tmp/pgbouncer-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
if [[ -f $SRC && $SRC == *.tar.* ]]; then
    tar -xf "$SRC" -C "$work/src" --strip-components=1
elif git --git-dir="$SRC" rev-parse --verify -q "$TAG^{commit}" >/dev/null 2>&1; then
    git --git-dir="$SRC" archive "$TAG" | tar -x -C "$work/src"
elif git -C "$SRC" rev-parse --verify -q "$TAG^{commit}" >/dev/null 2>&1; then
    git -C "$SRC" archive "$TAG" | tar -x -C "$work/src"
elif [[ -f $SRC/configure.ac || -f $SRC/configure ]]; then
    cp -a "$SRC/." "$work/src/"
else
    echo "$SRC is neither a PgBouncer git repository with tag $TAG, a source tree nor a tarball" >&2
    exit 1
fi

cd "$work/src"
log "building $(grep -o 'AC_INIT(\[[^]]*\], *\[[^]]*\]' configure.ac 2>/dev/null | sed 's/.*\[//;s/\]//' || echo "$TAG")"
[[ -x configure ]] || ./autogen.sh >"$work/autogen.log" 2>&1 || { tail -n 20 "$work/autogen.log" >&2; exit 1; }
./configure --without-cares --prefix="$OUT" >"$work/configure.log" 2>&1 || { tail -n 20 "$work/configure.log" >&2; exit 1; }
make -j"$(nproc)" pgbouncer >"$work/make.log" 2>&1 || { tail -n 30 "$work/make.log" >&2; exit 1; }
mkdir -p "$OUT/bin"
install -m 0755 pgbouncer "$OUT/bin/pgbouncer"
"$OUT/bin/pgbouncer" --version >&2
echo "$OUT/bin/pgbouncer"
