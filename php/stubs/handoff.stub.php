<?php
/**
 * IDE and static-analysis stubs for the handoff extension (PhpStorm, Psalm, PHPStan:
 * `stubFiles` / `scanFiles`). Never load this file at run time: the extension defines
 * these names itself. Its ini settings are in handoff.ini beside this file.
 * tests/php_package.rs checks that this file declares exactly what `php --re handoff` shows.
 */

namespace Handoff {
    /**
     * Sends a file as the response: hands the connection and the open file to
     * handoff-manager (returns true), or streams it from this process when the manager
     * cannot take it and handoff.fallback allows (returns false). Either way the response is
     * complete when it returns: later output is discarded.
     *
     * @param string|resource|\SplFileObject $file a path, an open stream, or an
     *        SplFileObject / SplTempFileObject (its stream)
     * @param array{
     *     content_type?: string,
     *     filename?: string,
     *     inline?: bool,
     *     rate?: int,
     *     tag?: string,
     *     rate_group?: string,
     *     delete?: bool,
     * }|null $options content_type: the Content-Type (default: guessed from the name);
     *        filename: a Content-Disposition name; inline: disposition inline instead of
     *        attachment; rate: bytes per second; tag: a label for the manager's download
     *        records; rate_group: a bandwidth budget shared by its downloads; delete: unlink
     *        the path once it is open
     * @throws \HandoffException before any byte is sent: missing or unreadable file, bad
     *         option, headers already sent, or no fallback allowed
     */
    function send_file(mixed $file, ?array $options = null): bool {}

    /** Whether handoff-manager answers at handoff.socket. */
    function available(): bool {}
}

namespace {
    /**
     * Handoff\send_file() under its global name; absent when handoff.global_functions is Off.
     *
     * @param string|resource|\SplFileObject $file
     * @param array<string, mixed>|null $options see Handoff\send_file()
     * @throws HandoffException
     */
    function send_file(mixed $file, ?array $options = null): bool {}

    /** Handoff\available() under its global name; absent when handoff.global_functions is Off. */
    function handoff_available(): bool {}

    /** Thrown by send_file() for every error found before a byte is sent. */
    class HandoffException extends RuntimeException {}
}
