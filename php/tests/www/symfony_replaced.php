<?php
// A HandoffFileResponse with deleteFileAfterSend() whose send_file() throws after it opened
// (and unlinked) the file: a header_register_callback() callback, which send_file() runs
// before it plans the head, puts a new file at the same path and throws. The response must
// not delete that replacement. Query parameters:
//   f        file name inside data/ (required)
//   result=NAME   write "threw exists=BOOL content=BOOL" to results/NAME
require '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
require __DIR__ . '/../../autoload.php';

use Handoff\Symfony\HandoffFileResponse;
use Symfony\Component\HttpFoundation\Request;

$dir = getenv('HANDOFF_TEST_DIR');
$request = Request::createFromGlobals();
$path = $dir . '/data/' . basename($request->query->get('f', ''));

$response = new HandoffFileResponse($path);
$response->deleteFileAfterSend();
$response->prepare($request);
header_register_callback(function () use ($path): void {
    file_put_contents($path, 'the replacement');
    throw new RuntimeException('the callback replaced the file');
});
try {
    $response->send();
    $outcome = 'sent';
} catch (RuntimeException $e) {
    // The callback's exception comes out of send_file() as PHP's own header sending
    // would let it out.
    $outcome = 'threw';
    header_remove();
    http_response_code(500);
}
clearstatcache();
file_put_contents(
    $dir . '/results/' . basename($request->query->get('result', 'replaced')),
    $outcome . ' exists=' . var_export(is_file($path), true)
        . ' content=' . var_export(@file_get_contents($path) === 'the replacement', true)
);
