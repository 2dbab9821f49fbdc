<?php

declare(strict_types=1);

namespace Handoff\Symfony;

use Symfony\Component\HttpFoundation\BinaryFileResponse;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\Response;

/**
 * A drop-in for HttpFoundation's BinaryFileResponse whose body is sent by the handoff
 * extension's send_file(): the PHP worker hands the connection and the open file to
 * handoff-manager and is free at once.
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
 *   ('delete' => true), so it is gone however the download ends.
 * - a file behind a stream wrapper (phar://, ...) is sent as an open stream.
 *
 * Without the extension every method is BinaryFileResponse's own.
 */
class HandoffFileResponse extends BinaryFileResponse
{
    /**
     * Whether the handoff extension is loaded. Not merely whether a function send_file()
     * exists: other code declares one of that name (Moodle's filelib.php does).
     */
    public static function handoffAvailable(): bool
    {
        return \extension_loaded('handoff');
    }

    /**
     * {@inheritdoc}
     *
     * @return $this
     */
    public function prepare(Request $request)
    {
        if (!self::handoffAvailable()) {
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

    /**
     * {@inheritdoc}
     *
     * @return $this
     */
    public function sendContent()
    {
        if (!self::handoffAvailable()) {
            return parent::sendContent();
        }
        $path = $this->file->getPathname();
        $extensionDeletes = false;
        try {
            if (!$this->isSuccessful()) {
                return Response::sendContent();
            }
            if (str_contains($path, '://')) {
                // A stream-wrapped location has no descriptor of its own: send_file()
                // copies the stream.
                $stream = fopen($path, 'rb');
                if (false === $stream) {
                    throw new \RuntimeException('HandoffFileResponse: the file cannot be opened');
                }
                send_file($stream);
            } else {
                // From here the extension alone deletes the file, also if send_file()
                // throws: it unlinks the file it opened, and never one that replaced it at
                // the path since (unlinking whatever is there now could delete another).
                $extensionDeletes = $this->deleteFileAfterSend;
                send_file($path, $this->deleteFileAfterSend ? ['delete' => true] : []);
            }
        } finally {
            // As BinaryFileResponse: also when nothing could be sent. prepare()'s stat of
            // the file is cached: without clearing it, is_file() would still see a file
            // that send_file() unlinked.
            if ($this->deleteFileAfterSend && !$extensionDeletes) {
                clearstatcache(true, $path);
                if (is_file($path)) {
                    unlink($path);
                }
            }
        }

        return $this;
    }
}
