#!/usr/bin/env bash
# Runs the pymongo suite against mongo-double: installs pymongo if needed, builds the
# binary, starts a replica-set double and a standalone one on free ports, runs the tests,
# and stops the servers on exit. Exits non-zero on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import pymongo, sys; sys.exit(0 if pymongo.version_tuple >= (4, 6) else 1)' 2>/dev/null; then
    "$PYTHON" -m pip install --quiet 'pymongo>=4.6'
fi

(cd "$ROOT" && cargo build --quiet -p mongo-double --bin mongo-double)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/mongo-double"
[[ "$BIN" = /* ]] || BIN="$ROOT/$BIN"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME ARGS... : starts a double on a free port, sets PORT.
start() {
    local name="$1"
    shift
    "$BIN" --port 0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=("$!")
    for _ in $(seq 1 100); do
        if grep -q 'listening on' "$WORK/$name.out" 2>/dev/null; then
            PORT="$(sed -n 's/^mongo-double listening on .*:\([0-9]*\)$/\1/p' "$WORK/$name.out")"
            return 0
        fi
        sleep 0.1
    done
    echo "mongo-double ($name) did not start:" >&2
    cat "$WORK/$name.err" >&2
    return 1
}

start rs
export MONGO_DOUBLE_URI="mongodb://127.0.0.1:$PORT/?directConnection=true"
start standalone --standalone
export MONGO_DOUBLE_STANDALONE_URI="mongodb://127.0.0.1:$PORT/?directConnection=true"
export MONGO_DOUBLE_BIN="$BIN"

cd "$HERE"
"$PYTHON" -m unittest -v test_pymongo
