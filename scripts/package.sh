#!/usr/bin/env bash
# Debian packages from one command:
#
#   bash scripts/package.sh           build, then write target/debian/*.deb for the PHP
#                                     whose php-config is on PATH (PHP 8.2 on Debian 12)
#   bash scripts/package.sh --php84   the same inside the Debian 13 root of scripts/php-root.sh trixie,
#                                     against PHP 8.4: target/debian/trixie/*.deb
#
# Two packages, laid out as Debian's own PHP extensions and daemons are:
# - phpX.Y-handoff: handoff.so in PHP's extension directory, /etc/php/X.Y/mods-available/
#   handoff.ini, enabled for every SAPI with Debian's php-maintscript-helper (phpenmod) on
#   install and disabled (phpdismod) on removal. Depends on the PHP API it was built for.
# - handoff-manager: the daemon in /usr/bin, the systemd units (socket-activated
#   handoff-manager.socket + .service, and the handoff-manager@.service takeover pair), and
#   the system user `handoff`, made on install.
# HANDOFF_DEB_MAINTAINER sets the Maintainer field. Both carry the workspace's version (Cargo.toml, [workspace.package]). HANDOFF_SKIP_BUILD=1
# packages what target/ holds; HANDOFF_DEB_OUT overrides the output directory.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { printf '==> package: %s\n' "$*"; }
die() { printf 'package.sh: error: %s\n' "$*" >&2; exit 1; }

if [ "${1:-}" = "--php84" ]; then
    exec bash scripts/php-root.sh trixie --exec \
        "HANDOFF_DEB_OUT='$REPO/target/debian/trixie' bash scripts/package.sh"
fi

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}/release"
OUT="${HANDOFF_DEB_OUT:-$REPO/target/debian}"
VERSION="$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml)"
[ -n "$VERSION" ] || die "no version in Cargo.toml's [workspace.package]"
DEB_VERSION="$VERSION-1"
ARCH="$(dpkg --print-architecture)"
PHP_CONFIG="${PHP_CONFIG:-php-config}"
command -v "$PHP_CONFIG" >/dev/null || die "$PHP_CONFIG is missing (php-dev)"
PHP_VERSION="$("$PHP_CONFIG" --version | cut -d. -f1,2)"
PHP_API="$("$PHP_CONFIG" --phpapi)"
EXT_DIR="$("$PHP_CONFIG" --extension-dir)"
MAINTAINER="${HANDOFF_DEB_MAINTAINER:-handoff maintainers <maintainers@handoff.example.org>}"
EXT_PKG="php$PHP_VERSION-handoff"

