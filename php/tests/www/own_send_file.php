<?php
// An application with its own global send_file() and handoff_available() (as Moodle's
// lib/filelib.php): it compiles only where handoff.global_functions is Off, and sends
// $HANDOFF_TEST_DIR/data/<f> through Handoff\send_file(). result=NAME writes what the calls
// returned to results/NAME.
function send_file($path)
{
    return 'own';
}

function handoff_available()
{
    return 'own';
}

$dir = getenv('HANDOFF_TEST_DIR');
$sent = Handoff\send_file($dir . '/data/' . basename($_GET['f'] ?? ''));
if (isset($_GET['result'])) {
    file_put_contents(
        $dir . '/results/' . basename($_GET['result']),
        var_export($sent, true) . ' ' . send_file('x') . ' ' . handoff_available()
    );
}
