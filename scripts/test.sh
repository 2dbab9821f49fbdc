#!/usr/bin/env bash
# THE test command (CI runs exactly this via .ci/run):
#
#   bash scripts/test.sh
#
# Installs what is missing and builds (scripts/setup.sh), then: shell/PHP lint, rustfmt check,
# no import cycle between modules, clippy with warnings as errors, release build, a smoke test
# of scripts/demo.sh, bounded fuzzing (scripts/fuzz.sh), every test of the workspace in
# release mode (the integration tests load target/release/libhandoff.so into real php /
# php-fpm / nginx / lighttpd / Caddy / Apache), the integration tests again in two Debian
# roots (scripts/php-root.sh): PHP 8.4 with Symfony 6.4 and Laravel 10.48 (Debian 13), PHP 8.5
# with Symfony 7.4 and Laravel 13 (sid + experimental), docker-compose.yml built and run for
# real (scripts/compose-test.sh), and the Debian packages installed into clean Debian 12 and
# 13 roots (scripts/package-test.sh).
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
for f in php/demo/*.php php/autoload.php php/src/*/*.php php/stubs/*.php; do
    php -l "$f" >/dev/null
done

step "cargo fmt --all --check"
cargo fmt --all --check

step "no import cycle between modules (scripts/module-cycles.py)"
python3 scripts/module-cycles.py manager/src core/src src stack/src bench/client/src tests manager/tests/handoff

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
# are none), so each part's totals follow, and the totals over all of them (every test
# binary, PHP 8.2 on the host, PHP 8.4 and 8.5 in their Debian roots, the compose stack) are the
# last line.
totals() {
    awk -v label="$1" '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($i == "passed;") passed += $(i - 1)
                if ($i == "failed;") failed += $(i - 1)
                if ($i == "ignored;") ignored += $(i - 1)
            }
         }
         END { printf "%s: %d passed, %d failed, %d skipped\n", label, passed, failed, ignored }' "$2"
}
results="$(mktemp -d)"
status=0

step "cargo test --release --workspace --no-fail-fast (PHP 8.2)"
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$results/php82" || status=$?

step "PHP 8.4, Symfony 6.4, Laravel 10.48: the integration tests in a Debian 13 root (scripts/php-root.sh trixie)"
bash scripts/php-root.sh trixie 2>&1 | tee "$results/php84" || status=$?

step "PHP 8.5, Symfony 7.4, Laravel 13: the integration tests in a Debian sid root (scripts/php-root.sh sid)"
bash scripts/php-root.sh sid 2>&1 | tee "$results/php85" || status=$?

step "docker-compose up --build for real (scripts/compose-test.sh)"
bash scripts/compose-test.sh 2>&1 | tee "$results/compose" || status=$?

step "Debian packages installed into clean Debian 12 and 13 roots (scripts/package-test.sh)"
bash scripts/package-test.sh 2>&1 | tee "$results/packages" || status=$?

# The compose test is also counted once as skipped in the host run (it is #[ignore]d there).
echo
totals "php 8.2 tests (host)" "$results/php82"
totals "php 8.4 tests (Debian 13 root)" "$results/php84"
totals "php 8.5 tests (Debian sid root)" "$results/php85"
totals "compose tests" "$results/compose"
totals "package tests" "$results/packages"
cat "$results/php82" "$results/php84" "$results/php85" "$results/compose" "$results/packages" >"$results/all"
totals "tests" "$results/all"
rm -rf "$results"
exit "$status"
