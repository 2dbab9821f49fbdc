<?php
// send_file() of $HANDOFF_BENCH_DATA/<f>. inline=1 forces the in-worker path
// (handoff.inline_below above the file size), to compare against the handoff.
$path = getenv('HANDOFF_BENCH_DATA') . '/' . basename($_GET['f'] ?? '');
if (isset($_GET['inline'])) {
    ini_set('handoff.inline_below', (string) PHP_INT_MAX);
}
send_file($path, ['content_type' => 'application/octet-stream']);
