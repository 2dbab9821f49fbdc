#!/usr/bin/env bash
# Newer PHP and frameworks beside Debian 12's PHP 8.2: builds the extension in a
# debootstrap'd Debian root and runs the integration tests there, against that root's
# php-fpm, php -S, php-cli and nginx (Apache, the other front ends and valgrind stay
# 8.2-only, on the host). Two roots:
#
#   trixie  Debian 13: PHP 8.4, Symfony 6.4, Laravel 10.48
#   sid     Debian unstable: Symfony 7.4, Laravel 13, and PHP 8.5 from experimental
#
#   bash scripts/php-root.sh ROOT               as root: make ROOT if needed, build, test
#   bash scripts/php-root.sh ROOT --root-only   only make (or check) the cached root
#   bash scripts/php-root.sh ROOT FILTER...     run only the tests these libtest filters select
#   bash scripts/php-root.sh ROOT --exec CMD    run the shell command CMD in the repository
#                                               inside the root, with the tests' build
#                                               environment (scripts/package.sh --php84)
#
# Each root is made once with debootstrap and cached in /var/cache/handoff/ under a name that
# carries its version ($ROOT_VERSION: raise it when the package list changes). Each run
# bind-mounts the repository (at the same path), the host's rustup toolchain (~/.cargo,
# ~/.rustup), /proc and /dev into it, builds into target/php<version>/ (the host's target/
# stays PHP 8.2's), runs the tests, and unmounts everything again, also on failure.
#
# Prints 'php X.Y tests: N passed, N failed, N skipped' as its last line; exits non-zero if
# a test failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HANDOFF_CACHE:-/var/cache/handoff}"
MIRROR="${HANDOFF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

die() { printf 'php-root.sh: error: %s\n' "$*" >&2; exit 1; }

NAME="${1:-}"
[ "$#" -gt 0 ] && shift
COMMON=(
    nginx curl ca-certificates         # the test stacks and their client
    clang libclang-dev gcc libc6-dev   # bindgen (ext-php-rs) and the linker
    # The framework integrations (php/src) are tested against these; Laravel brings
    # Symfony's HttpKernel and EventDispatcher and league/flysystem.
    php-symfony-http-foundation php-symfony-mime php-laravel-framework
)
# What the tests run in a root (libtest filters); Apache's are skipped.
TESTS=(fpm:: cli_server:: php_level:: differential:: faults:: streams:: frameworks::
    global_functions::)
case "$NAME" in
trixie)
    ROOT_VERSION=2
    PHP_VERSION=8.4
    EXPERIMENTAL=no
    PACKAGES=(php8.4-cli php8.4-fpm php8.4-dev "${COMMON[@]}")
    ;;
sid)
    ROOT_VERSION=1
    PHP_VERSION=8.5
    # PHP 8.5 is only in experimental. apt takes a package from there only when no other
    # suite has it (experimental's priority is 1), so php-common stays sid's 2:101: the
    # experimental one, 2:102~ for PHP 8.6, Breaks php8.5-common. sid's php-defaults still
    # name PHP 8.4, so the framework dependencies also bring php8.4-cli; `php` is 8.5 (the
    # higher alternative), and the extensions the frameworks need are installed for 8.5.
    EXPERIMENTAL=yes
    PACKAGES=(php8.5-cli php8.5-fpm php8.5-dev php8.5-mbstring php8.5-xml php8.5-intl
        php-common "${COMMON[@]}")
    ;;
*)
    die "usage: php-root.sh trixie|sid [--root-only | --exec CMD | FILTER...]"
    ;;
esac
ROOT="$CACHE/$NAME-php${PHP_VERSION/./}-v$ROOT_VERSION"
PHP="/usr/bin/php$PHP_VERSION"
PHP_CONFIG="/usr/bin/php-config$PHP_VERSION"
# sid's and experimental's Release files carry Valid-Until dates that a cached root (or
# this machine's clock) may have passed; debootstrap itself does not check them.
APT=(apt-get -o Acquire::Check-Valid-Until=false)

