#!/usr/bin/env bash
# The handoff benchmark: send_file() against readfile(), X-Accel-Redirect and nginx static,
# on one machine, in one run.
#
#   bash bench/run.sh --quick     # ~7 minutes: every scenario at its smallest size, 3 runs
#   bash bench/run.sh --full      # ~80 minutes: every size, S1 also as a burst, 3 runs;
#                                 # the cold bursts add ~30 s per S1 backend, client count and run
#                                 # (the 2026-12-03 subset: 5 backends x 1,000 clients, ~3 min)
#                                 # (both times estimated from --smoke and the last full run,
#                                 # not measured since the HTTPS and relay backends came in)
#   bash bench/run.sh --smoke     # ~2 minutes, 1 run, tiny loads: checks that the harness works
#   bash bench/run.sh --scaling   # ~5 minutes (after waiting for a quiet machine): S2 and S5
#                                 # with the manager at --threads 1 and 2, alternating
#                                 # (t1, t2, t1, t2, ...), 5 runs each; CI does not run it
#   ... --publish                 # also write the tables into docs/benchmarks.md and the
#                                 # plots to docs/s1-probe-latency.png and
#                                 # docs/s1-probe-per-backend.png
#
# Starts its own handoff-manager, php-fpm (pm = static, 4 children, the shared pool file) and
# nginx (the shared site plus three bench-only locations, over plain HTTP and over HTTPS)
# and a second nginx (the relay limit's upstream), all through handoff-stack (stack/), and
# `php -S`, in a temporary directory, on 127.0.0.1 and Unix sockets only. The load client is
# bench/client (handoff-bench); every run of it is bounded in time (and count).
#
# HTTPS: at start-up openssl makes a throwaway CA and a server certificate for 127.0.0.1
# (ECDSA P-256, in the run's temp dir); nginx serves the same site on BENCH_PORT+4 with
# `ssl_protocols TLSv1.3` (no session cache, no kTLS: nginx's defaults), and the load client
# speaks TLS 1.3 with rustls, verifying nginx against that CA. The probe stays plain HTTP
# on BENCH_PORT (the same nginx workers), so its figures compare across HTTP and HTTPS.
#
# Backends (what a download request hits):
#   handoff-fpm     nginx -> php-fpm -> send_file()          (the manager streams)
#   handoff-fpm-4k  the same with nginx's default fastcgi_buffer_size (the site's lines removed)
#   handoff-cli     php -S -> send_file()                    (the manager streams)
# (the handoff backends force handoff.inline_below = 0; the *-inline variants in S3 force
# the worker to stream the file itself)
#   readfile-fpm    nginx -> php-fpm -> readfile(), nginx fastcgi buffering on (default)
#   readfile-nobuf  the same with X-Accel-Buffering: no
#   xaccel          nginx -> php-fpm -> X-Accel-Redirect -> nginx internal location
#   static          nginx serves the file from a plain location
#   relay           the nginx relay limit: nginx proxy_pass, proxy_buffering off,
#                   proxy_buffer_size 128k (= the site's fastcgi_buffer_size), to a second
#                   nginx (own config, one worker, a Unix socket) serving the data dir with
#                   sendfile: the best any design in which nginx relays the bytes can do
#   handoff-fpm-tls, xaccel-tls, relay-tls, static-tls
#                   the same over HTTPS (TLS 1.3) to nginx (static-tls only when named in
#                   BENCH_BACKENDS)
# S1 and S2 run every backend above; S3 (small files) the plain-HTTP ones except relay, plus
# the *-inline variants.
# Scenarios: S1 slow-client storm + probe (the clients arrive over a ramp, scenario S1-N, and,
# in --full, also as a 1 s burst, scenario S1-N-burst, and as a cold burst, S1-N-cold: the
# same 1 s burst on a fresh stack after a quiet period, as a burst after a quiet spell meets a
# site in production: nginx reloaded (new workers), the manager restarted, then
# BENCH_S1_QUIET seconds (default 10) of nothing, so that the memory of the last run's socket
# buffers is back with the kernel, or the host), S2 fast clients, S3 small files (and the
# handoff.inline_below sweep), S4 worker hold time (php-fpm access log), S5 10,000 slow
# connections. Output: $BENCH_OUT (default bench/results/MODE): results.jsonl (one line per
# client run), probe-*.csv, fpm-*.log, report.md, s1-probe-latency.png and
# s1-probe-per-backend.png (bench/report.py; --publish copies both plots into docs/).
# Every line of results.jsonl also carries the manager's CPU time per thread during that
# client run (bench/manager_cpu.py) and a threads=N label (its --threads).
#
# --scaling restarts the manager before each round with --threads N (N from BENCH_THREADS,
# default "1 2"; the rounds alternate, so drifting load hits every N alike) and runs in each
# round: S2 64 x 10 MiB through php -S (handoff-cli), nginx+fpm (handoff-fpm) and nginx static
# (the machine's ceiling, no manager), then S5 with many slow downloads. Scenario labels are
# scale-S2-10m and scale-S5-N; bench/report.py prints them as one scaling table.
#
# Environment: BENCH_PORT (nginx port; php -S uses +1, manager metrics +2, the 4k server +3,
# HTTPS +4; default 18480),
# BENCH_DATA (test files, reused across runs; default /tmp/handoff-bench-data), BENCH_RUNS
# (repetitions), BENCH_OUT, BENCH_KEEP=1 (keep the stack's directory and logs after a run
# that succeeded), HANDOFF_SKIP_SETUP=1 (packages and build already done),
# BENCH_QUIET_LOAD (wait, polling every 15 s for at most 10 min, until the 1-minute load
# average is below it before measuring; default 0.8 in --scaling, off otherwise),
# BENCH_THREADS (--scaling: the thread counts to alternate, default "1 2"), BENCH_REV (a
# commit: export it to /tmp/handoff-bench-build-REV, build it there and measure its
# extension and manager instead of target/release; the harness, the load client and bench/www
# stay the work tree's).
#
# BENCH_MANAGER_ARGS: extra handoff-manager flags for the whole run (labelled manager_args).
# BENCH_AB_MANAGER_ARGS: S1's handoff backends also run with these manager flags added, as
# BACKEND@ab, in the same run (see with_manager_args).
# Focused runs (any mode): BENCH_SCENARIOS (default "S1 S2 S3 S5"),
# BENCH_BACKENDS (replaces the backend list of S1, S2 and S3; in S1 the idle baselines run
# only when named: idle-fpm, idle-cli), BENCH_S1_NS (client counts, e.g. "1000"),
# BENCH_S3_SIZES (S3 file sizes, e.g. "4k 16k 64k 128k"; of 4k 16k 64k 128k 256k),
# BENCH_S1_ARRIVALS ("ramp", "burst", "cold", or several; default "ramp burst cold" in --full,
# ramp otherwise), BENCH_S1_QUIET (seconds of quiet before each cold burst, default 10),
# BENCH_NGINX_WORKERS (nginx's worker_processes, default auto), e.g.
#   BENCH_SCENARIOS=S1 BENCH_S1_NS=1000 BENCH_S1_ARRIVALS=burst \
#     BENCH_BACKENDS="idle-fpm handoff-fpm xaccel relay" bash bench/run.sh --full
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=quick
PUBLISH=0
for arg in "$@"; do
    case "$arg" in
        --quick) MODE=quick ;;
        --full) MODE=full ;;
        --smoke) MODE=smoke ;;
        --scaling) MODE=scaling ;;
        --publish) PUBLISH=1 ;;
        -h | --help) awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg (--quick, --full, --smoke, --scaling, --publish)" >&2; exit 2 ;;
    esac
