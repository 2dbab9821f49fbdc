<?php
// What most PHP apps do today: the worker streams the file itself. nobuf=1 adds
// X-Accel-Buffering: no, so nginx relays at the client's pace instead of spooling to disk.
$path = getenv('HANDOFF_BENCH_DATA') . '/' . basename($_GET['f'] ?? '');
header('Content-Type: application/octet-stream');
header('Content-Length: ' . filesize($path));
if (isset($_GET['nobuf'])) {
    header('X-Accel-Buffering: no');
}
readfile($path);
