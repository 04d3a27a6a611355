#!/usr/bin/env bash
# Profiles the gateway under load with perf (cpu-clock sampling, so it works where the
# hardware counters are not exposed, e.g. in a VM) — see PROFILE.md.
#
#   bash bench/profile.sh              # reports on stdout
#   CALLGRAPH=1 bash bench/profile.sh  # also record call graphs (DWARF; slower to report)
#
# For each load, on a fresh gateway: the CPU split by thread and by binary, and the
# functions with at least 1% of the samples (self time). fanin-max-outbox runs the gateway
# with MongoDB configured but unreachable (every reading goes into the sled outbox).
set -euo pipefail

bench_dir=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$bench_dir/.." && pwd)
work=$(mktemp -d /tmp/iotsphere-profile.XXXXXX)
# shellcheck source=bench/common.sh
source "$bench_dir/common.sh"

command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
raise_fd_limit
build
# The release profile strips symbols (Cargo.toml): profile a release build that keeps them
# and line tables, in its own target directory (the first build takes a while).
step "build (release with symbols) for perf"
profile_target=${PROFILE_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}-profiling}
(cd "$root" && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release --quiet -p iotsphere-gateway --target-dir "$profile_target")
gateway_bin=$profile_target/release/iotsphere-gateway
callgraph=()
[ "${CALLGRAPH:-0}" = 1 ] && callgraph=(--call-graph dwarf,8192)

profile() { # NAME "GATEWAY SETTINGS" LOADGEN-SCENARIO-ARGS…
  local name=$1 settings=$2 perf_pid
  shift 2
  step "profile: $name"
  # shellcheck disable=SC2086 # NAME=VALUE words
  start_gateway $settings
  perf record -q -e cpu-clock -F 999 "${callgraph[@]}" -p "$GW_PID" -o "$work/$name.data" >/dev/null 2>&1 &
  perf_pid=$!
  pids+=("$perf_pid")
  sleep 0.5
  "$loadgen" --broker "127.0.0.1:$GW_PORT" --label gateway --pid "$GW_PID" --deadline 60 "$@" \
    >"$work/$name.json"
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  stop "$GW_PID"
  echo "### $name: loadgen $*${settings:+ (gateway with $settings)}"
  echo
  echo '```'
  perf report -i "$work/$name.data" --no-children --sort comm --stdio 2>/dev/null | grep '%' | grep -v '^#'
  echo
  perf report -i "$work/$name.data" --no-children --sort dso --stdio 2>/dev/null | grep '%' | grep -v '^#'
  echo
  perf report -i "$work/$name.data" --no-children --sort comm,sym --percent-limit 1 --stdio -g none 2>/dev/null \
    | grep '%' | grep -v '^#'
  echo '```'
  echo
}

profile fanin-20k "" fanin --publishers 100 --qos 0 --rate 20000 --messages 160000
profile fanin-max "" fanin --publishers 100 --qos 0 --window 20 --messages 400000
profile fanin-max-outbox "$(outbox_env)" fanin --publishers 100 --qos 0 --window 20 --messages 200000
profile roundtrip "" roundtrip --devices 1000 --rounds 6 --rate 500
