<?php
// A minimal Laravel 8 application (Debian's php-laravel-framework, loaded by its own
// autoloader): Illuminate\Foundation\Application with the framework's HTTP kernel, which
// runs the full bootstrap (environment, configuration from php/tests/laravel/config,
// exception handling, facades, providers, including Handoff\Laravel\HandoffServiceProvider),
// and one route that returns response()->handoff(). No session, views or database.
// Query parameters:
//   f        file name inside $HANDOFF_TEST_DIR/data/ (required)
//   name     the download name (handoff()'s second argument)
//   delete=1 ->deleteFileAfterSend()
//   result=NAME   write "sent" to results/NAME once the response was sent
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
$app->singleton(Illuminate\Contracts\Http\Kernel::class, Illuminate\Foundation\Http\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, Illuminate\Foundation\Exceptions\Handler::class);
$app->booted(function ($app) use ($dir) {
    $app['router']->get('/', function (Request $request) use ($dir) {
        $path = $dir . '/data/' . basename((string) $request->query('f', ''));
        $response = response()->handoff($path, $request->query('name'), ['X-Framework' => 'laravel']);
        if ($request->query('delete')) {
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
    file_put_contents($dir . '/results/' . basename((string) $request->query('result')), 'sent');
}