if [ "${HANDOFF_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release -p handoff -p handoff-manager (PHP $PHP_VERSION)"
    cargo build --release -p handoff -p handoff-manager
fi
if [ ! -f "$TARGET/libhandoff.so" ] || [ ! -x "$TARGET/handoff-manager" ]; then
    die "no build in $TARGET"
fi

# The newest glibc symbol version a binary needs: its libc6 dependency.
glibc_needed() {
    objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1
}

# Fills $1/usr/share/doc/$2 with what Debian policy asks of every package.
add_docs() {
    local root="$1" pkg="$2" doc="$1/usr/share/doc/$2"
    install -d -m 0755 "$doc"
    {
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo "Upstream-Name: handoff"
        echo
        echo "Files: *"
        echo "Copyright: 2026 The handoff authors"
        echo "License: MIT"
        sed -e 's/^$/./' -e 's/^/ /' LICENSE | tail -n +4
    } >"$doc/copyright"
    chmod 0644 "$doc/copyright"
    {
        printf '%s (%s) unstable; urgency=medium\n\n' "$pkg" "$DEB_VERSION"
        printf '  * Release %s; see /usr/share/doc/%s/changelog.gz.\n\n' "$VERSION" "$pkg"
        # A fixed date keeps the package reproducible for one version.
        printf ' -- %s  Thu, 03 Dec 2026 00:00:00 +0000\n' "$MAINTAINER"
    } | gzip -9n >"$doc/changelog.Debian.gz"
    gzip -9nc CHANGELOG.md >"$doc/changelog.gz"
    chmod 0644 "$doc/changelog.Debian.gz" "$doc/changelog.gz"
}

# Writes DEBIAN/control with the installed size, and builds the .deb.
build_deb() {
    local root="$1" pkg="$2" fields="$3"
    local size
    size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
    {
        echo "Package: $pkg"
        echo "Version: $DEB_VERSION"
        echo "Architecture: $ARCH"
        echo "Maintainer: $MAINTAINER"
        echo "Installed-Size: $size"
        printf '%s\n' "$fields"
    } >"$root/DEBIAN/control"
    find "$root" -type d -exec chmod 0755 {} +
    dpkg-deb --root-owner-group -Zxz --build "$root" "$OUT/${pkg}_${DEB_VERSION}_$ARCH.deb" >/dev/null
    log "wrote $OUT/${pkg}_${DEB_VERSION}_$ARCH.deb"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
rm -f "$OUT"/*.deb

# The extension.
ext="$work/$EXT_PKG"
install -d "$ext/DEBIAN" "$ext$EXT_DIR" "$ext/etc/php/$PHP_VERSION/mods-available"
install -m 0644 "$TARGET/libhandoff.so" "$ext$EXT_DIR/handoff.so"
strip --strip-unneeded "$ext$EXT_DIR/handoff.so"
printf '; configuration for php handoff module\n; priority=20\nextension=handoff.so\n' \
    >"$ext/etc/php/$PHP_VERSION/mods-available/handoff.ini"
chmod 0644 "$ext/etc/php/$PHP_VERSION/mods-available/handoff.ini"
echo "/etc/php/$PHP_VERSION/mods-available/handoff.ini" >"$ext/DEBIAN/conffiles"
add_docs "$ext" "$EXT_PKG"
cat >"$ext/DEBIAN/postinst" <<EOF
#!/bin/sh
# Enables handoff for every PHP $PHP_VERSION SAPI (phpenmod), as Debian's PHP extensions do.
set -e
if [ "\$1" = "configure" ] && [ -e /usr/lib/php/php-maintscript-helper ]; then
    . /usr/lib/php/php-maintscript-helper
    php_invoke enmod $PHP_VERSION ALL handoff
fi
exit 0
EOF
cat >"$ext/DEBIAN/postrm" <<EOF
#!/bin/sh
# Disables handoff for every PHP $PHP_VERSION SAPI (phpdismod) once handoff.so is gone.
set -e
if { [ "\$1" = "remove" ] || [ "\$1" = "purge" ]; } && [ -e /usr/lib/php/php-maintscript-helper ]; then
    . /usr/lib/php/php-maintscript-helper
    php_invoke dismod $PHP_VERSION ALL handoff
fi
exit 0
EOF
chmod 0755 "$ext/DEBIAN/postinst" "$ext/DEBIAN/postrm"
build_deb "$ext" "$EXT_PKG" "Section: php
Priority: optional
Depends: php$PHP_VERSION-cli | phpapi-$PHP_API, php-common (>= 1:81~), php$PHP_VERSION-common, libc6 (>= $(glibc_needed "$ext$EXT_DIR/handoff.so")), libgcc-s1
Recommends: handoff-manager (= $DEB_VERSION)
Provides: php-handoff
Description: send_file() for PHP: hand file downloads to handoff-manager
 The handoff extension adds send_file(): the PHP worker opens the file, checks
 the request, and passes the client connection and the open file to
 handoff-manager, which streams it with sendfile(); the worker is free at once.
 Without a running manager, send_file() streams the file itself.
 .
 This package is built for PHP $PHP_VERSION (API $PHP_API)."

# The manager.
mgr="$work/handoff-manager"
install -d "$mgr/DEBIAN" "$mgr/usr/bin" "$mgr/lib/systemd/system"
install -m 0755 "$TARGET/handoff-manager" "$mgr/usr/bin/handoff-manager"
strip --strip-unneeded "$mgr/usr/bin/handoff-manager"
for unit in handoff-manager.socket handoff-manager.service handoff-manager@.service; do
    install -m 0644 "deploy/$unit" "$mgr/lib/systemd/system/$unit"
done
# The takeover pair runs the binary from /usr/local/bin when installed by hand.
sed -i 's|/usr/local/bin/handoff-manager|/usr/bin/handoff-manager|' \
    "$mgr/lib/systemd/system/handoff-manager@.service"
add_docs "$mgr" handoff-manager
install -m 0644 README.md "$mgr/usr/share/doc/handoff-manager/README.md"
cat >"$mgr/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Makes the system user the manager runs as, then enables and starts the socket and the
# service where systemd runs (as dh_installsystemd would).
set -e
if [ "$1" = "configure" ]; then
    if ! getent passwd handoff >/dev/null; then
        adduser --system --quiet --group --home /nonexistent --no-create-home \
            --gecos "handoff-manager" handoff
    fi
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper unmask handoff-manager.socket handoff-manager.service >/dev/null || true
        deb-systemd-helper enable handoff-manager.socket handoff-manager.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke restart handoff-manager.socket handoff-manager.service >/dev/null || true
    fi
fi
exit 0
EOF
cat >"$mgr/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Stops the service (running downloads get its --grace) and the socket before removal.
set -e
if [ -d /run/systemd/system ] && [ "$1" = "remove" ]; then
    deb-systemd-invoke stop handoff-manager.service handoff-manager.socket >/dev/null || true
fi
exit 0
EOF
cat >"$mgr/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# Forgets the units; purging also removes the user and the logs.
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask handoff-manager.socket handoff-manager.service >/dev/null || true
fi
if [ "$1" = "purge" ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge handoff-manager.socket handoff-manager.service >/dev/null || true
        deb-systemd-helper unmask handoff-manager.socket handoff-manager.service >/dev/null || true
    fi
    rm -rf /var/log/handoff
    if getent passwd handoff >/dev/null && command -v deluser >/dev/null; then
        deluser --system --quiet handoff || true
    fi
fi
exit 0
EOF
chmod 0755 "$mgr/DEBIAN/postinst" "$mgr/DEBIAN/prerm" "$mgr/DEBIAN/postrm"
build_deb "$mgr" handoff-manager "Section: httpd
Priority: optional
Depends: adduser, libc6 (>= $(glibc_needed "$mgr/usr/bin/handoff-manager")), libgcc-s1
Suggests: $EXT_PKG
Description: streams the file downloads PHP's send_file() hands over
 handoff-manager receives a request's connection and an open file from the
 handoff PHP extension over a Unix socket and streams the file with
 sendfile(), however slow the client, while the PHP worker serves the next
 request. It answers in FastCGI records behind nginx, lighttpd, Caddy and
 Apache mod_proxy_fcgi, and in HTTP/1.1 under php -S and mod_php.
 .
 systemd creates its socket (handoff-manager.socket, group www-data, mode
 0660) and starts the sandboxed service on the first handoff."
