<?php
// Without the handoff extension, Handoff\Symfony\HandoffFileResponse must behave exactly
// like HttpFoundation's BinaryFileResponse: for each request below both are prepared and
// sent (output captured), and status, headers (but Date) and body must be identical.
// Prints one PASS/FAIL line per check; exits 1 if any failed.
require '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
// symfony/mime guesses Content-Type; Debian 12's HttpFoundation autoloader loads it, later
// ones leave it to the application.
require '/usr/share/php/Symfony/Component/Mime/autoload.php';
require __DIR__ . '/../../autoload.php';

use Handoff\Symfony\HandoffFileResponse;
use Symfony\Component\HttpFoundation\BinaryFileResponse;
use Symfony\Component\HttpFoundation\Request;

$failures = 0;
function check(string $what, bool $ok, string $detail = ''): void
{
    global $failures;
    echo ($ok ? 'PASS' : 'FAIL') . ": $what\n";
    if (!$ok) {
        $failures++;
        echo $detail;
    }
}

check('send_file() is not loaded', !function_exists('send_file') && !function_exists('Handoff\\send_file'));

$dir = getenv('HANDOFF_TEST_DIR');
$file = "$dir/file.bin";
file_put_contents($file, random_bytes(100000));
$lastModified = gmdate('D, d M Y H:i:s', filemtime($file)) . ' GMT';

/** @return array{int, array<string, list<string|null>>, string} */
function run(string $class, Request $request, string|\SplFileInfo $path, callable $setup): array
{
    $response = new $class($path, 200, ['X-App' => 'test']);
    $setup($response);
    $response->prepare($request);
    ob_start();
    $response->sendContent();
    $body = ob_get_clean();
    $headers = $response->headers->all();
    unset($headers['date']);
    return [$response->getStatusCode(), $headers, $body];
}

$requests = [
    'GET' => [],
    'Range 100-199' => ['HTTP_RANGE' => 'bytes=100-199'],
    'suffix range' => ['HTTP_RANGE' => 'bytes=-500'],
    'open range' => ['HTTP_RANGE' => 'bytes=99000-'],
    'unsatisfiable range' => ['HTTP_RANGE' => 'bytes=200000-300000'],
    'invalid range' => ['HTTP_RANGE' => 'bytes=abc'],
    'If-Range with the date' => ['HTTP_RANGE' => 'bytes=0-9', 'HTTP_IF_RANGE' => $lastModified],
    'If-Range stale' => ['HTTP_RANGE' => 'bytes=0-9', 'HTTP_IF_RANGE' => 'Mon, 01 Jan 2001 00:00:00 GMT'],
    'HEAD' => ['REQUEST_METHOD' => 'HEAD'],
    'POST with Range' => ['REQUEST_METHOD' => 'POST', 'HTTP_RANGE' => 'bytes=0-9'],
];
$setups = [
    'defaults' => fn ($r) => null,
    'attachment, auto ETag' => fn ($r) => $r->setContentDisposition('attachment', 'résumé.bin', 'resume.bin')->setAutoEtag(),
    'status 404' => fn ($r) => $r->setStatusCode(404),
];
foreach ($setups as $setupName => $setup) {
    foreach ($requests as $name => $server) {
        $request = Request::create('/download', $server['REQUEST_METHOD'] ?? 'GET', [], [], [], $server);
        $a = run(BinaryFileResponse::class, $request, $file, $setup);
        $b = run(HandoffFileResponse::class, $request, $file, $setup);
        check("$setupName, $name: same as BinaryFileResponse", $a === $b,
            '  BinaryFileResponse: ' . json_encode([$a[0], $a[1], strlen($a[2])]) . "\n"
            . '  HandoffFileResponse: ' . json_encode([$b[0], $b[1], strlen($b[2])]) . "\n");
    }
}

// An \SplFileInfo in place of the path (BinaryFileResponse keeps its path name): the same
// response, or the same exception (SplTempFileObject: php://temp is not a file).
$inputs = [
    'SplFileObject' => fn () => new \SplFileObject($file),
    'SplFileInfo' => fn () => new \SplFileInfo($file),
    'SplTempFileObject' => fn () => new \SplTempFileObject(),
];
foreach ($inputs as $inputName => $input) {
    foreach (['GET' => [], 'Range 100-199' => ['HTTP_RANGE' => 'bytes=100-199']] as $name => $server) {
        $outcomes = [];
        foreach ([BinaryFileResponse::class, HandoffFileResponse::class] as $class) {
            $request = Request::create('/download', 'GET', [], [], [], $server);
            try {
                $outcomes[] = run($class, $request, $input(), fn ($r) => null);
            } catch (\Throwable $e) {
                $outcomes[] = get_class($e);
            }
        }
        check("$inputName, $name: same as BinaryFileResponse", $outcomes[0] === $outcomes[1],
            '  ' . json_encode(array_map(fn ($o) => is_array($o) ? [$o[0], strlen($o[2])] : $o, $outcomes)) . "\n");
    }
}

// deleteFileAfterSend(): both delete the file once sent.
foreach ([BinaryFileResponse::class, HandoffFileResponse::class] as $class) {
    $temp = "$dir/temp.bin";
    copy($file, $temp);
    $response = new $class($temp);
    $response->deleteFileAfterSend();
    $response->prepare(Request::create('/download'));
    ob_start();
    $response->sendContent();
    $body = ob_get_clean();
    clearstatcache();
    check("$class: deleteFileAfterSend() sent the file and deleted it",
        $body === file_get_contents($file) && !file_exists($temp));
}

// The handoff options: known ones are kept, 'delete' is deleteFileAfterSend(), an unknown
// key throws before anything is sent.
$response = (new HandoffFileResponse($file))->setHandoffOptions(['tag' => 't', 'rate' => 1000, 'rate_group' => 'g']);
check('setHandoffOptions() keeps tag, rate and rate_group',
    $response->getHandoffOptions() === ['tag' => 't', 'rate' => 1000, 'rate_group' => 'g']);
try {
    $response->setHandoffOptions(['rate_limit' => 1]);
    check('an unknown handoff option throws', false);
} catch (InvalidArgumentException $e) {
    check('an unknown handoff option throws', str_contains($e->getMessage(), 'rate_limit'));
}

exit($failures === 0 ? 0 : 1);
