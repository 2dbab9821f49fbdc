#!/usr/bin/env bash
# Smoke test of scripts/demo.sh (run by scripts/test.sh after the build): start the demo in
# a temporary runtime dir on a free port, download both demo files through nginx, check
# them byte for byte, that handoff-manager (not the worker) sent the big one and the worker
# the small one (handoff.inline_below), then stop the demo with SIGTERM and check that
# nothing is left running.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(mktemp -d /tmp/handoff-smoke.XXXXXX)"
OUT="$DIR/demo.out"
demo_pid=""

fail() {
    printf 'demo-smoke: FAILED: %s\n' "$*" >&2
    for f in "$OUT" "$DIR"/run/logs/*.log; do
        [ -s "$f" ] || continue
        printf -- '--- %s (last lines)\n' "$f" >&2
        tail -n 15 "$f" >&2
    done
    exit 1
}

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
        kill -TERM "$demo_pid" 2>/dev/null || true
        wait "$demo_pid" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

port=""
for p in $(seq 18080 18120); do
    if ! curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$p/"; then
        port="$p"
        break
    fi
done
[ -n "$port" ] || fail "no free port in 18080-18120"

HANDOFF_SKIP_SETUP=1 HANDOFF_DEMO_PORT="$port" HANDOFF_DEMO_DIR="$DIR/run" \
    bash "$REPO/scripts/demo.sh" >"$OUT" 2>&1 </dev/null &
demo_pid=$!

deadline=$((SECONDS + 120))
until grep -q 'Press Ctrl-C' "$OUT"; do
    kill -0 "$demo_pid" 2>/dev/null || fail "demo.sh exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || fail "demo.sh did not come up within 120 s"
    sleep 0.2
done

base="http://127.0.0.1:$port"
curl -fsS -o /dev/null "$base/" || fail "GET / failed"
curl -fsS "$base/" | grep -q 'class="ok">loaded' || fail "index.php does not show the extension as loaded"
for name in big.bin hello.txt; do
    curl -fsS --max-time 60 -o "$DIR/$name" "$base/download.php?name=$name" ||
        fail "downloading $name failed"
    want="$(awk -v n="$name" '$2 == n {print $1}' "$DIR/run/SHA256SUMS")"
    got="$(sha256sum "$DIR/$name" | awk '{print $1}')"
    [ "$want" = "$got" ] || fail "$name: sha256 $got, expected $want"
done
code="$(curl -s -o /dev/null -w '%{http_code}' "$base/download.php?name=..%2Fdata%2Fbig.bin")"
[ "$code" = 404 ] || fail "a name with a directory part gave HTTP $code, expected 404"

# The manager logs one line per finished download: proof that it, not the worker, sent
# big.bin. hello.txt is below handoff.inline_below (64 KiB): the worker sends it itself.
deadline=$((SECONDS + 10))
until grep -q 'big.bin.*outcome=complete' "$DIR/run/logs/manager.log"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "manager.log does not show big.bin completed"
    sleep 0.2
done
if grep -q 'hello.txt' "$DIR/run/logs/manager.log"; then
    fail "hello.txt (below handoff.inline_below) went through the manager"
fi

# The generated ZIP (php/demo/zip.php): every demo file inside, byte-exact, handed off,
# and its temp file deleted by send_file(..., ['delete' => true]).
curl -fsS --max-time 60 -o "$DIR/demo.zip" "$base/zip.php" || fail "downloading zip.php failed"
# shellcheck disable=SC2016 # PHP code: its $variables are PHP's
php -r '
    $z = new ZipArchive();
    if ($z->open($argv[1], ZipArchive::RDONLY) !== true) { exit(1); }
    foreach (file($argv[2], FILE_IGNORE_NEW_LINES) as $line) {
        [$sha, $name] = preg_split("/\s+/", $line);
        if (hash("sha256", (string) $z->getFromName($name)) !== $sha) { fwrite(STDERR, "$name differs\n"); exit(1); }
    }
    exit($z->count() === count(file($argv[2])) ? 0 : 1);
' "$DIR/demo.zip" "$DIR/run/SHA256SUMS" || fail "demo.zip does not hold the demo files byte-exact"
deadline=$((SECONDS + 10))
until grep -q 'handoff-demo-zip-.*outcome=complete' "$DIR/run/logs/manager.log"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "manager.log does not show the zip completed"
    sleep 0.2
done
zip_path="$(grep -o 'file="[^"]*handoff-demo-zip-[^"]*"' "$DIR/run/logs/manager.log" | head -n1 | cut -d'"' -f2)"
[ -n "$zip_path" ] || fail "manager.log names no zip temp file"
[ ! -e "$zip_path" ] || fail "the zip's temp file $zip_path was not deleted"

kill -TERM "$demo_pid"
status=0
wait "$demo_pid" || status=$?
demo_pid=""
[ "$status" = 143 ] || fail "demo.sh exited with $status after SIGTERM, expected 143"
grep -q 'stopped; logs are in' "$OUT" || fail "demo.sh did not report stopping"
[ ! -S "$DIR/run/manager.sock" ] || fail "handoff-manager left its socket behind"
left="$(grep -lsF -- "$DIR/run" /proc/[0-9]*/cmdline || true)"
[ -z "$left" ] || fail "processes still running after demo.sh stopped: $left"
echo "demo-smoke: ok (port $port: big.bin byte-exact through handoff-manager, hello.txt inline, the ZIP handed off and deleted, clean stop)"
