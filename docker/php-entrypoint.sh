#!/bin/sh
# Entry point of the php image: create the demo's data files in the demo-data volume on
# first start, then start php-fpm.
set -eu
DATA="${HANDOFF_DEMO_DATA:-/srv/handoff-data}"
mkdir -p "$DATA"
if [ ! -e "$DATA/big.bin" ]; then
    echo "handoff: generating $DATA/big.bin (200 MiB of random bytes)" >&2
    head -c 209715200 /dev/urandom > "$DATA/big.bin.tmp"
    mv "$DATA/big.bin.tmp" "$DATA/big.bin"
fi
if [ ! -e "$DATA/hello.txt" ]; then
    printf 'Hello from handoff!\nThis file was handed to handoff-manager by a php-fpm worker.\n' \
        > "$DATA/hello.txt"
fi
chmod 0644 "$DATA/big.bin" "$DATA/hello.txt"
exec "$@"
