<?php
// Sends the bytes of $HANDOFF_TEST_DIR/data/<f> through an open stream. Query parameters:
//   f        file name inside data/ (required)
//   kind     tmpfile (default): written into tmpfile();
//            temp:    written into php://temp (in memory up to 2 MiB, then a temp file);
//            memory:  written into php://memory;
//            fopen:   the data file itself, opened with fopen();
//            filter:  the data file read through a no-op stream filter (string.rot13 twice)
//            spl:     the data file as new SplFileObject()
//            spltemp: written into new SplTempFileObject() (in memory up to 2 MiB)
//            spltemp0: written into new SplTempFileObject(0) (a temp file at once)
//            spl-noctor:   a subclass of SplFileObject whose constructor skips the parent's
//            spl-failctor: a subclass that swallows the parent constructor's exception
//            splinfo: new SplFileInfo() of the data file (not a stream: refused)
//            spl-closed:   an SplFileObject sent from a destructor that PHP's shutdown runs
//                          after it destroyed the SplFileObject (its stream is closed)
//   seek=N   leave the stream at position N before send_file() (the body is still all of it)
//   read=N   then fread() N bytes (PHP reads ahead into the stream's buffer)
//   filename / content_type   the send_file() options of the same name
//   delete=1 pass 'delete' => true (a stream must refuse it)
//   result=NAME   write var_export(send_file(...)) (or the exception) to results/NAME
$dir = getenv('HANDOFF_TEST_DIR');
$path = $dir . '/data/' . basename($_GET['f'] ?? '');
$kind = $_GET['kind'] ?? 'tmpfile';

class NoParentConstructor extends SplFileObject
{
    public function __construct()
    {
    }
}

class FailedParentConstructor extends SplFileObject
{
    public function __construct(string $path)
    {
        try {
            parent::__construct($path);
        } catch (RuntimeException) {
        }
    }
}

switch ($kind) {
    case 'spl':
    case 'spl-closed':
        $stream = new SplFileObject($path, 'rb');
        break;
    case 'spltemp':
    case 'spltemp0':
        $stream = $kind === 'spltemp' ? new SplTempFileObject() : new SplTempFileObject(0);
        $stream->fwrite(file_get_contents($path));
        break;
    case 'spl-noctor':
        $stream = new NoParentConstructor();
        break;
    case 'spl-failctor':
        $stream = new FailedParentConstructor($path . '.missing');
        break;
    case 'splinfo':
        $stream = new SplFileInfo($path);
        break;
    case 'fopen':
        $stream = fopen($path, 'rb');
        break;
    case 'filter':
        $stream = fopen($path, 'rb');
        stream_filter_append($stream, 'string.rot13', STREAM_FILTER_READ);
        stream_filter_append($stream, 'string.rot13', STREAM_FILTER_READ);
        break;
    default:
        $stream = match ($kind) {
            'tmpfile' => tmpfile(),
            'temp' => fopen('php://temp', 'w+b'),
            'memory' => fopen('php://memory', 'w+b'),
        };
        $in = fopen($path, 'rb');
        stream_copy_to_stream($in, $stream);
        fclose($in);
}
if (isset($_GET['seek'])) {
    is_resource($stream) ? fseek($stream, (int) $_GET['seek']) : $stream->fseek((int) $_GET['seek']);
}
if (isset($_GET['read'])) {
    is_resource($stream) ? fread($stream, (int) $_GET['read']) : $stream->fread((int) $_GET['read']);
}

$options = [];
foreach (['filename', 'content_type'] as $name) {
    if (isset($_GET[$name])) {
        $options[$name] = $_GET[$name];
    }
}
if (isset($_GET['delete'])) {
    $options['delete'] = true;
}

function send($stream, array $options): void
{
    try {
        $returned = var_export(send_file($stream, $options), true);
    } catch (HandoffException $e) {
        $returned = 'HandoffException: ' . $e->getMessage();
        http_response_code(500);
        echo "refused\n";
    }
    if (isset($_GET['result'])) {
        file_put_contents(getenv('HANDOFF_TEST_DIR') . '/results/' . basename($_GET['result']), $returned);
    }
}

/** Sends from its destructor; a cycle keeps it alive until PHP's shutdown destroys every
 * object in creation order, the SplFileObject (created first) before this one. */
class SendAtShutdown
{
    public ?SendAtShutdown $self = null;

    public function __construct(public SplFileObject $file, public array $options)
    {
        $this->self = $this;
    }

    public function __destruct()
    {
        send($this->file, $this->options);
    }
}

if ($kind === 'spl-closed') {
    new SendAtShutdown($stream, $options);
} else {
    send($stream, $options);
}
