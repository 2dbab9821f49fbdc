<?php
// A receiver for handoff-manager's completion records, to copy into an application:
//
//   handoff-manager --on-complete http://127.0.0.1/handoff-done.php \
//                   --on-complete-secret /etc/handoff/record.key
//
// (or --on-complete 'unix:/shared/app-http.sock|/handoff-done.php' for a receiver in
// another container). It accepts only records signed with the key, at most
// CompletionRecord::TOLERANCE seconds old, and each id once, then hands the record to
// the application (here: one JSON file per record, with what was received, in
// $HANDOFF_RECORDS_DIR). Answers: 204 accepted; 401 forged or stale; 400 malformed;
// 409 replayed (the manager gives up on a 4xx, and the record is already here).
//
// Set before including, or edit: $HANDOFF_SECRET_FILE, $HANDOFF_SEEN_DIR,
// $HANDOFF_RECORDS_DIR.
declare(strict_types=1);

require_once __DIR__ . '/../autoload.php';

use Handoff\CompletionRecord;
use Handoff\InvalidRecord;

$HANDOFF_SECRET_FILE ??= '/etc/handoff/record.key';
$HANDOFF_SEEN_DIR ??= sys_get_temp_dir() . '/handoff-records-seen';
$HANDOFF_RECORDS_DIR ??= sys_get_temp_dir() . '/handoff-records';

if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
    http_response_code(405);
    return;
}
$body = (string) file_get_contents('php://input');
$timestamp = $_SERVER['HTTP_HANDOFF_TIMESTAMP'] ?? null;
$signature = $_SERVER['HTTP_HANDOFF_SIGNATURE'] ?? null;
try {
    $record = CompletionRecord::verify(
        CompletionRecord::readSecret($HANDOFF_SECRET_FILE),
        $body,
        $timestamp,
        $signature,
        CompletionRecord::seenIn($HANDOFF_SEEN_DIR)
    );
} catch (InvalidRecord $e) {
    error_log("handoff record refused ({$e->reason}): {$e->getMessage()}");
    http_response_code(match ($e->reason) {
        'replayed' => 409,
        'malformed' => 400,
        default => 401,
    });
    return;
}

// The application's part: e.g. mark the order's download as delivered when
// $record['file_complete'] is true, or count $record['bytes_sent'].
if (!is_dir($HANDOFF_RECORDS_DIR)) {
    mkdir($HANDOFF_RECORDS_DIR, 0700, true);
}
file_put_contents(
    $HANDOFF_RECORDS_DIR . '/' . hash('sha256', $record['id']) . '.json',
    json_encode(['body' => $body, 'timestamp' => $timestamp, 'signature' => $signature])
);
http_response_code(204);
