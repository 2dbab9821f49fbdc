<?php

declare(strict_types=1);

namespace Handoff\Laravel;

use Handoff\Symfony\HandoffFileResponse;
use Illuminate\Routing\ResponseFactory;
use Illuminate\Support\ServiceProvider;

/**
 * Registers `response()->handoff($file, $name = null, array $headers = [],
 * $disposition = 'attachment')`, the handoff counterpart of `response()->download()`: it
 * returns a {@see HandoffFileResponse}, so the download is handed to handoff-manager when
 * the extension is loaded (and streamed like download() when it is not), and
 * `->deleteFileAfterSend()` works on it.
 */
class HandoffServiceProvider extends ServiceProvider
{
    public function boot(): void
    {
        if (ResponseFactory::hasMacro('handoff')) {
            return;
        }
        ResponseFactory::macro('handoff', function ($file, $name = null, array $headers = [], $disposition = 'attachment') {
            // Bound to the ResponseFactory (Macroable): the same steps as its download().
            $response = new HandoffFileResponse($file, 200, $headers, true, $disposition);
            if (null !== $name) {
                /** @var ResponseFactory $this */
                return $response->setContentDisposition($disposition, $name, $this->fallbackName($name));
            }

            return $response;
        });
    }
}
