<?php

declare(strict_types=1);

namespace Handoff\Laravel;

use Handoff\Symfony\HandoffFileResponse;
use Illuminate\Contracts\Routing\ResponseFactory as ResponseFactoryContract;
use Illuminate\Contracts\View\Factory as ViewFactoryContract;
use Illuminate\Routing\ResponseFactory;
use Illuminate\Support\ServiceProvider;

/**
 * Laravel 8.83, 10.48 and 13:
 *
 * - `response()->handoff($file, $name = null, array $headers = [], $disposition =
 *   'attachment', array $options = [])`, the handoff counterpart of
 *   `response()->download()`: a {@see HandoffFileResponse}, so the download is handed to
 *   handoff-manager when the extension is loaded (and streamed like download() when it is
 *   not); `$options` are send_file()'s `tag`, `rate`, `rate_group` and `delete`, and
 *   `->deleteFileAfterSend()` works on it.
 * - with `config('handoff.downloads')` true, the application's own downloads hand off
 *   unchanged: `response()->download()` and `response()->file()` return a
 *   HandoffFileResponse, and `Storage::disk(...)->download()` / `->response()` on a `local`
 *   disk send the file with send_file(). `config('handoff.options')` (tag, rate,
 *   rate_group) applies to all of them. The defaults are php/config/handoff.php
 *   (`HANDOFF_DOWNLOADS` in .env), published with `--tag=handoff-config`.
 */
class HandoffServiceProvider extends ServiceProvider
{
    public function register(): void
    {
        $this->mergeConfigFrom(\dirname(__DIR__, 2) . '/config/handoff.php', 'handoff');
        if (!$this->downloadsHandOff()) {
            return;
        }
        $this->app->singleton(ResponseFactoryContract::class, function ($app) {
            return (new HandoffResponseFactory($app[ViewFactoryContract::class], $app['redirect']))
                ->withHandoffOptions($this->options());
        });
    }

    public function boot(): void
    {
        $this->publishes([\dirname(__DIR__, 2) . '/config/handoff.php' => $this->app->configPath('handoff.php')], 'handoff-config');
        if ($this->downloadsHandOff()) {
            $options = $this->options();
            $this->app['filesystem']->extend('local', function ($app, array $config) use ($options) {
                return HandoffFilesystemAdapter::fromLocalDisk($app['filesystem']->createLocalDriver($config), $options);
            });
        }
        if (ResponseFactory::hasMacro('handoff')) {
            return;
        }
        ResponseFactory::macro('handoff', function ($file, $name = null, array $headers = [], $disposition = 'attachment', array $options = []) {
            // Bound to the ResponseFactory (Macroable): the same steps as its download().
            $response = (new HandoffFileResponse($file, 200, $headers, true, $disposition))->setHandoffOptions($options);
            if (null !== $name) {
                /** @var ResponseFactory $this */
                return $response->setContentDisposition($disposition, $name, $this->fallbackName($name));
            }

            return $response;
        });
    }

    private function downloadsHandOff(): bool
    {
        return (bool) $this->app['config']->get('handoff.downloads', false);
    }

    /** @return array{tag?: string, rate?: int, rate_group?: string} */
    private function options(): array
    {
        $options = (array) $this->app['config']->get('handoff.options', []);
        HandoffFileResponse::checkHandoffOptions($options);

        return $options;
    }
}
