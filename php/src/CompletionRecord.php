<?php
// Verifies the completion records handoff-manager POSTs with --on-complete-secret FILE:
// the signature proves a record came from the manager, the timestamp and the record id
// keep a captured record from being played again.
declare(strict_types=1);

namespace Handoff;

final class CompletionRecord
{
    /** Seconds a record's timestamp may differ from this machine's clock. */
    public const TOLERANCE = 300;

    /**
     * Checks one delivery and returns the record it carries.
     *
     * @param string $secret    the key in the manager's --on-complete-secret file (read it
     *                          with self::readSecret())
     * @param string $body      the raw request body, file_get_contents('php://input')
     * @param ?string $timestamp the Handoff-Timestamp header
     * @param ?string $signature the Handoff-Signature header
     * @param callable(string, int): bool $firstSeen remembers a record id until the given
     *                          Unix time and says whether it was new (self::seenIn() keeps
     *                          them in a directory)
     * @return array<string, mixed> the record
     * @throws InvalidRecord 'forged' (no or a wrong signature), 'stale' (the timestamp is
     *                          outside the tolerance), 'malformed' (not a record) or
     *                          'replayed' (its id was accepted before)
     */
    public static function verify(
        string $secret,
        string $body,
        ?string $timestamp,
        ?string $signature,
        callable $firstSeen,
        int $tolerance = self::TOLERANCE,
        ?int $now = null
    ): array {
        if ($timestamp === null || $signature === null || !ctype_digit($timestamp)) {
            throw new InvalidRecord('forged', 'no Handoff-Timestamp or Handoff-Signature');
        }
        $expected = 'sha256=' . hash_hmac('sha256', $timestamp . '.' . $body, $secret);
        if (!hash_equals($expected, $signature)) {
            throw new InvalidRecord('forged', 'the signature does not match');
        }
        $now ??= time();
        if (abs($now - (int) $timestamp) > $tolerance) {
            throw new InvalidRecord('stale', "timestamp $timestamp is more than {$tolerance}s from now");
        }
        $record = json_decode($body, true);
        if (!is_array($record) || !is_string($record['id'] ?? null) || $record['id'] === '') {
            throw new InvalidRecord('malformed', 'the body is not a completion record');
        }
        // Remembered past the tolerance: once forgotten, its timestamp is stale anyway.
        if (!$firstSeen($record['id'], (int) $timestamp + 2 * $tolerance)) {
            throw new InvalidRecord('replayed', "record {$record['id']} was accepted before");
        }
        return $record;
    }

    /** The key of a --on-complete-secret file, read as the manager reads it. */
    public static function readSecret(string $path): string
    {
        $key = @file_get_contents($path);
        if ($key === false) {
            throw new \RuntimeException("cannot read the record secret $path");
        }
        return rtrim($key, "\r\n");
    }

    /**
     * A $firstSeen for verify() that keeps one empty file per record id in $dir
     * (created atomically, so two deliveries of one id at once are told apart) and
     * removes the expired ones now and then.
     *
     * @return callable(string, int): bool
     */
    public static function seenIn(string $dir): callable
    {
        return static function (string $id, int $until) use ($dir): bool {
            if (!is_dir($dir) && !@mkdir($dir, 0700, true) && !is_dir($dir)) {
                throw new \RuntimeException("cannot create $dir");
            }
            if (random_int(0, 99) === 0) {
                foreach (glob($dir . '/*.seen') ?: [] as $old) {
                    if ((int) @file_get_contents($old) < time()) {
                        @unlink($old);
                    }
                }
            }
            $file = @fopen($dir . '/' . hash('sha256', $id) . '.seen', 'x');
            if ($file === false) {
                return false;
            }
            fwrite($file, (string) $until);
            fclose($file);
            return true;
        };
    }
}
