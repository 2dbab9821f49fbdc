<?php
// handoff demo: send one file of the data directory (outside the docroot) with send_file().
//
//   GET /download.php?name=big.bin
//
// Only plain file names are accepted (basename($name) === $name), so ../ tricks find nothing.
declare(strict_types=1);

require __DIR__ . '/lib.php';

$name = $_GET['name'] ?? '';
if (!is_string($name) || !demo_name_ok($name)) {
    not_found_page('No such file.');
    exit;
}

$path = demo_data_dir() . '/' . $name;
if (!is_file($path)) {
    not_found_page("No file named \"$name\".");
    exit;
}

if (!function_exists('send_file')) {
    http_response_code(500);
    header('Content-Type: text/plain; charset=utf-8');
    echo "The handoff extension is not loaded (extension=handoff.so).\n";
    exit;
}

try {
    // true: the manager streams the file and this worker is free now.
    // false: the manager was not reachable and the file was streamed in-process.
    $handedOff = send_file($path, ['filename' => $name]);
    error_log(sprintf('handoff demo: %s %s', $name, $handedOff ? 'handed off' : 'streamed in-process'));
} catch (HandoffException $e) {
    // With handoff.fallback=off (or when the file cannot be opened) nothing has been sent.
    error_log('handoff demo: ' . $name . ': ' . $e->getMessage());
    not_found_page("\"$name\" cannot be sent right now.");
}
