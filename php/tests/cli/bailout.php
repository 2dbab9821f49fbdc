<?php
// A PHP bailout inside send_file()'s in-process streaming. Stdout is closed, so PHP's first
// write of the file fails: PHP marks the connection aborted and bails out (ignore_user_abort
// is off), which makes the exit status 255. send_file() must resume that bailout, so it
// never returns, and must leave nothing of its own behind (the memcheck run of this script
// looks for leaks in our code: the options' strings below are Rust values that a longjmp
// over a live frame would leak).
//
// Stdout is gone, so the verdict goes to stderr.
$returned = null;
register_shutdown_function(function () use (&$returned) {
    $status = connection_status();
    if ($returned !== null) {
        fwrite(STDERR, 'FAIL send_file() returned ' . var_export($returned, true)
            . " after a bailout\n");
    } elseif ($status !== CONNECTION_ABORTED) {
        fwrite(STDERR, "FAIL connection_status() is $status, not CONNECTION_ABORTED\n");
    } else {
        fwrite(STDERR, "PASS bailout resumed: shutdown ran, connection aborted\n");
    }
});
fclose(STDOUT);
$returned = send_file(getenv('HANDOFF_TEST_FILE'), [
    'filename' => 'report-' . str_repeat('x', 100) . '.bin',
    'content_type' => 'application/x-handoff-test',
]);
