# Adds handoff to an existing php-fpm image: a multi-stage build that copies handoff.so and
# handoff-manager out of this repository's images into yours.
#
#   docker-compose build php manager        # handoff-php:local, handoff-manager:local
#   docker build -f docker/add-handoff.Dockerfile \
#       --build-arg PHP_IMAGE=registry.example/shop-php:1.4 -t shop-php:1.4-handoff .
#
# handoff.so is built against Debian 13's PHP 8.4 (API 20240924, NTS). Your image's PHP must
# be 8.4 NTS too: `php -i | grep -E '^PHP Extension =>|^Thread Safety'` says "20240924" and
# "disabled" (the official php:8.4-fpm images do); the build below stops otherwise. For
# another PHP, build the extension against it (docs/deployment.md, from source).
#
# Then run handoff-manager beside php-fpm (its own container sharing the socket directory,
# as docker-compose.yml and deploy/kubernetes/handoff.yaml do, or in this image) and point
# handoff.socket at its socket.
ARG PHP_IMAGE
ARG HANDOFF_PHP_IMAGE=handoff-php:local
ARG HANDOFF_MANAGER_IMAGE=handoff-manager:local

FROM ${HANDOFF_PHP_IMAGE} AS handoff-php
FROM ${HANDOFF_MANAGER_IMAGE} AS handoff-manager

FROM ${PHP_IMAGE}
# Installing needs root; if your image sets a USER, set it again after these lines.
USER root
COPY --from=handoff-php /usr/lib/php/20240924/handoff.so /tmp/handoff.so
COPY --from=handoff-manager /usr/local/bin/handoff-manager /usr/local/bin/handoff-manager
# The extension goes into this PHP's extension_dir and is enabled in its scan directory.
RUN set -eu; \
    php -i | grep -qx 'PHP Extension => 20240924' \
        || { echo "add-handoff: this image's PHP is not 8.4 (API 20240924)" >&2; exit 1; }; \
    php -i | grep -qx 'Thread Safety => disabled' \
        || { echo "add-handoff: this image's PHP is thread-safe (ZTS); handoff.so is NTS" >&2; exit 1; }; \
    mv /tmp/handoff.so "$(php -r 'echo ini_get("extension_dir");')/handoff.so"; \
    scan="$(php --ini | sed -n 's/^Scan for additional .ini files in: //p')"; \
    if [ -d /etc/php/8.4/mods-available ]; then \
        echo 'extension=handoff.so' > /etc/php/8.4/mods-available/handoff.ini && phpenmod handoff; \
    else \
        echo 'extension=handoff.so' > "$scan/docker-php-ext-handoff.ini"; \
    fi; \
    php -m | grep -qx handoff
