<?php
// send_file() in the CLI SAPI streams the file to stdout in-process and returns false.
// stdout carries only the file's bytes, so the verdict goes to stderr.
$returned = send_file(getenv('HANDOFF_TEST_FILE'));
fwrite(STDERR, 'returned=' . var_export($returned, true) . "\n");
