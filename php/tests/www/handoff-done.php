<?php
// The completion record receiver example (php/examples/handoff-done.php) with its key,
// seen ids and records in $HANDOFF_TEST_DIR.
$dir = getenv('HANDOFF_TEST_DIR');
$HANDOFF_SECRET_FILE = $dir . '/record.key';
$HANDOFF_SEEN_DIR = $dir . '/records-seen';
$HANDOFF_RECORDS_DIR = $dir . '/records';
require __DIR__ . '/../../examples/handoff-done.php';
