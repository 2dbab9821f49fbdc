<?php
// handoff.max_copy_bytes (set to 1 MiB here): a stream that must be copied into
// memory may have at most that many bytes. Run in the CLI, where send_file() streams to
// stdout: a refused stream must throw HandoffException before a byte reaches stdout and
// leave no memory copy open. Verdicts go to stderr.
class EndlessWrapper
{
    public $context;
    private int $left = 64 << 20;

    public function stream_open(string $path, string $mode, int $options, ?string &$opened): bool
    {
        return true;
    }

    public function stream_read(int $count): string
    {
        $n = min($count, $this->left);
        $this->left -= $n;

        return str_repeat('x', $n);
    }

    public function stream_eof(): bool
    {
        return 0 === $this->left;
    }
}
stream_wrapper_register('endless', EndlessWrapper::class);

function memory_copies(): int
{
    $n = 0;
    foreach (glob('/proc/self/fd/*') as $fd) {
        if (str_contains((string) @readlink($fd), 'memfd:handoff-stream')) {
            ++$n;
        }
    }

    return $n;
}

ini_set('handoff.max_copy_bytes', (string) (1 << 20));
$limit = (int) ini_get('handoff.max_copy_bytes');
$memory = fopen('php://memory', 'w+b');
fwrite($memory, str_repeat('m', $limit + 1));
foreach (['php://memory one byte over' => $memory, 'a 64 MiB user stream' => fopen('endless://', 'rb')] as $what => $stream) {
    try {
        send_file($stream);
        fwrite(STDERR, "FAIL $what was sent\n");
    } catch (HandoffException $e) {
        $copies = memory_copies();
        fwrite(STDERR, (str_contains($e->getMessage(), 'handoff.max_copy_bytes') && 0 === $copies ? 'PASS' : 'FAIL')
            . " $what: {$e->getMessage()}; memory copies left open: $copies\n");
    }
}
// Exactly the limit is sent.
ftruncate($memory, $limit);
send_file($memory);
fwrite(STDERR, "sent the limit\n");
