<?php
// send_file() in the CLI SAPI: the errors that must throw HandoffException before any byte
// is written. Prints one PASS/FAIL line per check; exits 1 if any failed.
$failures = 0;

function check(string $what, bool $ok): void
{
    global $failures;
    echo ($ok ? 'PASS' : 'FAIL') . ": $what\n";
    if (!$ok) {
        $failures++;
    }
}

/** Runs $call, returns the exception it threw (null if none) and what it printed. */
function throws(callable $call): array
{
    ob_start();
    try {
        $call();
        $thrown = null;
    } catch (Throwable $e) {
        $thrown = $e;
    }
    $printed = ob_get_clean();
    return [$thrown, $printed];
}

$dir = getenv('HANDOFF_TEST_DIR');
$file = "$dir/real.txt";
file_put_contents($file, "real file\n");

check('send_file exists', function_exists('send_file'));
check('HandoffException exists', class_exists('HandoffException'));
check('HandoffException extends RuntimeException', is_subclass_of('HandoffException', 'RuntimeException'));

$cases = [
    'missing file' => fn () => send_file("$dir/does-not-exist.bin"),
    'directory' => fn () => send_file($dir),
    'inline is an array' => fn () => send_file($file, ['inline' => []]),
    'filename is an array' => fn () => send_file($file, ['filename' => ['a']]),
    'content_type is an object' => fn () => send_file($file, ['content_type' => new stdClass()]),
    'unknown option' => fn () => send_file($file, ['no_such_option' => 1]),
    'rate is zero' => fn () => send_file($file, ['rate' => 0]),
    'rate is a string' => fn () => send_file($file, ['rate' => '1000']),
    'tag is an int' => fn () => send_file($file, ['tag' => 17]),
    'tag is empty' => fn () => send_file($file, ['tag' => '']),
    'tag is 257 bytes' => fn () => send_file($file, ['tag' => str_repeat('a', 257)]),
    'tag has a newline' => fn () => send_file($file, ['tag' => "order:1\nx"]),
    'tag is not ASCII' => fn () => send_file($file, ['tag' => "user:\u{e4}"]),
    'rate_group has a control character' => fn () => send_file($file, ['rate' => 1000, 'rate_group' => "g\x01"]),
    'rate_group without rate' => fn () => send_file($file, ['rate_group' => 'user:5']),
    'neither a path nor a stream' => fn () => send_file(42),
    'a closed stream' => function () use ($file) {
        $h = fopen($file, 'rb');
        fclose($h);
        return send_file($h);
    },
    'a resource that is not a stream' => fn () => send_file(stream_context_create()),
    'a write-only stream' => fn () => send_file(fopen("$dir/write-only.txt", 'wb')),
    'delete with a stream' => fn () => send_file(fopen($file, 'rb'), ['delete' => true]),
    'delete is a string' => function () use ($dir) {
        global $kept;
        $keep = "$dir/keep.txt";
        file_put_contents($keep, "keep\n");
        try {
            return send_file($keep, ['delete' => 'yes']);
        } finally {
            $kept = is_file($keep);
        }
    },
];
$fifo = "$dir/fifo";
posix_mkfifo($fifo, 0600);
$cases += [
    'empty path' => fn () => send_file(''),
    'path with a NUL byte' => fn () => send_file("$file\0.txt"),
    'FIFO' => fn () => send_file($fifo),
    'character device' => fn () => send_file('/dev/zero'),
    // Irreversible settings last: open_basedir can only be narrowed, setuid only dropped.
    'outside open_basedir' => function () use ($dir, $file) {
        mkdir("$dir/jail");
        ini_set('open_basedir', "$dir/jail");
        return send_file($file);
    },
    'unreadable file' => function () use ($dir) {
        // Root reads everything: become nobody first (the file and its directory are
        // root's, mode 0600 / 0700).
        $secret = "$dir/jail/secret.bin";
        file_put_contents($secret, 'secret');
        chmod($secret, 0600);
        if (posix_geteuid() === 0) {
            posix_setgid(65534);
            posix_setuid(65534);
        }
        return send_file($secret);
    },
];
foreach ($cases as $what => $call) {
    [$e, $printed] = throws($call);
    check("$what throws HandoffException", $e instanceof HandoffException);
    check("$what: the exception is a RuntimeException", $e instanceof RuntimeException);
    check("$what prints nothing", $printed === '');
    check("$what: the message does not contain the path", $e === null || strpos($e->getMessage(), $dir) === false);
    if ($e !== null && !($e instanceof HandoffException)) {
        echo "  got " . get_class($e) . ': ' . $e->getMessage() . "\n";
    }
}

check('a delete with the wrong type leaves the file', $kept === true);

exit($failures === 0 ? 0 : 1);
