#!/usr/bin/env bash
# PHP 8.4 beside Debian 12's PHP 8.2: builds the extension against Debian 13's PHP 8.4 in a
# debootstrap'd root and runs the integration tests there, against PHP 8.4's php-fpm,
# php -S and php-cli (nginx from Debian 13 too; Apache, the other front ends and valgrind
# stay 8.2-only, on the host).
#
#   bash scripts/php84.sh               as root: make the root if needed, build, test
#   bash scripts/php84.sh --root-only   only make (or check) the cached root
#   bash scripts/php84.sh FILTER...     run only the tests these libtest filters select
#   bash scripts/php84.sh --exec CMD    run the shell command CMD in the repository inside
#                                       the root, with the build environment of the tests
#                                       (scripts/package.sh --php84 builds its .debs so)
#
# The root is made once with debootstrap and cached in /var/cache/handoff/ under a name that
# carries its version ($ROOT_VERSION: raise it when the package list changes). Each run
# bind-mounts the repository (at the same path), the host's rustup toolchain (~/.cargo,
# ~/.rustup), /proc and /dev into it, builds into target/php84/ (the host's target/ stays
# PHP 8.2's), runs the tests, and unmounts everything again, also on failure.
#
# Prints 'php 8.4 tests: N passed, N failed, N skipped' as its last line; exits non-zero if
# a test failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT_VERSION=1
CACHE="${HANDOFF_CACHE:-/var/cache/handoff}"
ROOT="$CACHE/trixie-php84-v$ROOT_VERSION"
MIRROR="${HANDOFF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(
    php8.4-cli php8.4-fpm php8.4-dev   # the PHP the extension is built against and tested in
    nginx curl ca-certificates         # the test stacks and their client
    clang libclang-dev gcc libc6-dev   # bindgen (ext-php-rs) and the linker
)
# What the tests run under PHP 8.4 (libtest filters); Apache's are skipped.
TESTS=(fpm:: cli_server:: php_level:: differential:: faults:: streams::)

log() { printf '==> php84: %s\n' "$*"; }
die() { printf 'php84.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

mkdir -p "$CACHE"
# One run at a time owns the root and its mounts.
exec 9>"$CACHE/trixie-php84.lock"
flock 9

MOUNTS=()
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTS[i]}" 2>/dev/null || umount -R -l "${MOUNTS[i]}" || true
    done
    MOUNTS=()
}
trap unmount_all EXIT

# Refuses to delete anything with a mount below it (a bind-mounted repository, say).
remove_tree() {
    if findmnt -rn -o TARGET | grep -q "^$1\(/\|$\)"; then
        die "$1 still has mounts below it; not removing it"
    fi
    rm -rf --one-file-system "$1"
}

make_root() {
    if [ -f "$ROOT/.handoff-complete" ]; then
        log "cached root $ROOT"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/setup.sh installs it)"
    local new="$ROOT.partial"
    remove_tree "$new"
    log "debootstrap trixie into $new ($MIRROR)"
    debootstrap --variant=minbase trixie "$new" "$MIRROR"
    # Package scripts must not start the root's nginx / php-fpm.
    printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
    chmod 0755 "$new/usr/sbin/policy-rc.d"
    mount -t proc proc "$new/proc"
    MOUNTS+=("$new/proc")
    log "apt-get install ${PACKAGES[*]}"
    chroot "$new" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${PACKAGES[@]}" </dev/null
    chroot "$new" apt-get clean
    unmount_all
    touch "$new/.handoff-complete"
    remove_tree "$ROOT"
    mv "$new" "$ROOT"
    log "root ready: $ROOT"
}

make_root
if [ "${1:-}" = "--root-only" ]; then
    chroot "$ROOT" php -v | head -n1
    exit 0
fi

EXEC=""
if [ "${1:-}" = "--exec" ]; then
    [ "$#" -eq 2 ] || die "--exec takes one command"
    EXEC="$2"
    shift 2
fi
if [ "$#" -gt 0 ]; then
    TESTS=("$@")
fi

CARGO_DIR="${CARGO_HOME:-$HOME/.cargo}"
RUSTUP_DIR="${RUSTUP_HOME:-$HOME/.rustup}"
[ -x "$CARGO_DIR/bin/cargo" ] || die "no rustup toolchain in $CARGO_DIR (scripts/setup.sh installs it)"

bind() {
    mkdir -p "$ROOT$2"
    mount --rbind "$1" "$ROOT$2"
    mount --make-rslave "$ROOT$2"
    MOUNTS+=("$ROOT$2")
}
mount -t proc proc "$ROOT/proc"
MOUNTS+=("$ROOT/proc")
bind /dev /dev
bind "$REPO" "$REPO"
bind "$CARGO_DIR" /root/.cargo
bind "$RUSTUP_DIR" /root/.rustup
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

TARGET="$REPO/target/php84"
ENVIRONMENT=(
    HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    CARGO_TARGET_DIR="$TARGET" CARGO_TERM_COLOR=never CI="${CI:-}"
    HANDOFF_EXT="$TARGET/release/libhandoff.so" HANDOFF_MANAGER="$TARGET/release/handoff-manager"
)
if [ -n "$EXEC" ]; then
    status=0
    # shellcheck disable=SC2016 # expanded by the bash inside the root
    chroot "$ROOT" /usr/bin/env -i "${ENVIRONMENT[@]}" \
        bash -c 'cd "$1" && shift && eval "$1"' php84 "$REPO" "$EXEC" || status=$?
    unmount_all
    exit "$status"
fi
results="$(mktemp)"
status=0
log "build and test against $(chroot "$ROOT" php -r 'echo PHP_VERSION;')"
# Runs inside the root: $1 is the repository, the rest are the test filters.
# shellcheck disable=SC2016 # expanded by the bash inside the root
inside='cd "$1" && shift &&
    cargo build --release -p handoff -p handoff-manager &&
    php -d "extension=$HANDOFF_EXT" -r "echo \"handoff loaded in PHP \", PHP_VERSION, \"\n\";
        exit(function_exists(\"send_file\") ? 0 : 1);" &&
    cargo test --release --test tests -- --skip apache "$@"'
chroot "$ROOT" /usr/bin/env -i "${ENVIRONMENT[@]}" \
    bash -c "$inside" php84 "$REPO" "${TESTS[@]}" 2>&1 | tee "$results" || status=$?
unmount_all
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($i == "passed;") passed += $(i - 1)
            if ($i == "failed;") failed += $(i - 1)
            if ($i == "ignored;") ignored += $(i - 1)
        }
     }
     END { printf "php 8.4 tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$results"
rm -f "$results"
exit "$status"
