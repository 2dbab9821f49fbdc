<?php
// Run WITHOUT the extension: another library's global send_file() (Moodle's filelib.php
// declares one) must not make HandoffFileResponse think the extension is there.
require '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
require __DIR__ . '/../../autoload.php';

function send_file($path, ...$rest): void
{
    echo "FAIL the foreign send_file() was called\n";
}

use Handoff\Symfony\HandoffFileResponse;

echo HandoffFileResponse::handoffAvailable()
    ? "FAIL handoffAvailable() with only a foreign send_file()\n"
    : "PASS handoffAvailable() is false without the extension\n";
