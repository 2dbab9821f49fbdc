<?php
// X-Accel-Redirect: the script only names the file; nginx serves it from an internal location.
$name = basename($_GET['f'] ?? '');
header('Content-Type: application/octet-stream');
header('X-Accel-Redirect: /_protected/' . rawurlencode($name));
