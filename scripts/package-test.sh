#!/usr/bin/env bash
# The Debian packages, installed as a user installs them:
#
#   bash scripts/package-test.sh                  Debian 12 (PHP 8.2) and Debian 13 (PHP 8.4)
#   bash scripts/package-test.sh bookworm|trixie  one of them
#
# For each release: scripts/package.sh builds the .debs (for Debian 13 inside scripts/php-root.sh trixie's
# root, against PHP 8.4), lintian must report no error, and then, in a fresh root unpacked
# from a cached `debootstrap --variant=minbase` tarball (/var/cache/handoff/, one flock per
# release; the Debian 13 one is the tarball scripts/compose-test.sh makes):
#  1. `apt-get install /path/*.deb` pulls the dependencies (PHP itself), `php -m` lists
#     handoff and the `handoff` user exists;
#  2. with nginx and php-fpm from the release, and the manager started as the packaged
#     handoff-manager.socket + .service would start it (the socket passed as descriptor 3 by
#     systemd-socket-activate, owner handoff, group www-data, mode 0660; the unit's
#     ExecStart as user handoff), a download is handed off (the manager logs it complete)
#     and arrives byte-exact;
#  3. `apt-get remove` of both packages disables the extension, and php-fpm still starts and
#     serves a page through nginx with nothing in its log about handoff.
# Everything runs on 127.0.0.1. Prints one `test result:` line per release (and one for
# lintian) for scripts/test.sh's totals; exits non-zero if any check failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CACHE="${HANDOFF_CACHE:-/var/cache/handoff}"
MIRROR="${HANDOFF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The same name and version as scripts/compose-test.sh's base image tarball.
BASE_VERSION=1
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '==> package-test: %s\n' "$*"; }
die() { printf 'package-test.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
for tool in debootstrap lintian systemd-socket-activate curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh installs it)"
done
mkdir -p "$CACHE"

SUITES=("$@")
[ "${#SUITES[@]}" -gt 0 ] || SUITES=(bookworm trixie)

# A minbase tarball of the release, made once; the flock keeps two runs from making it twice.
base_tarball() {
    local suite="$1" tar="$CACHE/debian-$1-minbase-v$BASE_VERSION.tar"
    (
        flock 8
        if [ ! -s "$tar" ]; then
            local dir
            dir="$(mktemp -d "$CACHE/$suite-minbase.XXXXXX")"
            log "debootstrap --variant=minbase $suite ($MIRROR)" >&2
            debootstrap --variant=minbase "$suite" "$dir" "$MIRROR" >"$dir.log" 2>&1 \
                || { tail -n 30 "$dir.log" >&2; rm -rf --one-file-system "$dir"; exit 1; }
            tar -C "$dir" -cf "$tar.partial" .
            mv "$tar.partial" "$tar"
            rm -rf --one-file-system "$dir" "$dir.log"
        fi
    ) 8>"$CACHE/debian-$suite-minbase.lock"
    printf '%s\n' "$tar"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

passed=0
failed=0
check() {
    local what="$1"
    shift
    if "$@"; then
        log "ok: $what"
        passed=$((passed + 1))
    else
        log "FAILED: $what"
        failed=$((failed + 1))
    fi
}

# State of the release under test, for the cleanup on any exit.
ROOT=""
PIDS=()
MOUNTS=()
cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTS[i]}" 2>/dev/null || umount -R -l "${MOUNTS[i]}" || true
    done
    MOUNTS=()
    if [ -n "$ROOT" ] && ! findmnt -rn -o TARGET | grep -q "^$ROOT\(/\|$\)"; then
        rm -rf --one-file-system "$ROOT"
    fi
    ROOT=""
}
trap cleanup EXIT

# Runs a command in the root. Not a subshell: started with `&`, its pid is the daemon's.
ROOT_ENV=(/usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8)
in_root() { chroot "$ROOT" "${ROOT_ENV[@]}" "$@"; }

not() { ! "$@"; }
# grep reads all of it: with -q, php could die of SIGPIPE and fail the pipeline (pipefail).
php_lists_handoff() { in_root php -m | grep -x handoff >/dev/null; }
fpm_lists_handoff() { in_root "php-fpm$1" -m | grep -x handoff >/dev/null; }
no_error_in() { ! grep -q "^E: " <<<"$1"; }
extension_version_is() { [ "$(in_root php -r "echo phpversion('handoff');")" = "$1" ]; }
returned_true() {
    wait_for test -s "$ROOT/tmp/handoff-test/returned" && grep -qx true "$ROOT/tmp/handoff-test/returned"
}
runs_as() { grep -q "^Uid:[[:space:]]*$2[[:space:]]" "/proc/$1/status"; }
says_nothing_of_handoff() { ! grep -qi handoff "$@"; }

