<?php
// Sends $HANDOFF_TEST_DIR/data/<f> with 'delete' => true: the file is unlinked as soon as
// send_file() has opened it. Query parameters:
//   f        file name inside data/ (required)
//   rate     the send_file() option of the same name (a slow download to interrupt)
//   result=NAME   write var_export(send_file(...)) and whether the path still exists
//            (after send_file() returned) to results/NAME; a HandoffException is written
//            as "HandoffException" and answered with a 503 page of the script's own
$dir = getenv('HANDOFF_TEST_DIR');
$path = $dir . '/data/' . basename($_GET['f'] ?? '');
$options = ['delete' => true];
if (isset($_GET['rate'])) {
    $options['rate'] = (int) $_GET['rate'];
}
try {
    $returned = send_file($path, $options);
} catch (HandoffException $e) {
    $returned = 'HandoffException';
    http_response_code(503);
    echo "try again later\n";
}
if (isset($_GET['result'])) {
    file_put_contents(
        $dir . '/results/' . basename($_GET['result']),
        (is_bool($returned) ? var_export($returned, true) : $returned) . ' exists=' . var_export(file_exists($path), true)
    );
}
