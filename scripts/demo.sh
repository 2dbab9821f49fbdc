#!/usr/bin/env bash
# Run the handoff demo: handoff-manager + php-fpm + nginx, all in the foreground of this
# script (Ctrl-C stops everything), serving php/demo/ on http://127.0.0.1:8080/.
#
#   bash scripts/demo.sh
#
# Environment:
#   HANDOFF_DEMO_PORT    port nginx listens on, on 127.0.0.1 (default 8080)
#   HANDOFF_DEMO_DIR     runtime dir: sockets, logs, generated configs, demo data
#                        (default /tmp/handoff-demo)
#   HANDOFF_SKIP_SETUP=1 do not run scripts/setup.sh (packages and build already done)
#
# Nothing is installed or changed outside the runtime dir except by setup.sh (packages and
# target/); the distro's nginx and php-fpm services are not used.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${HANDOFF_DEMO_PORT:-8080}"
RUN="${HANDOFF_DEMO_DIR:-/tmp/handoff-demo}"
DATA="$RUN/data"
LOGS="$RUN/logs"
DOCROOT="$REPO/php/demo"
SO="$REPO/target/release/libhandoff.so"
MANAGER="$REPO/target/release/handoff-manager"
TEMPLATE="$REPO/deploy/nginx-site.conf.template"
POOL="$REPO/deploy/php-fpm-pool.conf"
START_TIMEOUT=20 # seconds each service gets to come up

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '==> %s\n' "$*"; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }

case "$PORT" in
    '' | *[!0-9]*) die "HANDOFF_DEMO_PORT must be a port number, got '$PORT'" ;;
esac

if [ "${HANDOFF_SKIP_SETUP:-0}" != "1" ]; then
    bash "$REPO/scripts/setup.sh"
fi
[ -f "$SO" ] || die "$SO is missing: run scripts/setup.sh"
[ -x "$MANAGER" ] || die "$MANAGER is missing: run scripts/setup.sh"

PHP_FPM="$(command -v php-fpm8.2 || command -v php-fpm || true)"
[ -n "$PHP_FPM" ] || die "php-fpm not found (apt-get install php-fpm)"
NGINX="$(command -v nginx || true)"
[ -n "$NGINX" ] || die "nginx not found (apt-get install nginx)"
command -v envsubst >/dev/null || die "envsubst not found (apt-get install gettext-base)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; then
    die "something already answers on 127.0.0.1:$PORT: stop it or set HANDOFF_DEMO_PORT"
fi

