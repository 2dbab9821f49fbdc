#!/usr/bin/env bash
# Install what handoff needs on Debian 12 and build it.
#
#   bash scripts/setup.sh            install missing packages (as root), then cargo build --release
#   HANDOFF_SKIP_BUILD=1 bash ...    install only
#
# Packages are installed only when `dpkg -s` says they are missing, and `apt-get update` runs
# only then. Rust is not installed from Debian (bookworm's cargo is too old): when cargo is
# missing, Rust >= 1.88 is installed with rustup. The distro's nginx, php-fpm, apache2,
# lighttpd and caddy services are never used: demo.sh and the tests start their own instances
# with their own configs.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIN_RUST="1.88"   # darling 0.24 (ext-php-rs-derive) needs 1.88

log() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

# php-fpm and nginx live in /usr/sbin, rustup's cargo in ~/.cargo/bin.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [ -d "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin" ]; then
    export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
fi

PACKAGES=(
    php-cli php-dev php-fpm     # the PHP the extension is built against and tested in
    nginx                       # the demo and the integration tests run their own nginx
    apache2 libapache2-mod-php8.2   # the integration tests run their own Apache with mod_php
                                    # (prefork) and with mod_proxy_fcgi (event) before php-fpm
    lighttpd caddy              # the other FastCGI front ends the tests run before php-fpm
    debootstrap                 # scripts/php-root.sh: Debian 13 and sid roots (PHP 8.4, 8.5)
    openssl                     # a self-signed certificate for the mod_ssl test
    clang libclang-dev          # bindgen (ext-php-rs) needs libclang
    gcc g++ libc6-dev make pkg-config   # g++: libFuzzer for scripts/fuzz.sh
    curl ca-certificates
    gettext-base                # envsubst for the nginx site template
    docker-compose              # tests/compose.rs validates docker-compose.yml, and
    docker.io                   # scripts/compose-test.sh runs it (its own dockerd)
    python3-yaml                # compose-test.sh merges the compose files with it
    shellcheck                  # scripts/test.sh lints the shell scripts
    systemd                     # systemd-socket-activate and systemd-analyze: tests/systemd.rs
    lintian                     # scripts/package-test.sh: the .debs must have no lintian error
    valgrind                    # the PHP-level tests also run under memcheck
    php-zip                     # php/demo builds a ZIP with ZipArchive
    php-symfony-http-foundation php-laravel-framework   # php/src's framework integrations are tested against these
    prometheus                  # tests/operate.rs: a real Prometheus scrapes the manager's metrics
    python3-venv                # kubernetes-validate (PyPI) below
    composer                    # tests/php_package.rs: composer validate --strict on composer.json
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing missing packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        die "missing packages (${missing[*]}): run this script as root, or install them with apt-get"
    fi
    # Keep the package scripts from starting the distro's nginx / php-fpm / apache2 / lighttpd
    # / caddy services: nothing here uses them, and a stock web server on port 80 only gets in
    # the way.
    # policy-rc.d is honoured by invoke-rc.d and deb-systemd-invoke; restore whatever was
    # there before.
    policy=/usr/sbin/policy-rc.d
    policy_backup=""
    if [ -e "$policy" ]; then
        policy_backup="$(mktemp)"
        cp -p "$policy" "$policy_backup"
    fi
    restore_policy() {
        if [ -n "$policy_backup" ]; then
            mv -f "$policy_backup" "$policy"
        else
            rm -f "$policy"
        fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"

    export DEBIAN_FRONTEND=noninteractive
    apt-get update </dev/null
    apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
    restore_policy
    trap - EXIT
else
    log "all Debian packages present"
fi

# kubernetes-validate from PyPI, in its own venv: tests/kubernetes.rs validates the manifest
# against the Kubernetes API schemas the package ships (no cluster, no network at test time).
KUBE_VALIDATE_VERSION=1.37.0
KUBE_VALIDATE="${HANDOFF_KUBE_VALIDATE:-/opt/handoff/kubernetes-validate-$KUBE_VALIDATE_VERSION}"
if [ ! -x "$KUBE_VALIDATE/bin/kubernetes-validate" ]; then
    log "installing kubernetes-validate $KUBE_VALIDATE_VERSION into $KUBE_VALIDATE"
    rm -rf "$KUBE_VALIDATE"
    python3 -m venv "$KUBE_VALIDATE"
    "$KUBE_VALIDATE/bin/pip" install --quiet "kubernetes-validate==$KUBE_VALIDATE_VERSION" </dev/null
fi

# Rust: rustup's toolchain, not Debian's cargo (0.66 / rustc 1.63 in bookworm is too old).
# A fresh machine gets it from rustup, the way rust-lang.org installs Rust.
if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: installing Rust (stable, minimal profile + rustfmt, clippy) with rustup"
    if curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal -c rustfmt,clippy; then
        export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<EOF
setup.sh: error: cargo not found, and installing it with rustup did not work.
  handoff needs Rust >= $MIN_RUST (edition 2021, ext-php-rs 0.16). Debian 12's cargo package
  is too old. Install Rust with rustup (https://rustup.rs), for example:
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
      . "\$HOME/.cargo/env"
  then run this script again.
EOF
    exit 1
fi
rust_version="$(rustc --version | awk '{print $2}')"
if [ "$(printf '%s\n%s\n' "$MIN_RUST" "${rust_version%%-*}" | sort -V | head -n1)" != "$MIN_RUST" ]; then
    die "rustc $rust_version is too old: handoff needs Rust >= $MIN_RUST (rustup update stable)"
fi
log "using $(cargo --version)"

if [ "${HANDOFF_SKIP_BUILD:-0}" = "1" ]; then
    log "HANDOFF_SKIP_BUILD=1: not building"
    exit 0
fi

log "cargo build --release --workspace"
cd "$REPO"
cargo build --release --workspace </dev/null
for artefact in target/release/libhandoff.so target/release/handoff-manager; do
    [ -f "$artefact" ] || die "build finished but $artefact is missing"
done
log "built $REPO/target/release/libhandoff.so and $REPO/target/release/handoff-manager"