log() { printf '==> %s: %s\n' "$NAME" "$*"; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

mkdir -p "$CACHE"
# One run at a time owns a root and its mounts.
exec 9>"$CACHE/$NAME-root.lock"
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

in_root() {
    chroot "$1" /usr/bin/env DEBIAN_FRONTEND=noninteractive "${@:2}" </dev/null
}

make_root() {
    if [ -f "$ROOT/.handoff-complete" ]; then
        log "cached root $ROOT"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/setup.sh installs it)"
    local new="$ROOT.partial"
    # A finished debootstrap is kept across failed package steps.
    if [ ! -f "$new/.debootstrap-complete" ]; then
        remove_tree "$new"
        log "debootstrap $NAME into $new ($MIRROR)"
        debootstrap --variant=minbase "$NAME" "$new" "$MIRROR"
        touch "$new/.debootstrap-complete"
    fi
    # Package scripts must not start the root's nginx / php-fpm.
    printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
    chmod 0755 "$new/usr/sbin/policy-rc.d"
    mount -t proc proc "$new/proc"
    MOUNTS+=("$new/proc")
    if [ "$EXPERIMENTAL" = yes ]; then
        echo "deb $MIRROR experimental main" >"$new/etc/apt/sources.list.d/experimental.list"
    fi
    in_root "$new" "${APT[@]}" update
    log "apt-get install ${PACKAGES[*]}"
    in_root "$new" "${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}"
    in_root "$new" apt-get clean
    unmount_all
    if [ ! -x "$new$PHP" ] || [ ! -x "$new$PHP_CONFIG" ]; then
        die "$PHP or $PHP_CONFIG missing in $new"
    fi
    touch "$new/.handoff-complete"
    remove_tree "$ROOT"
    mv "$new" "$ROOT"
    log "root ready: $ROOT"
}

make_root
if [ "${1:-}" = "--root-only" ]; then
    chroot "$ROOT" "$PHP" -v | head -n1
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

TARGET="$REPO/target/php${PHP_VERSION/./}"
ENVIRONMENT=(
    HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    CARGO_TARGET_DIR="$TARGET" CARGO_TERM_COLOR=never CI="${CI:-}" PHP="$PHP" PHP_CONFIG="$PHP_CONFIG"
    HANDOFF_EXT="$TARGET/release/libhandoff.so" HANDOFF_MANAGER="$TARGET/release/handoff-manager"
)
if [ -n "$EXEC" ]; then
    status=0
    # shellcheck disable=SC2016 # expanded by the bash inside the root
    chroot "$ROOT" /usr/bin/env -i "${ENVIRONMENT[@]}" \
        bash -c 'cd "$1" && shift && eval "$1"' "php-root-$NAME" "$REPO" "$EXEC" || status=$?
    unmount_all
    exit "$status"
fi
results="$(mktemp)"
status=0
log "build and test against PHP $(chroot "$ROOT" "$PHP" -r 'echo PHP_VERSION;')"
# Runs inside the root: $1 is the repository, the rest are the test filters. PHP and
# PHP_CONFIG are full paths: ext-php-rs' build does not find a bare versioned name.
# shellcheck disable=SC2016 # expanded by the bash inside the root
inside='cd "$1" && shift &&
    cargo build --release -p handoff -p handoff-manager &&
    "$PHP" -d "extension=$HANDOFF_EXT" -r "echo \"handoff loaded in PHP \", PHP_VERSION, \"\n\";
        exit(function_exists(\"Handoff\\\\send_file\") ? 0 : 1);" &&
    cargo test --release --test tests -- --skip apache "$@"'
chroot "$ROOT" /usr/bin/env -i "${ENVIRONMENT[@]}" \
    bash -c "$inside" "php-root-$NAME" "$REPO" "${TESTS[@]}" 2>&1 | tee "$results" || status=$?
unmount_all
awk -v label="php $PHP_VERSION tests" '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($i == "passed;") passed += $(i - 1)
            if ($i == "failed;") failed += $(i - 1)
            if ($i == "ignored;") ignored += $(i - 1)
        }
     }
     END { printf "%s: %d passed, %d failed, %d skipped\n", label, passed, failed, ignored }' "$results"
rm -f "$results"
exit "$status"
