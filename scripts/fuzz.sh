#!/usr/bin/env bash
# Runs every cargo-fuzz target of handoff-manager for a bounded time (default 45 s each):
# the handoff message decoder and the response planner. A crash fails the run and leaves
# its input in manager/fuzz/artifacts/; turn it into a regression unit test.
#
#   bash scripts/fuzz.sh [seconds-per-target]
#
# Works on the stable toolchain: libFuzzer with coverage instrumentation, no sanitizer
# (the targets are safe Rust; a panic or failed assertion is the crash).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../manager"
seconds="${1:-45}"
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    echo "==> fuzz $target for ${seconds}s"
    status=0
    cargo fuzz run "$target" --sanitizer none -- -max_total_time="$seconds" >"$log" 2>&1 \
        || status=$?
    grep -E '^(Done|SUMMARY|thread .* panicked|artifact_prefix|Error)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz target $target failed: see manager/fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
