#!/usr/bin/env bash
# The compose test (scripts/test.sh runs it): docker-compose.yml built and run for real.
#
#   bash scripts/compose-test.sh     as root
#
# 1. Docker: uses a running engine, or starts its own dockerd (--bridge=none
#    --iptables=false, its own data-root, exec-root and socket) and stops it at the end.
#    docker.io comes from scripts/setup.sh.
# 2. debian:trixie-slim: when the engine lacks it (no registry needed), made with
#    `debootstrap --variant=minbase trixie` and `docker import`; the tarball is cached in
#    /var/cache/handoff/.
# 3. Crates: `cargo vendor` from the host's cargo cache into docker/vendor/ (the build then
#    needs no crates.io: a container may sit behind a TLS proxy it does not trust).
# 4. `docker-compose up --build` with docker-compose.test.yml (host networking for every
#    build and container; nginx on 127.0.0.1 and a free port), then the Rust test
#    `compose::up::` (tests/compose.rs) checks the running stack, then
#    `docker-compose down -v`, also on failure.
# 5. docker/add-handoff.Dockerfile, the documented way to add handoff to an existing php-fpm
#    image, applied to a plain Debian 13 php8.4-fpm image: the result lists the extension,
#    has send_file() and runs handoff-manager.
#
# Prints 'compose tests: N passed, N failed, N skipped' as its last line.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CACHE="${HANDOFF_CACHE:-/var/cache/handoff}"
BASE_VERSION=1
BASE_TAR="$CACHE/debian-trixie-minbase-v$BASE_VERSION.tar"
MIRROR="${HANDOFF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PROJECT=handoff-test
OWN="/run/handoff-docker"

log() { printf '==> compose: %s\n' "$*"; }
die() { printf 'compose-test.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (dockerd, debootstrap)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v dockerd >/dev/null || die "dockerd is missing (scripts/setup.sh installs docker.io)"
command -v docker-compose >/dev/null || die "docker-compose is missing (scripts/setup.sh)"

dockerd_pid=""
compose_up=""
# docker-compose.yml merged with docker-compose.test.yml, minus the published port: Docker
# refuses port bindings under host networking, and compose v1 cannot drop a list entry in
# an override file.
merged="$(mktemp /tmp/handoff-compose.XXXXXX.yml)"
compose() {
    docker-compose -p "$PROJECT" --project-directory "$REPO" -f "$merged" "$@"
}
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    if [ -n "$compose_up" ]; then
        log "docker-compose down -v"
        compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -f "$merged"
    if [ -n "$dockerd_pid" ]; then
        log "stopping the dockerd it started (pid $dockerd_pid)"
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 300); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$dockerd_pid" 2>/dev/null || true
        # dockerd leaves its default network namespace mounted.
        umount "$OWN/exec/netns/default" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# 1. An engine.
if docker info >/dev/null 2>&1; then
    log "using the running Docker engine"
else
    mkdir -p "$OWN"
    export DOCKER_HOST="unix://$OWN/docker.sock"
    log "starting dockerd (--bridge=none --iptables=false, data in /var/lib/handoff-docker)"
    dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
        --ip-masq=false --data-root /var/lib/handoff-docker --exec-root "$OWN/exec" \
        --pidfile "$OWN/dockerd.pid" -H "$DOCKER_HOST" >"$OWN/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 600); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 30 "$OWN/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.1
    done
    docker info >/dev/null 2>&1 || { tail -n 30 "$OWN/dockerd.log" >&2; die "dockerd did not answer in 60 s"; }
fi

# 2. The base image.
if ! docker image inspect debian:trixie-slim >/dev/null 2>&1; then
    if [ ! -s "$BASE_TAR" ]; then
        command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/setup.sh)"
        mkdir -p "$CACHE"
        dir="$(mktemp -d "$CACHE/trixie-minbase.XXXXXX")"
        log "debootstrap --variant=minbase trixie ($MIRROR)"
        debootstrap --variant=minbase trixie "$dir" "$MIRROR" >"$dir.log" 2>&1 \
            || { tail -n 30 "$dir.log" >&2; die "debootstrap failed"; }
        tar -C "$dir" -cf "$BASE_TAR.partial" .
        mv "$BASE_TAR.partial" "$BASE_TAR"
        rm -rf --one-file-system "$dir" "$dir.log"
    fi
    log "docker import $BASE_TAR as debian:trixie-slim"
    docker import "$BASE_TAR" debian:trixie-slim >/dev/null
fi

# 3. Crates for the build, from the host's cache.
log "cargo vendor into docker/vendor"
cargo vendor --locked --versioned-dirs docker/vendor >/dev/null

# 4. Up, test, down.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export HANDOFF_TEST_PORT="$port"
docker-compose -f docker-compose.yml -f docker-compose.test.yml config \
    | python3 -c 'import sys, yaml
config = yaml.safe_load(sys.stdin)
for service in config["services"].values():
    service.pop("ports", None)
yaml.safe_dump(config, sys.stdout)' >"$merged"
log "docker-compose up --build (nginx on 127.0.0.1:$port)"
compose_up=1
start=$SECONDS
compose up --build -d
log "built and started in $((SECONDS - start)) s"

results="$(mktemp)"
status=0
HANDOFF_COMPOSE_URL="http://127.0.0.1:$port" HANDOFF_COMPOSE_PROJECT="$PROJECT" \
    cargo test --release --test tests -- --ignored compose::up:: 2>&1 | tee "$results" || status=$?
if [ "$status" -ne 0 ]; then
    compose logs --tail 50 || true
fi

# 5. The multi-stage addition to an image that lacks handoff.
log "docker/add-handoff.Dockerfile onto a plain php8.4-fpm image"
start=$SECONDS
added=1
printf '%s\n' 'FROM debian:trixie-slim' \
    'RUN apt-get update && apt-get install -y --no-install-recommends php8.4-fpm && rm -rf /var/lib/apt/lists/*' \
    | docker build -q --network host -t handoff-test-plain-php:local - >/dev/null \
    && docker build -q --network host -f docker/add-handoff.Dockerfile \
        --build-arg PHP_IMAGE=handoff-test-plain-php:local -t handoff-test-added:local docker \
        >/dev/null \
    && docker run --rm --network host handoff-test-added:local sh -c \
        'php -m | grep -qx handoff && php -r "exit(function_exists(\"send_file\") ? 0 : 1);" && handoff-manager --version' \
    || added=0
log "add-handoff: $([ "$added" -eq 1 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
if [ "$added" -ne 1 ]; then
    status=1
fi
awk -v added="$added" '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($i == "passed;") passed += $(i - 1)
            if ($i == "failed;") failed += $(i - 1)
        }
     }
     END {
        passed += added; failed += 1 - added
        printf "compose tests: %d passed, %d failed, 0 skipped\n", passed, failed
     }' "$results"
rm -f "$results"
exit "$status"
