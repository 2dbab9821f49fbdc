#!/usr/bin/env bash
# Run the handoff demo: handoff-manager + php-fpm + nginx, all in the foreground of this
# script (Ctrl-C stops everything), serving php/demo/ on http://127.0.0.1:8080/. They are
# started by target/release/handoff-stack (stack/), as in the tests and the benchmark.
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
STACK="$REPO/target/release/handoff-stack"

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
[ -x "$STACK" ] || die "$STACK is missing: run scripts/setup.sh"

command -v php-fpm8.2 >/dev/null || command -v php-fpm >/dev/null ||
    die "php-fpm not found (apt-get install php-fpm)"
command -v nginx >/dev/null || die "nginx not found (apt-get install nginx)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; then
    die "something already answers on 127.0.0.1:$PORT: stop it or set HANDOFF_DEMO_PORT"
fi

# --- runtime dir -------------------------------------------------------------------------
mkdir -p "$RUN" "$DATA" "$LOGS"
chmod 0755 "$RUN" "$DATA"

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

# --- the stack -----------------------------------------------------------------------------
# handoff-stack (stack/) starts handoff-manager, php-fpm (deploy/php-fpm-pool.conf) and
# nginx (deploy/nginx-site.conf.template) the way the integration tests do, each in its own
# process group, and stops them in reverse order on SIGTERM. The manager's socket is 0660:
# only the invoking user may connect; this local demo runs php-fpm as that user too (see
# docs/deployment.md, "Running in production"). The workers find the demo data through HANDOFF_DEMO_DATA
# (the pool keeps the environment).
stack_pid=""
cleaning=0
# shellcheck disable=SC2317 # invoked by the traps below
cleanup() {
    local status=$?
    [ "$cleaning" = 1 ] && return
    cleaning=1
    trap - INT TERM EXIT
    if [ -n "$stack_pid" ]; then
        # It stops nginx, php-fpm, then the manager (which lets downloads finish for --grace).
        kill -TERM "$stack_pid" 2>/dev/null || true
        wait "$stack_pid" 2>/dev/null || true
    fi
    log "stopped; logs are in $LOGS"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -f "$RUN/stack.env"
HANDOFF_DEMO_DATA="$DATA" RUST_LOG="${RUST_LOG:-info}" \
    "$STACK" up --dir "$RUN" --logs "$LOGS" --port "$PORT" --docroot "$DOCROOT" \
    --fpm-children 4 --nginx-connections 256 -- --socket-mode 0660 --grace 5 >/dev/null &
stack_pid=$!
until [ -f "$RUN/stack.env" ]; do
    kill -0 "$stack_pid" 2>/dev/null || die "the stack did not start (see above)"
    sleep 0.1
done
# shellcheck disable=SC1091 # written by handoff-stack
. "$RUN/stack.env"

URL="http://127.0.0.1:$PORT/"
cat <<EOF

handoff demo is running (pids: manager $STACK_MANAGER_PID, php-fpm $STACK_FPM_PID, nginx $STACK_NGINX_PID).

  Open:        $URL
  Try:         curl -o big.bin '${URL}download.php?name=big.bin'
               sha256sum big.bin    # expected: $(awk '$2 == "big.bin" {print $1}' "$RUN/SHA256SUMS")
  Small file:  curl -i '${URL}download.php?name=hello.txt'

  Logs:        $LOGS/manager.log (one line per finished download), php-fpm.log, nginx-*.log
  Runtime dir: $RUN

Press Ctrl-C to stop.
EOF

# Wait until Ctrl-C / SIGTERM, or until one of the services dies (handoff-stack then stops
# the others, says which one died, and exits).
set +e
wait "$stack_pid"
status=$?
set -e
stack_pid=""
printf 'demo.sh: the stack exited (status %s)\n' "$status" >&2
exit 1
