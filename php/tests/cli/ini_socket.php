<?php
// handoff.socket is PHP_INI_SYSTEM|PHP_INI_PERDIR: a script cannot point its connections at
// another socket (ini_set() fails and the value stays), while -d / php.ini still set it.
// Prints one PASS/FAIL line per check; exits 1 if any failed.
$failures = 0;

function check(string $what, bool $ok): void
{
    global $failures;
    echo ($ok ? 'PASS' : 'FAIL') . ": $what\n";
    if (!$ok) {
        $failures++;
    }
}

$before = ini_get('handoff.socket');
$expected = getenv('HANDOFF_EXPECT_SOCKET');
if ($expected !== false) {
    check('-d handoff.socket applies', $before === $expected);
}
check('ini_set(handoff.socket) fails', ini_set('handoff.socket', '/tmp/elsewhere.sock') === false);
check('handoff.socket is unchanged', ini_get('handoff.socket') === $before);
check('ini_restore(handoff.socket) changes nothing either', (function () use ($before) {
    ini_restore('handoff.socket');
    return ini_get('handoff.socket') === $before;
})());
check('the other settings stay per script', ini_set('handoff.fallback', 'off') !== false
    && ini_get('handoff.fallback') === 'off');
exit($failures ? 1 : 0);
