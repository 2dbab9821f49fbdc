<?php
// Sends $HANDOFF_TEST_DIR/data/<f> with send_file(). Query parameters:
//   f             file name inside data/ (required)
//   content_type / filename / inline / rate / tag / rate_group   the send_file() options
//                 of the same name
//   headers=1     the script sets a cookie, X-Test and status 203 before sending
//   type_header=T   the script sets its own Content-Type: T
//   bogus_length=1  the script sets a wrong Content-Length (must be replaced)
//   result=NAME   write var_export(send_file(...)) to results/NAME afterwards
//   garbage=1     echo after send_file(): must never reach the client
//   shutdown=1    a shutdown function echoes, sets a header and flushes: must never reach
//                 the client either
//   status_header=V   the script sets header('Status: V'), the old CGI idiom
//   raw_header=HEX    the script sets header('X-Raw: ' . hex2bin(HEX)): bytes that need not
//                     be UTF-8
//   redirect_socket=1 the script tries to point handoff.socket elsewhere with ini_set()
//                     (refused: results/<result>.ini_set gets what ini_set() returned)
$dir = getenv('HANDOFF_TEST_DIR');
$path = $dir . '/data/' . basename($_GET['f'] ?? '');

$options = [];
if (isset($_GET['content_type'])) {
    $options['content_type'] = $_GET['content_type'];
}
if (isset($_GET['filename'])) {
    $options['filename'] = $_GET['filename'];
}
if (isset($_GET['rate'])) {
    $options['rate'] = (int) $_GET['rate'];
}
if (isset($_GET['tag'])) {
    $options['tag'] = $_GET['tag'];
}
if (isset($_GET['rate_group'])) {
    $options['rate_group'] = $_GET['rate_group'];
}
if (isset($_GET['inline'])) {
    $options['inline'] = $_GET['inline'] === '1';
}
if (isset($_GET['type_header'])) {
    header('Content-Type: ' . $_GET['type_header']);
}
if (isset($_GET['bogus_length'])) {
    header('Content-Length: 5');
}
if (isset($_GET['status_header'])) {
    header('Status: ' . $_GET['status_header']);
}
if (isset($_GET['raw_header'])) {
    header('X-Raw: ' . hex2bin($_GET['raw_header']));
}
if (isset($_GET['redirect_socket'])) {
    $redirected = ini_set('handoff.socket', $dir . '/elsewhere.sock');
    if (isset($_GET['result'])) {
        file_put_contents($dir . '/results/' . basename($_GET['result']) . '.ini_set',
            var_export($redirected, true));
    }
}
if (isset($_GET['headers'])) {
    setcookie('handoff_test', 'cookie-value');
    header('X-Test: kept-by-handoff');
    http_response_code(203);
}

if (isset($_GET['shutdown'])) {
    register_shutdown_function(function () {
        @header('X-Late: from a shutdown function');
        echo "shutdown garbage";
        flush();
    });
}

$returned = send_file($path, $options);

if (isset($_GET['result'])) {
    file_put_contents($dir . '/results/' . basename($_GET['result']), var_export($returned, true));
}
if (isset($_GET['garbage'])) {
    echo "garbage";
    flush();
}
