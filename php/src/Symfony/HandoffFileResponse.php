<?php

declare(strict_types=1);

namespace Handoff\Symfony;

use Symfony\Component\HttpFoundation\BinaryFileResponse;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\Response;

/**
 * A drop-in for HttpFoundation's BinaryFileResponse whose body is sent by the handoff
 * extension's Handoff\send_file(): the PHP worker hands the connection and the open file to
 * handoff-manager and is free at once. Loads on Symfony 5.4, 6.4 and 7.4 (the `static`
 * return types of 6.0 and later are declared; 5.4's untyped parents accept them).
 *
 * Same constructor and methods as BinaryFileResponse. What changes when the extension is
 * loaded:
 * - prepare() does not apply Range / If-Range and never turns into X-Sendfile: send_file()
 *   evaluates Range, If-Range and the other conditionals itself, on the file it opened
 *   (applying them twice would send a 206 of a 206). Content-Type, Content-Length and
 *   Accept-Ranges are set as BinaryFileResponse sets them, so code that inspects the
 *   prepared response sees the same head.
 * - sendContent() calls send_file(); the headers the response set (status, cookies,
 *   Cache-Control, Content-Disposition, an ETag from setAutoEtag(), Last-Modified from
 *   setAutoLastModified()) are kept by send_file(), which uses those validators. Without
 *   setAutoEtag() send_file() adds its own (inode, size, mtime) ETag.
 * - deleteFileAfterSend(): the file is unlinked as soon as send_file() has opened it
 *   ('delete' => true), so it is gone however the download ends. If send_file() threw
 *   (nothing was sent), the file is left in place.
 * - setHandoffOptions(): send_file()'s `tag`, `rate` and `rate_group` (and `delete`, the
 *   same as deleteFileAfterSend()).
 * - a file behind a stream wrapper (phar://, ...) is sent as an open stream.
 *
 * Without the extension, and for a php://temp file (SplTempFileObject), every method is
 * BinaryFileResponse's own.
 */
class HandoffFileResponse extends BinaryFileResponse
{
    /** The send_file() options this response passes on. */
    private const OPTIONS = ['tag', 'rate', 'rate_group'];

    /** @var array{tag?: string, rate?: int, rate_group?: string} */
    private array $handoffOptions = [];

    /**
     * Whether the handoff extension is loaded. Not merely whether some send_file() exists:
     * other code declares one of that name (Moodle's filelib.php does).
     */
    public static function handoffAvailable(): bool
    {
        return \extension_loaded('handoff') && \function_exists('Handoff\send_file');
    }

    /**
     * The same download as $response (its file, status, headers and cookies, protocol
     * version, charset and deleteFileAfterSend()), sent by send_file(). $response must not
     * have been prepared for a request yet.
     *
     * @param array{tag?: string, rate?: int, rate_group?: string, delete?: bool} $options
     */
    public static function fromBinaryFileResponse(BinaryFileResponse $response, array $options = []): self
    {
        // The headers are replaced by the original's below, so the constructor's own
        // (Cache-Control from $public, ETag, Last-Modified) do not matter.
        $handoff = new self($response->getFile(), $response->getStatusCode(), [], true, null, false, false);
        $handoff->headers = clone $response->headers;
        $handoff->setStatusCode($response->getStatusCode(), $response->statusText);
        $handoff->setProtocolVersion($response->getProtocolVersion());
        if (null !== $response->getCharset()) {
            $handoff->setCharset($response->getCharset());
        }
        $handoff->deleteFileAfterSend($response->deleteFileAfterSend);

        return $handoff->setHandoffOptions($options);
    }

    /**
     * send_file()'s `tag` (a label for the manager's download records), `rate` (bytes per
     * second) and `rate_group` (a shared bandwidth budget); `delete` => true is
     * deleteFileAfterSend(). Unknown keys throw here, not later while sending.
     *
     * @param array{tag?: string, rate?: int, rate_group?: string, delete?: bool} $options
     */
    public function setHandoffOptions(array $options): static
    {
        self::checkHandoffOptions($options);
        if (\array_key_exists('delete', $options)) {
            $this->deleteFileAfterSend((bool) $options['delete']);
            unset($options['delete']);
        }
        $this->handoffOptions = $options + $this->handoffOptions;

        return $this;
    }

    /**
     * Throws \InvalidArgumentException for a key send_file() options do not have here.
     *
     * @param array<string, mixed> $options
     */
    public static function checkHandoffOptions(array $options): void
    {
        foreach (array_keys($options) as $name) {
            if ('delete' !== $name && !\in_array($name, self::OPTIONS, true)) {
                throw new \InvalidArgumentException(sprintf('Unknown handoff option "%s" (known: %s, delete).', $name, implode(', ', self::OPTIONS)));
            }
        }
    }

    /** @return array{tag?: string, rate?: int, rate_group?: string} */
    public function getHandoffOptions(): array
    {
        return $this->handoffOptions;
    }

    public function prepare(Request $request): static
    {
        if (!$this->handsOff()) {
            return parent::prepare($request);
        }
        if ($this->isInformational() || $this->isEmpty()) {
            Response::prepare($request);
            $this->maxlen = 0;

            return $this;
        }
        if (!$this->headers->has('Content-Type')) {
            // BinaryFileResponse asks symfony/mime; without it send_file() guesses from the
            // file name instead of failing.
            if (class_exists(\Symfony\Component\Mime\MimeTypes::class)) {
                $this->headers->set('Content-Type', $this->file->getMimeType() ?: 'application/octet-stream');
            }
        }
        Response::prepare($request);
        $this->offset = 0;
        $this->maxlen = -1;
        if (false !== $size = $this->file->getSize()) {
            $this->headers->remove('Transfer-Encoding');
            $this->headers->set('Content-Length', (string) $size);
            if (!$this->headers->has('Accept-Ranges')) {
                $this->headers->set('Accept-Ranges', $request->isMethodSafe() ? 'bytes' : 'none');
            }
        }

        return $this;
    }

    public function sendContent(): static
    {
        if (!$this->handsOff()) {
            return parent::sendContent();
        }
        if (!$this->isSuccessful()) {
            Response::sendContent();
            if ($this->deleteFileAfterSend) {
                $this->unlinkAfterSend($this->file->getPathname());
            }

            return $this;
        }
        $path = $this->file->getPathname();
        if (str_contains($path, '://')) {
            // A stream-wrapped location has no descriptor of its own: send_file() copies
            // the stream.
            $stream = fopen($path, 'rb');
            if (false === $stream) {
                throw new \RuntimeException('HandoffFileResponse: the file cannot be opened');
            }
            \Handoff\send_file($stream, $this->handoffOptions);
            if ($this->deleteFileAfterSend) {
                $this->unlinkAfterSend($path);
            }

            return $this;
        }
        // With 'delete', send_file() unlinks the file once it has opened it. If it throws,
        // nothing was sent and the file stays, for the application's error handling.
        \Handoff\send_file($path, $this->handoffOptions + ($this->deleteFileAfterSend ? ['delete' => true] : []));

        return $this;
    }

    /** Whether this response goes through send_file(). */
    private function handsOff(): bool
    {
        return self::handoffAvailable() && !$this->file instanceof \SplTempFileObject
            && 'php://temp' !== $this->file->getPathname();
    }

    private function unlinkAfterSend(string $path): void
    {
        // prepare()'s stat of the file is cached: without clearing it, is_file() would still
        // see a file that is gone.
        clearstatcache(true, $path);
        if (is_file($path)) {
            unlink($path);
        }
    }
}
