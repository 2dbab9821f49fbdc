<?php
// Helpers shared by the demo pages. Not a page itself.
declare(strict_types=1);

if (basename($_SERVER['SCRIPT_FILENAME'] ?? '') === 'lib.php') {
    http_response_code(404);
    exit;
}

/** The directory the demo files come from: outside the document root. */
function demo_data_dir(): string
{
    $dir = getenv('HANDOFF_DEMO_DATA');
    return rtrim($dir !== false && $dir !== '' ? $dir : '/srv/handoff-data', '/');
}

/**
 * Whether $name may be served: a plain file name, no directory part, no hidden files.
 */
function demo_name_ok(string $name): bool
{
    return $name !== ''
        && basename($name) === $name
        && $name[0] !== '.'
        && strpbrk($name, "/\\\0") === false;
}

/** @return array<string,int>|null name => size of the regular files in $dir, null if unreadable */
function demo_files(string $dir): ?array
{
    $entries = @scandir($dir);
    if ($entries === false) {
        return null;
    }
    $files = [];
    foreach ($entries as $name) {
        $path = $dir . '/' . $name;
        if (demo_name_ok($name) && is_file($path)) {
            $files[$name] = (int) filesize($path);
        }
    }
    return $files;
}

function h(string $s): string
{
    return htmlspecialchars($s, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8');
}

function human_size(int $bytes): string
{
    $units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    $i = 0;
    $n = (float) $bytes;
    while ($n >= 1024 && $i < count($units) - 1) {
        $n /= 1024;
        $i++;
    }
    return $i === 0 ? "$bytes B" : sprintf('%.1f %s', $n, $units[$i]);
}

/** http://host/dir/ of the current request, for the curl examples. */
function base_url(): string
{
    $host = (string) ($_SERVER['HTTP_HOST'] ?? $_SERVER['SERVER_NAME'] ?? '127.0.0.1');
    // Debian's fastcgi_params sets HTTP_HOST to nginx's $host, which has no port.
    $port = (string) ($_SERVER['SERVER_PORT'] ?? '80');
    if (!preg_match('/:\d+$|\]$/', $host) && $port !== '80' && $port !== '') {
        $host .= ':' . $port;
    }
    $dir = rtrim(dirname($_SERVER['SCRIPT_NAME'] ?? '/'), '/');
    return 'http://' . $host . $dir . '/';
}

function not_found_page(string $message): void
{
    http_response_code(404);
    header('Content-Type: text/html; charset=utf-8');
    echo "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found</title></head>\n";
    echo '<body><h1>404 Not found</h1><p>' . h($message) . "</p>\n";
    echo "<p><a href=\"index.php\">Back to the file list</a></p></body></html>\n";
}