# --- runtime dir -------------------------------------------------------------------------
mkdir -p "$RUN" "$DATA" "$LOGS" "$RUN/nginx-temp"
chmod 0755 "$RUN" "$DATA"
rm -f "$RUN/manager.sock" "$RUN/php-fpm.sock" "$RUN"/*.pid

# Demo data lives outside the docroot: nginx never serves it, only send_file() does.
big="$DATA/big.bin"
if [ "$(stat -c %s "$big" 2>/dev/null || echo 0)" != "$((200 * 1024 * 1024))" ]; then
    log "generating $big (200 MiB of random bytes)"
    head -c "$((200 * 1024 * 1024))" /dev/urandom >"$big.tmp"
    mv "$big.tmp" "$big"
fi
printf 'Hello from handoff!\nThis file was handed to handoff-manager by a php-fpm worker.\n' \
    >"$DATA/hello.txt"
chmod 0644 "$DATA"/*
log "computing checksums of the demo files"
(cd "$DATA" && sha256sum big.bin hello.txt >"$RUN/SHA256SUMS")

# --- processes -----------------------------------------------------------------------------
PIDS=()
NAMES=()
cleaning=0
# shellcheck disable=SC2317 # invoked by the traps below
cleanup() {
    local status=$?
    [ "$cleaning" = 1 ] && return
    cleaning=1
    trap - INT TERM EXIT
    if [ "${#PIDS[@]}" -gt 0 ]; then
        log "stopping ${NAMES[*]}"
        # Stop in reverse order: nginx, php-fpm, then the manager (it lets downloads finish
        # for --grace seconds).
        local i
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            kill -TERM "${PIDS[$i]}" 2>/dev/null || true
        done
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            wait "${PIDS[$i]}" 2>/dev/null || true
        done
    fi
    log "stopped; logs are in $LOGS"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name logfile cmd...
    local name="$1" logfile="$2"
    shift 2
    "$@" >>"$logfile" 2>&1 </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
}

# Wait until CHECK succeeds, while process PID is alive, for at most START_TIMEOUT seconds.
wait_for() { # name pid logfile check...
    local name="$1" pid="$2" logfile="$3"
    shift 3
    local deadline=$((SECONDS + START_TIMEOUT))
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            printf '%s exited during start-up; last lines of %s:\n' "$name" "$logfile" >&2
            tail -n 20 "$logfile" >&2 || true
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            printf '%s did not come up within %ss; last lines of %s:\n' \
                "$name" "$START_TIMEOUT" "$logfile" >&2
            tail -n 20 "$logfile" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
}

# 1. handoff-manager. Only the invoking user may connect (0660): this local demo runs
#    php-fpm as that user too; see README "Running in production".
log "starting handoff-manager on $RUN/manager.sock"
export RUST_LOG="${RUST_LOG:-info}"
start handoff-manager "$LOGS/manager.log" \
    "$MANAGER" --socket "$RUN/manager.sock" --socket-mode 0660 --grace 5
wait_for handoff-manager "${PIDS[-1]}" "$LOGS/manager.log" test -S "$RUN/manager.sock"

# 2. php-fpm with the shared pool file (deploy/php-fpm-pool.conf, unchanged): php-fpm
#    expands the HANDOFF_* variables itself; clear_env = no passes HANDOFF_DEMO_DATA on.
cat >"$RUN/php-fpm.conf" <<EOF
; generated by scripts/demo.sh
[global]
pid = $RUN/php-fpm.pid
error_log = $LOGS/php-fpm.log
daemonize = no
include = $POOL
EOF
export HANDOFF_FPM_LISTEN="$RUN/php-fpm.sock"
HANDOFF_FPM_USER="$(id -un)"
export HANDOFF_FPM_USER
# php-fpm.sock is 0660: nginx runs as this same user here.
HANDOFF_FPM_LISTEN_OWNER="$(id -u)"
HANDOFF_FPM_LISTEN_GROUP="$(id -g)"
export HANDOFF_FPM_LISTEN_OWNER HANDOFF_FPM_LISTEN_GROUP
export HANDOFF_FPM_CHILDREN=4
export HANDOFF_SOCKET="$RUN/manager.sock"
export HANDOFF_DEMO_DATA="$DATA"
fpm_args=(-F -y "$RUN/php-fpm.conf" -d "extension=$SO")
# As root php-fpm needs -R to run its workers as root (this is a local demo).
[ "$(id -u)" -eq 0 ] && fpm_args=(-R "${fpm_args[@]}")
log "starting $(basename "$PHP_FPM") on $RUN/php-fpm.sock"
start php-fpm "$LOGS/php-fpm.stderr.log" "$PHP_FPM" "${fpm_args[@]}"
wait_for php-fpm "${PIDS[-1]}" "$LOGS/php-fpm.log" test -S "$RUN/php-fpm.sock"

# 3. nginx: a minimal main config that includes the shared site template, substituted.
# Only our three placeholders: nginx's own $variables stay as they are.
# shellcheck disable=SC2016
HANDOFF_LISTEN="127.0.0.1:$PORT" HANDOFF_DOCROOT="$DOCROOT" HANDOFF_FPM="unix:$RUN/php-fpm.sock" \
    envsubst '${HANDOFF_LISTEN} ${HANDOFF_DOCROOT} ${HANDOFF_FPM}' <"$TEMPLATE" >"$RUN/nginx-site.conf"
nginx_user=""
# Started as root, nginx would run its workers as "nobody", who may not be able to reach the
# docroot inside a checkout under /root: run them as the invoking user in this local demo.
[ "$(id -u)" -eq 0 ] && nginx_user="user root;"
cat >"$RUN/nginx.conf" <<EOF
# generated by scripts/demo.sh
$nginx_user
daemon off;
worker_processes 1;
pid $RUN/nginx.pid;
error_log $LOGS/nginx-error.log info;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log $LOGS/nginx-access.log;
    client_body_temp_path $RUN/nginx-temp/client_body;
    fastcgi_temp_path $RUN/nginx-temp/fastcgi;
    proxy_temp_path $RUN/nginx-temp/proxy;
    uwsgi_temp_path $RUN/nginx-temp/uwsgi;
    scgi_temp_path $RUN/nginx-temp/scgi;
    include $RUN/nginx-site.conf;
}
EOF
"$NGINX" -t -q -p "$RUN" -e "$LOGS/nginx-error.log" -c "$RUN/nginx.conf" ||
    die "nginx rejected $RUN/nginx.conf (see above)"
log "starting nginx on 127.0.0.1:$PORT"
start nginx "$LOGS/nginx.stderr.log" "$NGINX" -p "$RUN" -e "$LOGS/nginx-error.log" -c "$RUN/nginx.conf"
wait_for nginx "${PIDS[-1]}" "$LOGS/nginx-error.log" \
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"

URL="http://127.0.0.1:$PORT/"
cat <<EOF

handoff demo is running (pids: manager ${PIDS[0]}, php-fpm ${PIDS[1]}, nginx ${PIDS[2]}).

  Open:        $URL
  Try:         curl -o big.bin '${URL}download.php?name=big.bin'
               sha256sum big.bin    # expected: $(awk '$2 == "big.bin" {print $1}' "$RUN/SHA256SUMS")
  Small file:  curl -i '${URL}download.php?name=hello.txt'

  Logs:        $LOGS/manager.log (one line per finished download), php-fpm.log, nginx-*.log
  Runtime dir: $RUN

Press Ctrl-C to stop.
EOF

# Wait until Ctrl-C / SIGTERM, or until one of the services dies.
set +e
wait -n "${PIDS[@]}"
status=$?
set -e
for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        printf 'demo.sh: %s exited (status %s); stopping the others\n' "${NAMES[$i]}" "$status" >&2
    fi
done
exit 1
