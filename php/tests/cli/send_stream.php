<?php
// send_file() of a php://memory stream in the CLI SAPI: copied into an anonymous file and
// streamed to stdout in-process (returns false). The verdict goes to stderr.
$stream = fopen('php://memory', 'w+b');
$in = fopen(getenv('HANDOFF_TEST_FILE'), 'rb');
stream_copy_to_stream($in, $stream);
fclose($in);
$returned = send_file($stream);
fwrite(STDERR, 'returned=' . var_export($returned, true) . "\n");
