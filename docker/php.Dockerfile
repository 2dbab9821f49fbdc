# php-fpm 8.2 with the handoff extension (handoff.so).
#
# Built by docker-compose.yml (context: the repository root). The build stage is the same
# php:8.2-fpm-bookworm image as the runtime, so the extension is compiled against exactly the
# PHP headers (API 20220829, NTS) it is loaded into; Rust is copied in from the official
# rust image (no rustup download).

FROM php:8.2-fpm-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev gcc libc6-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY --from=rust:1-bookworm /usr/local/cargo /usr/local/cargo
COPY --from=rust:1-bookworm /usr/local/rustup /usr/local/rustup
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
WORKDIR /src
COPY . .
# ext-php-rs finds php-config on PATH (/usr/local/bin) and libclang via clang.
RUN cargo build --release --locked -p handoff \
    && install -D -m 0644 target/release/libhandoff.so /out/handoff.so

FROM php:8.2-fpm-bookworm
COPY --from=build /out/handoff.so /tmp/handoff.so
# Install the extension, and run only the handoff pool (deploy/php-fpm-pool.conf, mounted as
# php-fpm.d/zz-handoff.conf): drop the image's [www] pool, keep its global settings.
RUN mv /tmp/handoff.so "$(php-config --extension-dir)/handoff.so" \
    && echo 'extension=handoff.so' > /usr/local/etc/php/conf.d/docker-php-ext-handoff.ini \
    && rm -f /usr/local/etc/php-fpm.d/www.conf /usr/local/etc/php-fpm.d/docker.conf \
        /usr/local/etc/php-fpm.d/zz-docker.conf \
    && printf '[global]\nerror_log = /proc/self/fd/2\nlog_limit = 8192\ndaemonize = no\n' \
        > /usr/local/etc/php-fpm.d/00-global.conf \
    && install -d -m 0755 /run/handoff /srv/handoff-data \
    && php -m | grep -qx handoff
COPY docker/php-entrypoint.sh /usr/local/bin/handoff-php-entrypoint
ENTRYPOINT ["handoff-php-entrypoint"]
CMD ["php-fpm"]