# Waits up to 30 s for a command to succeed.
wait_for() {
    local i
    for ((i = 0; i < 300; i++)); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Prints the logs of the release's daemons (on failure).
show_logs() {
    local f
    for f in "$ROOT"/tmp/handoff-test/*.log; do
        [ -f "$f" ] || continue
        printf -- '--- %s\n' "${f#"$ROOT"}"
        tail -n 40 "$f"
    done
}

# Starts php-fpm and nginx (site on 127.0.0.1:$port) in the root; their pids go to PIDS.
start_web() {
    local php="$1" port="$2"
    install -d -m 0755 "$ROOT/run/php"
    # The packaged site is an absolute symlink, which would lead out of the root.
    rm -f "$ROOT/etc/nginx/sites-enabled/default"
    cat >"$ROOT/etc/nginx/sites-enabled/default" <<EOF
server {
    listen 127.0.0.1:$port;
    root /var/www/handoff;
    location ~ \.php\$ {
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:/run/php/php$php-fpm.sock;
        fastcgi_buffer_size 128k;
        fastcgi_buffers 4 128k;
    }
}
EOF
    chroot "$ROOT" "${ROOT_ENV[@]}" "php-fpm$php" --nodaemonize \
        --fpm-config "/etc/php/$php/fpm/php-fpm.conf" >"$ROOT/tmp/handoff-test/php-fpm.log" 2>&1 &
    PIDS+=("$!")
    wait_for test -S "$ROOT/run/php/php$php-fpm.sock" || return 1
    chroot "$ROOT" "${ROOT_ENV[@]}" nginx -g 'daemon off;' >"$ROOT/tmp/handoff-test/nginx.log" 2>&1 &
    PIDS+=("$!")
    wait_for curl -fsS -o /dev/null "http://127.0.0.1:$port/ok.php"
}

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

test_release() {
    local suite="$1" php debs
    case "$suite" in
        bookworm) php=8.2 debs="$REPO/target/debian" ;;
        trixie) php=8.4 debs="$REPO/target/debian/trixie" ;;
        *) die "unknown release $suite (bookworm or trixie)" ;;
    esac
    local before_passed=$passed before_failed=$failed

    log "$suite: build the packages"
    if [ "$suite" = bookworm ]; then
        bash scripts/package.sh
    else
        bash scripts/package.sh --php84
    fi
    local lintian_out
    lintian_out="$(lintian --no-cfg "$debs"/*.deb 2>&1 | grep -v 'running with root privileges' || true)"
    printf '%s\n' "$lintian_out"
    check "$suite: lintian reports no error" no_error_in "$lintian_out"

    local tar
    tar="$(base_tarball "$suite")"
    ROOT="$(mktemp -d /var/tmp/handoff-package-test.XXXXXX)"
    log "$suite: fresh root $ROOT from $tar"
    tar -C "$ROOT" -xf "$tar"
    # The tarball keeps its temporary directory's 0700; "/" must be 0755 for www-data.
    chmod 0755 "$ROOT"
    # Package scripts must not start services: this root has no init.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    cp --remove-destination /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mount -t proc proc "$ROOT/proc"
    MOUNTS+=("$ROOT/proc")
    # Downloaded packages are kept between runs.
    mkdir -p "$CACHE/apt-archives-$suite"
    mount --bind "$CACHE/apt-archives-$suite" "$ROOT/var/cache/apt/archives"
    MOUNTS+=("$ROOT/var/cache/apt/archives")
    mkdir -p "$ROOT/tmp/debs" "$ROOT/tmp/handoff-test"
    cp "$debs"/*.deb "$ROOT/tmp/debs/"

    log "$suite: apt-get install /tmp/debs/*.deb"
    in_root apt-get update -q >/dev/null
    local -a in_root_debs=()
    local deb
    for deb in "$ROOT"/tmp/debs/*.deb; do
        in_root_debs+=("${deb#"$ROOT"}")
    done
    check "$suite: apt-get install of the .debs pulls their dependencies" \
        in_root apt-get install -y -q --no-install-recommends "${in_root_debs[@]}"
    check "$suite: php -m lists handoff" php_lists_handoff
    check "$suite: phpversion('handoff') is the workspace version" extension_version_is \
        "$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml)"
    check "$suite: the handoff system user exists" in_root getent passwd handoff

    log "$suite: nginx + php-fpm $php, manager as the packaged units start it"
    in_root apt-get install -y -q --no-install-recommends nginx "php$php-fpm" >/dev/null
    check "$suite: php-fpm $php loads handoff" fpm_lists_handoff "$php"
    install -d -m 0755 "$ROOT/var/www/handoff" "$ROOT/srv/data"
    printf '<?php echo "ok\\n";\n' >"$ROOT/var/www/handoff/ok.php"
    cat >"$ROOT/var/www/handoff/dl.php" <<'EOF'
<?php
$r = send_file("/srv/data/big.bin");
file_put_contents("/tmp/handoff-test/returned", var_export($r, true));
EOF
    head -c $((20 * 1024 * 1024 + 7)) /dev/urandom >"$ROOT/srv/data/big.bin"
    chmod 0644 "$ROOT/srv/data/big.bin"
    chmod 0777 "$ROOT/tmp/handoff-test"

    # What systemd does for handoff-manager.socket and .service: the socket (SocketUser,
    # SocketGroup, SocketMode, DirectoryMode), LogsDirectory, then the unit's ExecStart as
    # User=handoff with the socket as descriptor 3.
    local uid gid exec_start
    uid="$(in_root id -u handoff)"
    gid="$(in_root getent group www-data | cut -d: -f3)"
    install -d -m 0755 "$ROOT/run/handoff"
    install -d -m 0755 -o "$uid" "$ROOT/var/log/handoff"
    exec_start="$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$ROOT/lib/systemd/system/handoff-manager.service" \
        | sed -n 's/^ExecStart=//p')"
    local -a argv
    read -r -a argv <<<"$exec_start"
    systemd-socket-activate --seqpacket -l "$ROOT/run/handoff/manager.sock" -E RUST_LOG=info \
        chroot --userspec="$uid:$(in_root id -g handoff)" "$ROOT" "${argv[@]}" \
        >"$ROOT/tmp/handoff-test/manager.log" 2>&1 &
    PIDS+=("$!")
    local manager_pid=$!
    wait_for test -S "$ROOT/run/handoff/manager.sock"
    chown "$uid:$gid" "$ROOT/run/handoff/manager.sock"
    chmod 0660 "$ROOT/run/handoff/manager.sock"

    local port
    port="$(free_port)"
    check "$suite: nginx and php-fpm serve" start_web "$php" "$port"
    local want got
    want="$(sha256sum "$ROOT/srv/data/big.bin" | cut -d' ' -f1)"
    got="$(curl -fsS "http://127.0.0.1:$port/dl.php" | sha256sum | cut -d' ' -f1 || true)"
    check "$suite: the download is byte-exact" test "$want" = "$got"
    check "$suite: send_file() returned true (handed off)" returned_true
    check "$suite: the manager used the socket systemd passed" \
        grep -q 'using the socket systemd passed' "$ROOT/tmp/handoff-test/manager.log"
    check "$suite: the manager logged the download complete" \
        wait_for grep -q "\"bytes_sent\":$((20 * 1024 * 1024 + 7)).*\"outcome\":\"complete\"" "$ROOT/var/log/handoff/access.log"
    check "$suite: the manager runs as user handoff" runs_as "$manager_pid" "$uid"
    stop_all

    log "$suite: apt-get remove"
    check "$suite: apt-get remove of both packages" \
        in_root apt-get remove -y -q "php$php-handoff" handoff-manager
    check "$suite: php -m no longer lists handoff" not php_lists_handoff
    check "$suite: php-fpm's configuration still tests clean" in_root "php-fpm$php" -t
    : >"$ROOT/var/log/php$php-fpm.log"
    check "$suite: php-fpm still serves through nginx" start_web "$php" "$port"
    check "$suite: php-fpm's logs say nothing of handoff" says_nothing_of_handoff \
        "$ROOT/tmp/handoff-test/php-fpm.log" "$ROOT/var/log/php$php-fpm.log"
    stop_all

    if [ "$failed" -gt "$before_failed" ]; then
        show_logs
    fi
    cleanup
    local p=$((passed - before_passed)) f=$((failed - before_failed))
    if [ "$f" -eq 0 ]; then
        echo "test result: ok. $p passed; 0 failed; 0 ignored; 0 measured; 0 filtered out ($suite packages)"
    else
        echo "test result: FAILED. $p passed; $f failed; 0 ignored; 0 measured; 0 filtered out ($suite packages)"
    fi
}

for suite in "${SUITES[@]}"; do
    start=$SECONDS
    test_release "$suite"
    log "$suite took $((SECONDS - start)) s"
done
[ "$failed" -eq 0 ]
