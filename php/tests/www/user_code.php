<?php
// send_file() while the script's own code runs inside it: an output handler, a
// header_register_callback() callback, a user stream wrapper. Query parameters:
//   f          file name inside data/ (required)
//   fatal=ob        an ob_start() handler raises E_USER_ERROR when its buffer is discarded
//   fatal=callback  a header_register_callback() callback raises E_USER_ERROR
//   fatal=seek      the file is read through a user stream wrapper whose stream_seek
//                   raises E_USER_ERROR (send_file() seeks back after copying the stream)
//              With fatal=ob or fatal=callback a copy of data/<f> is sent with
//              'delete' => true, so a descriptor the worker leaks shows as "(deleted)".
//   wrapper=echo    the file is read through a user stream wrapper whose stream_read echoes
//   wrapper=noseek  ... through a user stream wrapper without stream_seek
//   callback=1      a header_register_callback() callback adds "X-Callback: ran"
//   result=NAME     write var_export(send_file(...)) (or the exception) to results/NAME
//   children=1      also count the sockets a child process inherits (`ls -l /proc/self/fd`)
//                   before and after send_file(): results/NAME.children gets "before=N after=M"
$dir = getenv('HANDOFF_TEST_DIR');
$name = basename($_GET['f'] ?? '');
$path = $dir . '/data/' . $name;

/** Reads data/<name> for test://<name>; stream_seek only in the subclass below. */
class NoSeekWrapper
{
    public $context;
    public static bool $echo = false;
    protected $h;

    public function stream_open(string $path, string $mode, int $options, ?string &$opened): bool
    {
        $this->h = fopen(getenv('HANDOFF_TEST_DIR') . '/data/' . basename(substr($path, 7)), 'rb');

        return false !== $this->h;
    }

    public function stream_read(int $count): string|false
    {
        if (self::$echo) {
            echo "output of the wrapper\n";
        }

        return fread($this->h, $count);
    }

    public function stream_eof(): bool
    {
        return feof($this->h);
    }

    public function stream_tell(): int
    {
        return ftell($this->h);
    }
}

class FatalSeekWrapper extends NoSeekWrapper
{
    public function stream_seek(int $offset, int $whence): bool
    {
        trigger_error('fatal error in stream_seek', E_USER_ERROR);

        return false;
    }
}

class SeekWrapper extends NoSeekWrapper
{
    public function stream_seek(int $offset, int $whence): bool
    {
        return 0 === fseek($this->h, $offset, $whence);
    }
}

$fatal = $_GET['fatal'] ?? '';
$wrapper = $_GET['wrapper'] ?? '';
$options = [];
$file = $path;
if ('ob' === $fatal || 'callback' === $fatal) {
    $file = $path . '.' . bin2hex(random_bytes(4));
    copy($path, $file);
    $options['delete'] = true;
}
if ('ob' === $fatal) {
    ob_start(function (string $buffer, int $phase): string {
        static $fired = false;
        if (!$fired && ($phase & PHP_OUTPUT_HANDLER_CLEAN)) {
            $fired = true;
            trigger_error('fatal error in an output handler', E_USER_ERROR);
        }

        return $buffer;
    });
}
if ('callback' === $fatal) {
    header_register_callback(function (): void {
        trigger_error('fatal error in the header callback', E_USER_ERROR);
    });
}
if (isset($_GET['callback'])) {
    header_register_callback(function (): void {
        header('X-Callback: ran', false);
    });
}
if ('seek' === $fatal || '' !== $wrapper) {
    $class = match (true) {
        'seek' === $fatal => FatalSeekWrapper::class,
        'noseek' === $wrapper => NoSeekWrapper::class,
        default => SeekWrapper::class,
    };
    NoSeekWrapper::$echo = 'echo' === $wrapper;
    stream_wrapper_register('test', $class);
    $file = fopen('test://' . $name, 'rb');
}

function inherited_sockets(): int
{
    return substr_count((string) shell_exec('ls -l /proc/self/fd'), 'socket:');
}

$children = isset($_GET['children']) ? 'before=' . inherited_sockets() : '';
try {
    $returned = var_export(send_file($file, $options), true);
} catch (HandoffException $e) {
    $returned = 'HandoffException: ' . $e->getMessage();
}
if (isset($_GET['result'])) {
    if ('' !== $children) {
        file_put_contents($dir . '/results/' . basename($_GET['result']) . '.children',
            $children . ' after=' . inherited_sockets());
    }
    file_put_contents($dir . '/results/' . basename($_GET['result']), $returned);
}
