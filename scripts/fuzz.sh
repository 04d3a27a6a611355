#!/usr/bin/env bash
# Coverage-guided fuzzing of everything a device can send (fuzz/README.md): builds the
# cargo-fuzz targets of fuzz/ and runs each for a bounded time with libFuzzer.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    # default: 60 s, every target
#
# Runs on the stable toolchain: libFuzzer needs only stable -C flags for its coverage
# instrumentation; what needs nightly is a sanitizer (-Zsanitizer), and this is safe Rust,
# so the targets run without one (`--sanitizer none`), with debug assertions and overflow
# checks on (`--debug-assertions`). Exits non-zero if any target crashes (a panic, a failed
# property, a stack overflow, a timeout or running out of memory) and prints where the
# crashing input was saved; `fuzz/artifacts-found/<target>/` reproducers are replayed first.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
[ $# -gt 0 ] && shift
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;; esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(codec_request telemetry topics shadow_engine)

# Kept outside the clone (CI starts from a fresh one), like .ci/run's build cache.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/iotsphere-gateway/target-fuzz}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The corpus each run grows, kept between runs on this machine (fuzz/corpus/ holds the
# small committed seeds, which are only read).
work_corpus="$CARGO_TARGET_DIR/fuzz-corpus"

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# The fuzz crate is its own workspace: give it the root lock file so that the gateway is
# built against exactly the dependency versions it is tested and shipped with (cargo adds
# only libfuzzer-sys and arbitrary to it).
cp Cargo.lock fuzz/Cargo.lock

flags=(--sanitizer none --debug-assertions)
echo "== building the fuzz targets"
cargo fuzz build "${flags[@]}"

failed=()
for target in "${targets[@]}"; do
    corpora=("$work_corpus/$target" "fuzz/corpus/$target")
    mkdir -p "${corpora[@]}"
    [ -d "fuzz/artifacts-found/$target" ] && corpora+=("fuzz/artifacts-found/$target")
    log="$CARGO_TARGET_DIR/fuzz-$target.log"
    echo "== fuzzing $target for ${seconds}s (log: $log)"
    # -timeout: an input that takes 10 s is a denial of service; -rss_limit_mb: 2 GB
    # (the gateway runs on a Raspberry Pi); -max_len: MQTT payloads are at most
    # mqtt.max_payload_bytes (64 KiB), but small inputs find the same bugs much faster.
    status=0
    cargo fuzz run "${flags[@]}" "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        artifact=$(grep -oE '(Test unit|artifact) written to [^ ]+' "$log" | awk '{print $NF}' | tail -n 1)
        echo "!! $target FAILED (exit $status); crashing input: ${artifact:-see $log}"
        failed+=("$target:${artifact:-$log}")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "== fuzzing found crashes (reproduce: cargo fuzz run --sanitizer none --debug-assertions TARGET FILE):"
    printf '   %s\n' "${failed[@]}"
    exit 1
fi
echo "== fuzzing: ${#targets[@]} targets, ${seconds}s each, no crash"