done

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [ -d "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin" ]; then
    export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
fi
exec </dev/null

log() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

# --- parameters per mode -------------------------------------------------------------------
KIB=1024
MIB=$((1024 * 1024))
S1_RATE=$((200 * KIB))
case "$MODE" in
    smoke)
        RUNS=1
        S1_NS=(20); S1_SECS=3; S1_RAMP=0.5; S1_ARRIVALS=(ramp)
        S2_CONNS=8; S2_SECS=1.5; S2_BIG=""; S2_BIG_REQUESTS=0
        S3_SIZES=(4k); S3_SECS=1
        S5_CONNS=100; S5_RATE=$((10 * KIB)); S5_SECS=4; S5_RAMP=1
        ;;
    quick)
        RUNS=3
        S1_NS=(200); S1_SECS=3.5; S1_RAMP=1; S1_ARRIVALS=(ramp)
        S2_CONNS=64; S2_SECS=1; S2_BIG=f1g; S2_BIG_REQUESTS=1
        S3_SIZES=(4k 64k); S3_SECS=0.8
        S5_CONNS=2000; S5_RATE=$((10 * KIB)); S5_SECS=10; S5_RAMP=4
        ;;
    full)
        RUNS=3
        S1_NS=(200 1000 2000); S1_SECS=15; S1_RAMP=3; S1_ARRIVALS=(ramp burst cold)
        S2_CONNS=64; S2_SECS=5; S2_BIG=f1g; S2_BIG_REQUESTS=2
        S3_SIZES=(4k 16k 64k 128k 256k); S3_SECS=3
        S5_CONNS=10000; S5_RATE=$((10 * KIB)); S5_SECS=45; S5_RAMP=25
        ;;
    scaling)
        RUNS=5
        S1_NS=(); S1_SECS=0; S1_RAMP=0; S1_ARRIVALS=()
        S2_CONNS=64; S2_SECS=3; S2_BIG=""; S2_BIG_REQUESTS=0
        S5_CONNS=8000; S5_RATE=$((10 * KIB)); S5_SECS=16; S5_RAMP=8
        ;;
esac
QUIET_LOAD="${BENCH_QUIET_LOAD:-}"
[ "$MODE" = scaling ] && QUIET_LOAD="${BENCH_QUIET_LOAD:-0.8}"
read -r -a SCALING_THREADS <<<"${BENCH_THREADS:-1 2}"
RUNS="${BENCH_RUNS:-$RUNS}"
PORT="${BENCH_PORT:-18480}"
CLI_PORT=$((PORT + 1))
METRICS_PORT=$((PORT + 2))
DEFAULTS_PORT=$((PORT + 3))
SCENARIOS="${BENCH_SCENARIOS:-S1 S2 S3 S5}"
TLS_PORT=$((PORT + 4))
# The 1 s burst: all S1 clients open their connections within one second.
S1_BURST=1
# Before a cold burst: seconds of quiet on a fresh stack.
S1_QUIET="${BENCH_S1_QUIET:-10}"
NGINX_WORKERS="${BENCH_NGINX_WORKERS:-auto}"
[ -n "${BENCH_S1_NS:-}" ] && read -r -a S1_NS <<<"$BENCH_S1_NS"
[ -n "${BENCH_S1_ARRIVALS:-}" ] && read -r -a S1_ARRIVALS <<<"$BENCH_S1_ARRIVALS"
[ -n "${BENCH_S3_SIZES:-}" ] && read -r -a S3_SIZES <<<"$BENCH_S3_SIZES"
for size in "${S3_SIZES[@]}"; do
    case "$size" in 4k | 16k | 64k | 128k | 256k) ;; *) die "BENCH_S3_SIZES: no file f$size" ;; esac
