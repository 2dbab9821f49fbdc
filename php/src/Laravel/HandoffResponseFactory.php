<?php

declare(strict_types=1);

namespace Handoff\Laravel;

use Handoff\Symfony\HandoffFileResponse;
use Illuminate\Routing\ResponseFactory;

/**
 * Laravel's ResponseFactory whose download() and file() return a {@see HandoffFileResponse}
 * (the same file, name, headers and disposition), bound by {@see HandoffServiceProvider}
 * when `config('handoff.downloads')` is true.
 */
class HandoffResponseFactory extends ResponseFactory
{
    /** @var array{tag?: string, rate?: int, rate_group?: string} */
    private array $handoffOptions = [];

    /** @param array{tag?: string, rate?: int, rate_group?: string} $options */
    public function withHandoffOptions(array $options): static
    {
        $this->handoffOptions = $options;

        return $this;
    }

    public function download($file, $name = null, array $headers = [], $disposition = 'attachment')
    {
        return HandoffFileResponse::fromBinaryFileResponse(parent::download($file, $name, $headers, $disposition), $this->handoffOptions);
    }

    public function file($file, array $headers = [])
    {
        return HandoffFileResponse::fromBinaryFileResponse(parent::file($file, $headers), $this->handoffOptions);
    }
}
