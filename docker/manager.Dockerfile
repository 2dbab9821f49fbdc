# handoff-manager: receives client connections + open files from php-fpm workers over
# /run/handoff/manager.sock and streams them. It needs no access to the files themselves.
#
# Built by docker-compose.yml (context: the repository root).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Only the manager crate: it does not depend on PHP, so no php-dev / libclang here.
RUN cargo build --release --locked -p handoff-manager \
    && install -D -m 0755 target/release/handoff-manager /out/handoff-manager

FROM debian:bookworm-slim
# An unprivileged user, and the socket directory (a volume shared with php and nginx) where
# the manager creates its socket. A new named volume takes this owner and mode from the first
# container that mounts it, which is this one (php and nginx depend on it).
RUN useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin handoff \
    && install -d -o handoff -g handoff -m 0755 /run/handoff
COPY --from=build /out/handoff-manager /usr/local/bin/handoff-manager
USER handoff
ENV RUST_LOG=info
# SIGTERM: stop taking handoffs, let running downloads finish for --grace seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/handoff-manager"]
# 0660: only the socket's owner and group may hand off. Run the container with the PHP
# workers' group as primary group (docker-compose.yml: user "handoff:www-data") so that the
# socket gets that group.
CMD ["--socket", "/run/handoff/manager.sock", "--socket-mode", "0660"]
