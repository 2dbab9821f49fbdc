<?php
// An application that declares its own global send_file() and handoff_available(), as
// Moodle's lib/filelib.php declares send_file(). PHP compiles these declarations before the
// first line runs, so with the extension's global names present the script stops at once
// ("Cannot redeclare"); with handoff.global_functions = Off it runs, and the extension is
// reached through its namespace. The file's bytes go to stdout; the verdicts to stderr.
declare(strict_types=1);

function send_file(string $path): string
{
    return 'own send_file';
}

function handoff_available(): string
{
    return 'own handoff_available';
}

$check = static function (bool $ok, string $what): void {
    fwrite(STDERR, ($ok ? 'PASS ' : 'FAIL ') . $what . "\n");
};
$check(send_file('x') === 'own send_file', 'the script\'s own send_file() is called');
$check(handoff_available() === 'own handoff_available', 'the script\'s own handoff_available()');
$check(in_array(ini_get('handoff.global_functions'), ['', '0'], true), 'ini_get() reports Off');
$check(@ini_set('handoff.global_functions', '1') === false, 'ini_set() cannot turn it back on');
$check(is_bool(Handoff\available()), 'Handoff\available() answers');
$check(Handoff\send_file(getenv('HANDOFF_TEST_FILE')) === false, 'Handoff\send_file() streamed in the CLI');
