<?php
// handoff demo: a generated download. Builds a ZIP of every demo file and sends it.
//
//   GET /zip.php
//
// ZipArchive writes only to a path (it builds the archive in a temp file and renames it
// over the target on close), not to a stream such as tmpfile(). So the archive goes to a
// fresh temp path, and send_file() unlinks that path as soon as it has opened it
// ('delete' => true): whatever happens to the download afterwards, nothing is left behind.
// The worker is busy only while the archive is written; the download itself is the
// manager's.
declare(strict_types=1);

require __DIR__ . '/lib.php';

if (!function_exists('send_file') || !class_exists('ZipArchive')) {
    http_response_code(500);
    header('Content-Type: text/plain; charset=utf-8');
    echo "This page needs the handoff and zip extensions (apt-get install php-zip).\n";
    exit;
}

$files = demo_files(demo_data_dir());
if ($files === null || $files === []) {
    not_found_page('No files to put into an archive.');
    exit;
}

$path = tempnam(sys_get_temp_dir(), 'handoff-demo-zip-');
$zip = new ZipArchive();
$ok = $path !== false && $zip->open($path, ZipArchive::OVERWRITE) === true;
foreach (array_keys($files) as $name) {
    $ok = $ok && $zip->addFile(demo_data_dir() . '/' . $name, $name)
        // The demo files are random bytes: storing beats compressing them.
        && $zip->setCompressionName($name, ZipArchive::CM_STORE);
}
$ok = $ok && $zip->close();
if (!$ok) {
    if ($path !== false) {
        @unlink($path);
    }
    error_log('handoff demo: building the archive failed: ' . $zip->getStatusString());
    not_found_page('The archive could not be built.');
    exit;
}

try {
    $handedOff = send_file($path, [
        'filename' => 'handoff-demo.zip',
        'content_type' => 'application/zip',
        'delete' => true,
    ]);
    error_log('handoff demo: zip ' . ($handedOff ? 'handed off' : 'streamed in-process'));
} catch (HandoffException $e) {
    @unlink($path);
    error_log('handoff demo: zip: ' . $e->getMessage());
    not_found_page('The archive cannot be sent right now.');
}
