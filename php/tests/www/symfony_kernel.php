<?php
// A Symfony application in miniature: the real HttpKernel with an EventDispatcher that has
// HttpKernel's ResponseListener (which prepares every response for its request) and
// Handoff\Symfony\HandoffSubscriber; the controller returns a plain BinaryFileResponse for
// $HANDOFF_TEST_DIR/data/<f>, as application code does, and the kernel's response is sent
// and the kernel terminated as a front controller does. Debian's packages, each loaded by
// its own autoloader. Query parameters:
//   f        file name inside data/ (required)
//   name     setContentDisposition('attachment', name)
//   status=N the controller's status code (cookies and X-Framework are always set)
//   delete=1 deleteFileAfterSend()
//   tag=T    HandoffSubscriber(['tag' => T])
//   result=NAME   write the response's class to results/NAME once it was sent
// Mime guesses Content-Type (Debian 12's HttpFoundation autoloader loads it, later ones not).
foreach (['HttpFoundation', 'Mime', 'HttpKernel', 'EventDispatcher'] as $component) {
    require "/usr/share/php/Symfony/Component/$component/autoload.php";
}
require __DIR__ . '/../../autoload.php';

use Handoff\Symfony\HandoffSubscriber;
use Symfony\Component\EventDispatcher\EventDispatcher;
use Symfony\Component\HttpFoundation\BinaryFileResponse;
use Symfony\Component\HttpFoundation\Cookie;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\RequestStack;
use Symfony\Component\HttpKernel\Controller\ArgumentResolver;
use Symfony\Component\HttpKernel\Controller\ControllerResolver;
use Symfony\Component\HttpKernel\EventListener\ResponseListener;
use Symfony\Component\HttpKernel\HttpKernel;

$dir = getenv('HANDOFF_TEST_DIR');
$request = Request::createFromGlobals();
$query = $request->query;

$dispatcher = new EventDispatcher();
$dispatcher->addSubscriber(new ResponseListener('UTF-8'));
$dispatcher->addSubscriber(new HandoffSubscriber($query->has('tag') ? ['tag' => $query->get('tag')] : []));
$kernel = new HttpKernel($dispatcher, new ControllerResolver(), new RequestStack(), new ArgumentResolver());

$request->attributes->set('_controller', static function () use ($dir, $query): BinaryFileResponse {
    $response = new BinaryFileResponse($dir . '/data/' . basename($query->get('f', '')), (int) $query->get('status', 200), ['X-Framework' => 'symfony-kernel']);
    $response->headers->setCookie(Cookie::create('session', 'abc'));
    if ($query->has('name')) {
        $response->setContentDisposition('attachment', $query->get('name'));
    }
    if ($query->has('delete')) {
        $response->deleteFileAfterSend();
    }

    return $response;
});
$response = $kernel->handle($request);
$response->send();
$kernel->terminate($request, $response);

if ($query->has('result')) {
    file_put_contents($dir . '/results/' . basename($query->get('result')), get_class($response));
}
