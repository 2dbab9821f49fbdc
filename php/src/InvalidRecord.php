<?php
// Why CompletionRecord::verify() refused a delivery.
declare(strict_types=1);

namespace Handoff;

final class InvalidRecord extends \RuntimeException
{
    /** @param string $reason 'forged', 'stale', 'malformed' or 'replayed' */
    public function __construct(public readonly string $reason, string $message)
    {
        parent::__construct($message);
    }
}
