<?php
// send_file() of an existing file, for handoff.fallback=off: when the manager cannot take
// the download, the script gets HandoffException and answers 503 with its own page.
$path = getenv('HANDOFF_TEST_DIR') . '/data/' . basename($_GET['f'] ?? '');
try {
    send_file($path);
} catch (HandoffException $e) {
    http_response_code(503);
    echo "<h1>try again later</h1>\n";
}