done
for a in "${S1_ARRIVALS[@]}"; do
    case "$a" in ramp | burst | cold) ;; *) die "BENCH_S1_ARRIVALS: $a is not ramp, burst or cold" ;; esac
done
DATA="${BENCH_DATA:-/tmp/handoff-bench-data}"
OUT="${BENCH_OUT:-$REPO/bench/results/$MODE}"
SO="$REPO/target/release/libhandoff.so"
MANAGER="$REPO/target/release/handoff-manager"
CLIENT="$REPO/target/release/handoff-bench"
STACK="$REPO/target/release/handoff-stack"
DOCROOT="$REPO/bench/www"

# --- setup: packages, build, limits ----------------------------------------------------------
if [ "${HANDOFF_SKIP_SETUP:-0}" != "1" ]; then
    if [ -n "${BENCH_REV:-}" ]; then
        HANDOFF_SKIP_BUILD=1 bash "$REPO/scripts/setup.sh"
    else
        bash "$REPO/scripts/setup.sh"
    fi
fi
# BENCH_REV: measure the binaries of that commit, exported (git archive) and built apart from
# the work tree, so that others editing and rebuilding the tree cannot change them mid-run.
if [ -n "${BENCH_REV:-}" ]; then
    rev="$(git -C "$REPO" rev-parse --short "$BENCH_REV^{commit}")" || die "BENCH_REV=$BENCH_REV is not a commit"
    build="/tmp/handoff-bench-build-$rev"
    if [ ! -e "$build/.built" ]; then
        log "building $rev in $build"
        rm -rf "$build"
        mkdir -p "$build/src"
        git -C "$REPO" archive "$rev" | tar -x -C "$build/src"
        (cd "$build/src" && cargo build --release --workspace) || die "building $rev failed"
        touch "$build/.built"
    fi
    SO="$build/src/target/release/libhandoff.so"
    MANAGER="$build/src/target/release/handoff-manager"
    # The load client stays the work tree's: it is part of the harness (an older one would
    # not know --tls-ca), and both sides of an A/B are then measured by the same client.
fi
# The client is a workspace member: setup.sh's `cargo build --release --workspace` builds it.
[ -x "$CLIENT" ] || (cd "$REPO" && cargo build --release -p handoff-bench)
[ -x "$STACK" ] || (cd "$REPO" && cargo build --release -p handoff-stack)
for f in "$SO" "$MANAGER" "$CLIENT" "$STACK"; do [ -e "$f" ] || die "$f is missing"; done
command -v php-fpm8.2 >/dev/null || command -v php-fpm >/dev/null || die "php-fpm not found"
command -v nginx >/dev/null || die "nginx not found"
# Bench-only dependency: matplotlib for the plot (not needed by --smoke).
if [ "$MODE" != smoke ] && ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib (pip) for the plot"
    python3 -m pip install --quiet matplotlib || log "matplotlib unavailable: no plot"
fi

# 10,000 slow downloads need 2 descriptors each in the manager (connection + file) and in
# nginx (client + upstream), 1 in the client. Raise the hard limit where allowed (root with
# CAP_SYS_RESOURCE), else use what there is and scale S5 down to fit.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT="$(ulimit -n)"
if [ "$FD_LIMIT" != unlimited ] && [ "$FD_LIMIT" -lt $((S5_CONNS * 2 + 1000)) ]; then
    S5_CONNS=$(((FD_LIMIT - 1000) / 2))
    log "fd limit $FD_LIMIT: S5 scaled down to $S5_CONNS connections"
fi

# --- test files (outside the docroot; reused across runs) ------------------------------------
mkdir -p "$DATA"
chmod 0755 "$DATA"
make_file() { # name bytes
    local path="$DATA/$1"
    if [ "$(stat -c %s "$path" 2>/dev/null || echo 0)" != "$2" ]; then
        log "generating $path ($2 bytes)"
        # A per-process temp name: two runs sharing BENCH_DATA must not write one file.
        head -c "$2" /dev/urandom >"$path.tmp.$$"
        mv "$path.tmp.$$" "$path"
    fi
    chmod 0644 "$path"
}
make_file f4k $((4 * KIB))
make_file f16k $((16 * KIB))
make_file f64k $((64 * KIB))
make_file f128k $((128 * KIB))
make_file f256k $((256 * KIB))
make_file f10m $((10 * MIB))
make_file f20m $((20 * MIB))
[ -n "$S2_BIG" ] && make_file f1g $((1024 * MIB))

HANDOFF_COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- src manager 2>/dev/null || HANDOFF_COMMIT="$HANDOFF_COMMIT+dirty"
[ -n "${BENCH_REV:-}" ] && HANDOFF_COMMIT="$rev (BENCH_REV, built apart from the work tree)"

# --- runtime dir and processes -------------------------------------------------------------
RUN="$(mktemp -d /tmp/handoff-bench.XXXXXX)"
chmod 0755 "$RUN"
LOGS="$RUN/logs"
TEMP="$RUN/nginx-temp"
mkdir -p "$LOGS" "$TEMP" "$OUT"
rm -f "$OUT"/results.jsonl "$OUT"/probe-*.csv "$OUT"/fpm-*.log "$OUT"/fpm-logs.tar.xz \
    "$OUT"/manager-access.log

PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        wait "${PIDS[$i]}" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo "run.sh: failed (status $status); last lines of the logs in $LOGS:" >&2
        tail -n 15 "$LOGS"/* >&2 2>/dev/null || true
    elif [ -n "${BENCH_KEEP:-}" ]; then
        echo "run.sh: the stack's logs are kept in $LOGS" >&2
    else
        rm -rf "$RUN"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Five consecutive ports from PORT must be free; without BENCH_PORT, try a few other bases.
ports_free() {
    local p
    for p in "$1" $(($1 + 1)) $(($1 + 2)) $(($1 + 3)) $(($1 + 4)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 1
    done
    return 0
}
if ! ports_free "$PORT"; then
    [ -z "${BENCH_PORT:-}" ] || die "a port in 127.0.0.1:$PORT..$((PORT + 4)) is in use: change BENCH_PORT"
    for base in 28480 38480 48480 19480 29480; do
        if ports_free "$base"; then PORT=$base; break; fi
    done
    ports_free "$PORT" || die "no free ports found: set BENCH_PORT"
    CLI_PORT=$((PORT + 1))
    METRICS_PORT=$((PORT + 2))
    DEFAULTS_PORT=$((PORT + 3))
    TLS_PORT=$((PORT + 4))
    log "using ports $PORT..$TLS_PORT"
fi

wait_for() { # what pid check...
    local what="$1" pid="$2"
    shift 2
    local deadline=$((SECONDS + 20))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up"
        [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within 20 s"
        sleep 0.1
    done
}

# HTTPS: a throwaway CA and a server certificate for 127.0.0.1 (ECDSA P-256, valid 2 days),
# made per run in the run's temp dir; the load client trusts only this CA.
TLS_DIR="$RUN/tls"
make_tls_certs() {
    command -v openssl >/dev/null || die "openssl not found (scripts/setup.sh installs it)"
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=handoff-bench throwaway CA" -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 2 -days 2 \
            -extfile server.ext -out server.pem
        openssl verify -CAfile ca.pem server.pem
    ) >"$LOGS/openssl.log" 2>&1 || die "openssl could not make the certificates (see $LOGS/openssl.log)"
}
make_tls_certs

# The relay location (in both plain servers and the HTTPS one, through bench-locations.conf):
# the main nginx relays a second nginx, the relay upstream, which handoff-stack starts on
# RELAY_SOCK (--relay-socket) serving the data dir with sendfile, one worker, no PHP.
RELAY_SOCK="$RUN/relay-upstream.sock"
# proxy_buffer_size / proxy_buffers = the site's fastcgi_buffer_size / fastcgi_buffers
# (128k, 4 128k), so that the relay limit and send_file() behind nginx relay through one
# buffer of one size (unbuffered, nginx relays through proxy_buffer_size alone).
cat >"$RUN/bench-relay.conf" <<EOF
location /relay/ {
    proxy_pass http://unix:$RELAY_SOCK:/;
    proxy_buffering off;
    proxy_buffer_size 128k;
    proxy_buffers 4 128k;
    proxy_read_timeout 300s;
}
EOF

# handoff-manager: only this user may connect (0660; local benchmark, php-fpm runs as this user).
# A copy of the binary: --scaling restarts the manager, and a rebuild of target/release
# during the run must not change what the later rounds measure.
cp "$MANAGER" "$RUN/handoff-manager"
MANAGER_SHA="$(sha256sum "$RUN/handoff-manager" | cut -c1-12)"
# handoff-stack runs it (on $RUN/manager.sock, its log $LOGS/manager.log) and writes its pid
# to $RUN/manager.env; MANAGER_PID is the manager's own (CPU sampling), MANAGER_STARTER_PID
# the starter's (stopping it stops the manager).
# BENCH_MANAGER_ARGS: extra manager flags for the whole run (an A/B of a manager setting,
# e.g. "--relay-start-rate 0"); every result line carries them as the label manager_args.
read -r -a MANAGER_EXTRA <<<"${BENCH_MANAGER_ARGS:-}"
# BENCH_AB_MANAGER_ARGS: an A/B of a manager setting inside one run: in S1 every handoff
# backend runs twice, as itself and, with the manager restarted with these flags added, as
# BACKEND@ab (same stack, same minute, same load); the manager goes back to the run's flags
# afterwards.
AB_ARGS="${BENCH_AB_MANAGER_ARGS:-}"
with_manager_args() { # flags...: restart the manager with these extra flags
    settle
    stop_manager
    read -r -a MANAGER_EXTRA <<<"$*"
    start_manager "$MANAGER_THREADS"
}
start_manager() { # threads
    MANAGER_THREADS="$1"
    rm -f "$RUN/manager.env"
    "$STACK" manager --dir "$RUN" --logs "$LOGS" --manager-bin "$RUN/handoff-manager" \
        --manager-log-level warn -- --socket-mode 0660 \
        --threads "$MANAGER_THREADS" --metrics "127.0.0.1:$METRICS_PORT" \
        --access-log "$LOGS/manager-access.log" --send-timeout 60 --grace 1 \
        "${MANAGER_EXTRA[@]}" >/dev/null 2>>"$LOGS/stack.log" &
    MANAGER_STARTER_PID=$!
    PIDS+=("$MANAGER_STARTER_PID")
    wait_for handoff-manager "$MANAGER_STARTER_PID" test -f "$RUN/manager.env"
    MANAGER_PID="$(sed -n 's/^STACK_MANAGER_PID=//p' "$RUN/manager.env")"
    wait_for handoff-manager "$MANAGER_STARTER_PID" curl -sf "http://127.0.0.1:$METRICS_PORT/status"
}
stop_manager() { # SIGTERM, wait for it to exit (it drains for --grace 1 s at most)
    kill -TERM "$MANAGER_STARTER_PID" 2>/dev/null || true
    wait "$MANAGER_STARTER_PID" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$MANAGER_STARTER_PID" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
start_manager 2

# php-fpm and nginx, started by handoff-stack (which stops them when it is stopped):
# - php-fpm: the shared pool file unchanged; the same pool section reopened afterwards only
#   to add an access log with the request duration in microseconds (S4).
# - nginx: the shared site template with one include added before its closing brace for the
#   bench-only locations (X-Accel-Redirect needs an internal location in the same server;
#   nginx static needs a location serving the data; /relay/ is the relay limit). The PHP
#   location is the shared one, byte for byte. The same site with the same include serves
#   HTTPS on TLS_PORT (--tls-port: `listen ... ssl`, the run's certificate, TLS 1.3 only).
# - The relay upstream: a second nginx (--relay-socket, --relay-root; its own config, one
#   worker, the main nginx's worker_connections and rlimit), the relay limit's upstream.
# - A second server on DEFAULTS_PORT: the same site *without* its fastcgi_buffer_size and
#   fastcgi_buffers lines, i.e. nginx's defaults (a 4 KiB relay buffer). With
#   X-Accel-Buffering: no, which send_file() sends, nginx relays a response through that one
#   buffer: the handoff-fpm-4k backend shows what the shared site's 128k buffer is worth.
FPM_LOG="$LOGS/fpm-access.log"
export HANDOFF_BENCH_DATA="$DATA"
cat >"$RUN/bench-locations.conf" <<EOF
location /_protected/ {
    internal;
    alias $DATA/;
}
location /static/ {
    alias $DATA/;
}
include $RUN/bench-relay.conf;
EOF
rm -f "$RUN/stack.env"
"$STACK" up --no-manager --dir "$RUN" --logs "$LOGS" --port "$PORT" --docroot "$DOCROOT" \
    --extension "$SO" --fpm-children 4 \
    --fpm-pool-line "access.log = $FPM_LOG" --fpm-pool-line 'access.format = "%{micro}d %s %r%Q%q"' \
    --nginx-workers "$NGINX_WORKERS" --nginx-rlimit-nofile "$FD_LIMIT" --nginx-connections 32768 \
    --nginx-error-level error --nginx-no-access-log \
    --nginx-http-line "sendfile on;" --nginx-http-line "tcp_nopush on;" \
    --nginx-http-line "keepalive_requests 1000000;" \
    --nginx-server-line "include $RUN/bench-locations.conf;" \
    --tls-port "$TLS_PORT" --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key" \
    --tls-protocols TLSv1.3 --relay-socket "$RELAY_SOCK" --relay-root "$DATA" \
    --default-buffers-port "$DEFAULTS_PORT" >/dev/null 2>>"$LOGS/stack.log" &
STACK_PID=$!
PIDS+=("$STACK_PID")
wait_for "php-fpm and nginx" "$STACK_PID" test -f "$RUN/stack.env"
FPM_PID="$(sed -n 's/^STACK_FPM_PID=//p' "$RUN/stack.env")"
NGINX_PID="$(sed -n 's/^STACK_NGINX_PID=//p' "$RUN/stack.env")"
RELAY_PID="$(sed -n 's/^STACK_RELAY_PID=//p' "$RUN/stack.env")"
wait_for nginx "$STACK_PID" curl -sf "http://127.0.0.1:$PORT/probe.php"

# php -S: one process (its default), the extension loaded, the same docroot.
php -S "127.0.0.1:$CLI_PORT" -t "$DOCROOT" -d "extension=$SO" \
    -d "handoff.socket=$RUN/manager.sock" >"$LOGS/php-cli-server.log" 2>&1 &
CLI_PID=$!
PIDS+=("$CLI_PID")
wait_for "php -S" "$CLI_PID" curl -sf "http://127.0.0.1:$CLI_PORT/probe.php"

# Every backend must deliver the right bytes before anything is measured (and again after
# each restart of the manager in --scaling).
check_stack() {
    local want got url
    want="$(sha256sum <"$DATA/f64k" | cut -d' ' -f1)"
    for url in "$PORT/send.php?f=f64k&handoff=1" "$CLI_PORT/send.php?f=f64k&handoff=1" \
        "$PORT/readfile.php?f=f64k" "$PORT/xaccel.php?f=f64k" "$PORT/static/f64k" \
        "$PORT/send.php?f=f64k&inline=1" "$DEFAULTS_PORT/send.php?f=f64k&handoff=1"; do
        got="$(curl -sf --max-time 10 "http://127.0.0.1:$url" | sha256sum | cut -d' ' -f1)"
        [ "$got" = "$want" ] || die "http://127.0.0.1:$url did not return the file"
    done
    check_relay_and_tls "$want"
    grep -q '"accepted":[1-9]' <(curl -s "http://127.0.0.1:$METRICS_PORT/status") ||
        die "the manager took no handoff: send_file() is not handing off"
}
# The relay limit and the HTTPS server: the right bytes, verified against the run's CA, and
# TLS 1.2 refused.
check_relay_and_tls() { # sha256 of f64k
    local url got
    for url in "http://127.0.0.1:$PORT/relay/f64k" "https://127.0.0.1:$TLS_PORT/relay/f64k" \
        "https://127.0.0.1:$TLS_PORT/send.php?f=f64k&handoff=1" \
        "https://127.0.0.1:$TLS_PORT/xaccel.php?f=f64k" "https://127.0.0.1:$TLS_PORT/static/f64k"; do
        got="$(curl -sf --max-time 10 --cacert "$TLS_DIR/ca.pem" "$url" | sha256sum | cut -d' ' -f1)"
        [ "$got" = "$1" ] || die "$url did not return the file"
    done
    if curl -sf --max-time 10 --cacert "$TLS_DIR/ca.pem" --tls-max 1.2 \
        "https://127.0.0.1:$TLS_PORT/probe.php" >/dev/null 2>&1; then
        die "nginx accepted TLS 1.2 on $TLS_PORT (TLS 1.3 only wanted)"
    fi
}
check_stack
log "stack up in $RUN (manager $MANAGER_PID, php-fpm $FPM_PID, nginx $NGINX_PID, php -S $CLI_PID, relay upstream $RELAY_PID; HTTPS on $TLS_PORT)"

# A cold start for S1-N-cold: nginx reloaded (SIGHUP: new workers, fresh memory; the old
# ones leave once idle), the manager restarted, then S1_QUIET seconds with no traffic.
fresh_stack() {
    settle
    kill -HUP "$NGINX_PID"
    stop_manager
    start_manager "$MANAGER_THREADS"
    wait_for nginx "$STACK_PID" curl -sf "http://127.0.0.1:$PORT/probe.php"
    sleep "$S1_QUIET"
}

# --- running the client ----------------------------------------------------------------------
url_of() { # backend file -> "port path"
    case "${1%@ab}" in
        handoff-fpm) echo "$PORT /send.php?f=$2&handoff=1" ;;
        handoff-fpm-inline) echo "$PORT /send.php?f=$2&inline=1" ;;
        handoff-fpm-4k) echo "$DEFAULTS_PORT /send.php?f=$2&handoff=1" ;;
        handoff-cli) echo "$CLI_PORT /send.php?f=$2&handoff=1" ;;
        handoff-cli-inline) echo "$CLI_PORT /send.php?f=$2&inline=1" ;;
        readfile-fpm) echo "$PORT /readfile.php?f=$2" ;;
        readfile-nobuf) echo "$PORT /readfile.php?f=$2&nobuf=1" ;;
        xaccel) echo "$PORT /xaccel.php?f=$2" ;;
        static) echo "$PORT /static/$2" ;;
        relay) echo "$PORT /relay/$2" ;;
        handoff-fpm-tls) echo "$TLS_PORT /send.php?f=$2&handoff=1" ;;
        xaccel-tls) echo "$TLS_PORT /xaccel.php?f=$2" ;;
        relay-tls) echo "$TLS_PORT /relay/$2" ;;
        static-tls) echo "$TLS_PORT /static/$2" ;;
        idle-fpm | idle-cli) echo "$PORT /probe.php" ;;
        *) die "unknown backend $1" ;;
    esac
}

# Waits (at most 20 s) until the previous run's downloads are gone, so that runs do not
# overlap: the manager has none running, no nginx process holds a temp file (nginx unlinks
# them at once, so the directory itself always looks empty) and php-fpm's access log has
# stopped growing (queued readfile() requests finished).
nginx_temp_files() {
    local pid
    for pid in $(pgrep -P "$NGINX_PID") "$NGINX_PID"; do
        find "/proc/$pid/fd" -lname "$TEMP/*" 2>/dev/null
    done | head -n 1
}
settle() {
    local deadline=$((SECONDS + 20)) size=-1
    while [ "$SECONDS" -lt "$deadline" ]; do
        local now_size
        now_size="$(stat -c %s "$FPM_LOG" 2>/dev/null || echo 0)"
        if [ "$now_size" = "$size" ] &&
            grep -q '"active":0[,}]' <(curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/status") &&
            [ -z "$(nginx_temp_files)" ]; then
            return 0
        fi
        size="$now_size"
        sleep 0.3
    done
    log "warning: previous run had not drained after 20 s"
}

# bench SCENARIO BACKEND RUN [client args...]: one bounded client run; appends its JSON line
# to results.jsonl and keeps the php-fpm access-log lines it caused.
bench() {
    local scenario="$1" backend="$2" run="$3"
    shift 3
    settle
    local port path probe_port=$PORT
    read -r port path <<<"$(url_of "$backend" "${FILE:-f20m}")"
    case "${backend%@ab}" in *-cli*) probe_port=$CLI_PORT ;; esac
    local load1
    load1="$(cut -d' ' -f1 /proc/loadavg)"
    local before
    before="$(stat -c %s "$FPM_LOG" 2>/dev/null || echo 0)"
    local tag="$scenario-$backend-$run"
    [ "$MODE" = scaling ] && tag="$scenario-$backend-t$MANAGER_THREADS-$run"
    # nginx temp files matter in S1/S2; walking 20,000 descriptors in S5 would load the box.
    local watch=(--watch-dir "$TEMP")
    case "$scenario" in S5*) watch=() ;; esac
    # HTTPS backends: the load connections speak TLS 1.3 (the probe stays plain HTTP).
    local tls=()
    case "${backend%@ab}" in *-tls) tls=(--tls-ca "$TLS_DIR/ca.pem") ;; esac
    # Idle baselines: the probe alone, the same arguments with no load connections.
    local args=("$@") i
    case "$backend" in
        idle-*) for i in "${!args[@]}"; do [ "${args[$i]}" = --conns ] && args[i + 1]=0; done ;;
    esac
    local cpu_before
    cpu_before="$(python3 "$REPO/bench/manager_cpu.py" snapshot "$MANAGER_PID")"
    "$CLIENT" --addr "127.0.0.1:$port" --path "$path" \
        --group "nginx=$NGINX_PID" --group "php-fpm=$FPM_PID" --group "manager=$MANAGER_PID" \
        --group "php-cli=$CLI_PID" --group "relay-upstream=$RELAY_PID" "${watch[@]}" "${tls[@]}" \
        --label "scenario=$scenario" --label "backend=$backend" --label "run=$run" \
        --label "load1=$load1" --label "file=${FILE:-f20m}" --label "threads=$MANAGER_THREADS" \
        --label "nginx_workers=$NGINX_WORKERS" \
        --label "manager_args=${MANAGER_EXTRA[*]}" \
        --probe-addr "127.0.0.1:$probe_port" "${args[@]}" >>"$OUT/results.jsonl" ||
        die "handoff-bench failed in $tag"
    python3 "$REPO/bench/manager_cpu.py" merge "$MANAGER_PID" "$cpu_before" "$OUT/results.jsonl" ||
        die "could not read the manager's CPU time after $tag"
    tail -c +"$((before + 1))" "$FPM_LOG" >"$OUT/fpm-$tag.log" 2>/dev/null || true
    [ -s "$OUT/fpm-$tag.log" ] || rm -f "$OUT/fpm-$tag.log"
    printf '    %-28s %s\n' "$tag" "$(tail -n 1 "$OUT/results.jsonl" | python3 -c '
import json, sys
r = json.load(sys.stdin)
m = r["manager_cpu"]
print("req/s %.0f  GB/s %.2f  failed %d  starved %d  progressing %s  probe p50/p99 %s/%s ms (%d failed)  manager CPU %.2f s (%s)" % (
    r["req_per_s"], r["gb_per_s"], r["failed"], r["starved"], r["progressing_median"],
    "%.2f" % r["probe_p50_ms"] if r["probe_p50_ms"] is not None else "-",
    "%.2f" % r["probe_p99_ms"] if r["probe_p99_ms"] is not None else "timeout",
    r["probe_failed"], m["cpu_s"],
    " ".join("%s %.2f" % (k, v) for k, v in m["threads"].items() if k.startswith("download-"))))')"
}

# S1 and S2 compare every backend, S3 the plain-HTTP ones (plus the inline variants);
# BENCH_BACKENDS replaces all three lists (S1: the idle baselines too).
BACKENDS=(handoff-fpm handoff-fpm-4k handoff-cli readfile-fpm readfile-nobuf xaccel static
    relay handoff-fpm-tls xaccel-tls relay-tls)
S1_BACKENDS=(idle-fpm idle-cli "${BACKENDS[@]}")
S3_BACKENDS=(handoff-fpm handoff-fpm-4k handoff-cli readfile-fpm readfile-nobuf xaccel static
    handoff-fpm-inline handoff-cli-inline)
if [ -n "${BENCH_BACKENDS:-}" ]; then
    read -r -a BACKENDS <<<"$BENCH_BACKENDS"
    for b in "${BACKENDS[@]}"; do url_of "$b" f4k >/dev/null; done # dies on an unknown name
    S1_BACKENDS=("${BACKENDS[@]}")
    S3_BACKENDS=()
    for b in "${BACKENDS[@]}"; do
        case "$b" in idle-*) ;; *) S3_BACKENDS+=("$b") ;; esac
    done
    BACKENDS=("${S3_BACKENDS[@]}") # S2: the idle baselines are S1's only
fi
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
# Another engineer's build or test run on the same cores would land in some runs and not
# others: optionally wait until the machine is quiet before measuring.
START_LOAD="$(cut -d' ' -f1 /proc/loadavg)"
if [ -n "$QUIET_LOAD" ]; then
    quiet_deadline=$((SECONDS + 600))
    until awk -v a="$START_LOAD" -v b="$QUIET_LOAD" 'BEGIN { exit !(a < b) }'; do
        if [ "$SECONDS" -ge "$quiet_deadline" ]; then
            log "load average still $START_LOAD after 10 minutes: measuring anyway"
            break
        fi
        log "waiting for a quiet machine: load average $START_LOAD (want < $QUIET_LOAD)"
        sleep 15
        START_LOAD="$(cut -d' ' -f1 /proc/loadavg)"
    done
fi
log "load average at the start of the measurements: $START_LOAD"
started=$SECONDS

# --scaling: the manager restarted with each thread count in turn, S2 and S5 in each round.
if [ "$MODE" = scaling ]; then
    for run in $(seq 1 "$RUNS"); do
        for threads in "${SCALING_THREADS[@]}"; do
            settle
            stop_manager
            start_manager "$threads"
            check_stack
            wants S2 && log "scaling run $run, --threads $threads: S2 $S2_CONNS x 10 MiB"
            wants S2 && for backend in handoff-cli handoff-fpm static; do
                FILE=f10m bench scale-S2-10m "$backend" "$run" --conns "$S2_CONNS" \
                    --duration "$S2_SECS" --read-buf $((1024 * KIB)) --max-requests 100000
            done
            wants S5 && log "scaling run $run, --threads $threads: S5 $S5_CONNS slow downloads at $((S5_RATE / KIB)) KiB/s"
            wants S5 && FILE=f20m bench "scale-S5-$S5_CONNS" handoff-fpm "$run" --conns "$S5_CONNS" \
                --rate "$S5_RATE" --ramp "$S5_RAMP" --duration "$S5_SECS" --tick-ms 250
        done
    done
    SCENARIOS="" # the regular scenarios below are not run
fi

for run in $(seq 1 "$RUNS"); do
    # S1: N slow readers of a 20 MiB file at 200 KiB/s each, a probe page every 100 ms.
    # Arrivals: spread over S1_RAMP (scenario S1-N), or all within 1 s (S1-N-burst).
    wants S1 && for n in "${S1_NS[@]}"; do
        for arrival in "${S1_ARRIVALS[@]}"; do
            scn="S1-$n" ramp="$S1_RAMP"
            [ "$arrival" = burst ] && scn="S1-$n-burst" ramp="$S1_BURST"
            [ "$arrival" = cold ] && scn="S1-$n-cold" ramp="$S1_BURST"
            log "S1 run $run: $n slow clients x 200 KiB/s arriving over ${ramp}s ($arrival), ${S1_SECS}s"
            for backend in "${S1_BACKENDS[@]}"; do
                variants=("$backend")
                [ -n "$AB_ARGS" ] && [[ "$backend" == handoff-* ]] && variants+=("$backend@ab")
                for v in "${variants[@]}"; do
                    [[ "$v" == *@ab ]] && with_manager_args "${BENCH_MANAGER_ARGS:-} $AB_ARGS"
                    [ "$arrival" = cold ] && fresh_stack
                    FILE=f20m bench "$scn" "$v" "$run" --conns "$n" --rate "$S1_RATE" \
                        --ramp "$ramp" --duration "$S1_SECS" --probe-path /probe.php \
                        --probe-csv "$OUT/probe-$scn-$v-$run.csv" --label "arrival=$arrival" \
                        --label "ramp_s=$ramp"
                    [[ "$v" == *@ab ]] && with_manager_args "${BENCH_MANAGER_ARGS:-}"
                done
            done
        done
    done

    # S2: fast readers (1 MiB reads): 64 x 10 MiB, then 1 x 1 GiB.
    wants S2 && log "S2 run $run: $S2_CONNS x 10 MiB${S2_BIG:+ and 1 x 1 GiB}"
    wants S2 && for backend in "${BACKENDS[@]}"; do
        FILE=f10m bench S2-10m "$backend" "$run" --conns "$S2_CONNS" --duration "$S2_SECS" \
            --read-buf $((1024 * KIB)) --max-requests 100000
        if [ -n "$S2_BIG" ]; then
            FILE="$S2_BIG" bench S2-1g "$backend" "$run" --conns 1 --duration 30 \
                --read-buf $((1024 * KIB)) --max-requests "$S2_BIG_REQUESTS"
        fi
    done

    # S3: small files, 64 keep-alive connections; send_file() also with inline forced.
    wants S3 && for size in "${S3_SIZES[@]}"; do
        log "S3 run $run: f$size x 64 connections"
        for backend in "${S3_BACKENDS[@]}"; do
            FILE="f$size" bench "S3-$size" "$backend" "$run" --conns 64 --duration "$S3_SECS" \
                --read-buf $((256 * KIB)) --max-requests 1000000
        done
    done
done

# S5: manager memory with many live slow downloads (handoff through nginx + php-fpm).
wants S5 && for run in $(seq 1 "$RUNS"); do
    log "S5 run $run: $S5_CONNS slow downloads at $((S5_RATE / KIB)) KiB/s"
    FILE=f20m bench "S5-$S5_CONNS" handoff-fpm "$run" --conns "$S5_CONNS" --rate "$S5_RATE" \
        --ramp "$S5_RAMP" --duration "$S5_SECS" --tick-ms 250
    [ "$MODE" = full ] || break # quick and smoke: one S5 run
done

log "measurements done in $((SECONDS - started)) s"
# php-fpm access-log excerpts (S4) are packed: tens of MB as text, ~2 MB packed.
(cd "$OUT" && find . -maxdepth 1 -name 'fpm-*.log' -printf '%f\n' | sort |
    tar -cJf fpm-logs.tar.xz -T - && rm -f fpm-*.log)
{
    echo "mode=$MODE runs=$RUNS date=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') cores=$(nproc)"
    echo "mem=$(free -g | awk '/^Mem:/ {print $2}')GiB kernel=$(uname -r)"
    echo "nginx=$(nginx -v 2>&1 | cut -d/ -f2) php=$(php -r 'echo PHP_VERSION;') rustc=$(rustc --version | cut -d' ' -f2)"
    if [ -n "${BENCH_REV:-}" ]; then
        echo "handoff=$HANDOFF_COMMIT manager=sha256:$MANAGER_SHA"
    else
        echo "handoff=$HANDOFF_COMMIT (HEAD when the run started) manager=sha256:$MANAGER_SHA"
    fi
    echo "load1_at_start=$START_LOAD quiet_wanted=${QUIET_LOAD:-no} nginx_workers=$NGINX_WORKERS"
} >"$OUT/machine.txt"
publish=()
[ "$PUBLISH" = 1 ] && publish=(--publish)
python3 "$REPO/bench/report.py" "$OUT" "${publish[@]}" || die "bench/report.py failed"
log "results in $OUT"
