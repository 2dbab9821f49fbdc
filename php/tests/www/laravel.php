<?php
// A minimal Laravel application (Debian's php-laravel-framework 8, 10 or 13, loaded by its
// own autoloader): Illuminate\Foundation\Application with the framework's HTTP kernel, which
// runs the full bootstrap (environment, configuration from php/tests/laravel/config,
// exception handling, facades, providers, including Handoff\Laravel\HandoffServiceProvider),
// and one route that returns a download. No session, views or database.
// Query parameters:
//   f        file name inside $HANDOFF_TEST_DIR/data/ (required)
//   via      how the route answers: handoff (default: response()->handoff()), download
//            (response()->download()), file (response()->file()), storage
//            (Storage::disk('local')->download())
//   name     the download name
//   delete=1 ->deleteFileAfterSend(); delete=option: handoff()'s 'delete' option
//   downloads=1   config handoff.downloads (php/tests/laravel/config/handoff.php)
//   tag=T    the download's tag: handoff()'s options, and config handoff.options
//   result=NAME   write "sent <response class>" to results/NAME once the response was sent
require '/usr/share/php/Illuminate/autoload.php';
require __DIR__ . '/../../autoload.php';

use Illuminate\Http\Request;

$dir = getenv('HANDOFF_TEST_DIR');
// Laravel writes its package and service manifests under bootstrap/cache, and its log
// under storage/: keep them in the test's own directory.
@mkdir("$dir/laravel-cache");
foreach (['PACKAGES', 'SERVICES', 'CONFIG', 'ROUTES', 'EVENTS'] as $cache) {
    $_SERVER["APP_{$cache}_CACHE"] = "$dir/laravel-cache/" . strtolower($cache) . '.php';
}

$app = new Illuminate\Foundation\Application(realpath(__DIR__ . '/../laravel'));
$app->useStoragePath("$dir/laravel-storage");
// Laravel 11 and later merge the framework's own config/ under the application's; Debian
// installs it as Illuminate/config, not where the code looks for it (four directories above
// Foundation/Bootstrap). This application's config/ has everything it uses.
if (method_exists($app, 'dontMergeFrameworkConfiguration')) {
    $app->dontMergeFrameworkConfiguration();
}
$app->singleton(Illuminate\Contracts\Http\Kernel::class, Illuminate\Foundation\Http\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, Illuminate\Foundation\Exceptions\Handler::class);
$app->booted(function ($app) use ($dir) {
    $app['router']->get('/', function (Request $request) use ($dir) {
        $f = basename((string) $request->query('f', ''));
        $path = $dir . '/data/' . $f;
        $name = $request->query('name');
        $headers = ['X-Framework' => 'laravel'];
        $tag = $request->query('tag');
        switch ($request->query('via', 'handoff')) {
            case 'download':
                return response()->download($path, $name, $headers);
            case 'file':
                return response()->file($path, $headers);
            case 'storage':
                return Illuminate\Support\Facades\Storage::disk('local')->download($f, $name, $headers);
        }
        $options = null !== $tag ? ['tag' => $tag] : [];
        if ('option' === $request->query('delete')) {
            $options['delete'] = true;
        }
        $response = response()->handoff($path, $name, $headers, 'attachment', $options);
        if ('1' === $request->query('delete')) {
            $response->deleteFileAfterSend();
        }

        return $response;
    });
});

$kernel = $app->make(Illuminate\Contracts\Http\Kernel::class);
$request = Request::capture();
$response = $kernel->handle($request);
$response->send();
$kernel->terminate($request, $response);

if ($request->query('result')) {
    file_put_contents($dir . '/results/' . basename((string) $request->query('result')), 'sent ' . get_class($response));
}
