#!/usr/bin/env bash
# THE test command (CI runs exactly this via .ci/run):
#
#   bash scripts/test.sh
#
# Installs what is missing and builds (scripts/setup.sh), then: shell/PHP lint, rustfmt check,
# clippy with warnings as errors, release build, a smoke test of scripts/demo.sh, bounded
# fuzzing (scripts/fuzz.sh), and every
# test of the workspace in release mode (the integration tests load
# target/release/libhandoff.so into real php / php-fpm / nginx).
# Works as root with no stdin and CI=true.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
exec </dev/null

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [ -d "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin" ]; then
    export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "setup (packages + cargo build --release)"
bash scripts/setup.sh

# rustfmt and clippy are rustup components (not in the "minimal" profile).
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        component="$tool"
        [ "$tool" = fmt ] && component=rustfmt
        if command -v rustup >/dev/null 2>&1; then
            step "rustup component add $component"
            rustup component add "$component"
        else
            echo "test.sh: error: 'cargo $tool' is missing: install the $component component" >&2
            exit 1
        fi
    fi
done

step "bash -n / shellcheck scripts, php -l php/demo and the Composer package"
for f in scripts/*.sh .ci/run docker/*.sh; do
    bash -n "$f"
done
shellcheck scripts/*.sh .ci/run docker/*.sh
for f in php/demo/*.php php/autoload.php php/src/*/*.php; do
    php -l "$f" >/dev/null
done

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release --workspace"
cargo build --release --workspace

step "demo smoke test (scripts/demo.sh end to end)"
bash scripts/demo-smoke.sh

step "benchmark quick mode as a smoke test (bench/run.sh --quick, no thresholds)" && HANDOFF_SKIP_SETUP=1 bash bench/run.sh --quick

step "fuzz the message decoder and the planner (30 s each)"
bash scripts/fuzz.sh 30

# Last: CI reads the closing lines. cargo test ends with the doc-tests' "0 passed" (there
# are none), so the totals over every test binary follow as the last line.
step "cargo test --release --workspace"
results="$(mktemp)"
status=0
cargo test --release --workspace 2>&1 | tee "$results" || status=$?
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($i == "passed;") passed += $(i - 1)
            if ($i == "failed;") failed += $(i - 1)
            if ($i == "ignored;") ignored += $(i - 1)
        }
     }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$results"
rm -f "$results"
exit "$status"
