<?php
// send_file() on a file that does not exist: the script catches HandoffException and
// serves its own 404 page. It never prints the exception message, which may hold the path.
$path = getenv('HANDOFF_TEST_DIR') . '/data/no-such-file.bin';
try {
    send_file($path);
    echo "send_file returned instead of throwing\n";
} catch (HandoffException $e) {
    http_response_code(404);
    header('Content-Type: text/html; charset=utf-8');
    echo "<h1>not found page</h1>\n";
}
