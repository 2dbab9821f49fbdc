<?php
// send_file() of $HANDOFF_BENCH_DATA/<f>.
//   handoff=1  always hand off (handoff.inline_below = 0), whatever the file size
//   inline=1   always stream in the worker (handoff.inline_below above the file size)
//   neither    the extension's shipped default
$path = getenv('HANDOFF_BENCH_DATA') . '/' . basename($_GET['f'] ?? '');
if (isset($_GET['handoff'])) {
    ini_set('handoff.inline_below', '0');
} elseif (isset($_GET['inline'])) {
    ini_set('handoff.inline_below', (string) PHP_INT_MAX);
}
send_file($path, ['content_type' => 'application/octet-stream']);
