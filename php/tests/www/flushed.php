<?php
// The script has already sent its headers and some output: send_file() cannot take the
// response over any more and must throw without writing anything.
$path = getenv('HANDOFF_TEST_DIR') . '/data/' . basename($_GET['f'] ?? '');
echo "early output\n";
// php-fpm's php.ini buffers output (output_buffering = 4096): empty PHP's buffers too, or
// flush() sends nothing and the headers are still unsent.
while (ob_get_level() > 0) {
    ob_end_flush();
}
flush();
try {
    send_file($path);
    echo "send_file returned\n";
} catch (HandoffException $e) {
    echo "caught HandoffException\n";
}
