<?php
// A Symfony HttpFoundation "controller": returns a Handoff\Symfony\HandoffFileResponse for
// $HANDOFF_TEST_DIR/data/<f>, prepared against the request and sent, as a Symfony front
// controller does. HttpFoundation is Debian's php-symfony-http-foundation, loaded by its
// own autoloader. Query parameters:
//   f        file name inside data/ (required)
//   name     setContentDisposition('attachment', name)
//   etag=1   setAutoEtag()
//   delete=1 deleteFileAfterSend()
//   input=spl / splinfo   pass the file as new SplFileObject() / new SplFileInfo()
//            (BinaryFileResponse accepts any \SplFileInfo and keeps its path)
//   result=NAME   write "sent" to results/NAME once send() returned
require '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
// symfony/mime guesses Content-Type; Debian 12's HttpFoundation autoloader loads it, later
// ones leave it to the application.
require '/usr/share/php/Symfony/Component/Mime/autoload.php';
require __DIR__ . '/../../autoload.php';

use Handoff\Symfony\HandoffFileResponse;
use Symfony\Component\HttpFoundation\Request;

$dir = getenv('HANDOFF_TEST_DIR');
$request = Request::createFromGlobals();
$path = $dir . '/data/' . basename($request->query->get('f', ''));

$file = match ($request->query->get('input')) {
    'spl' => new SplFileObject($path),
    'splinfo' => new SplFileInfo($path),
    default => $path,
};
$response = new HandoffFileResponse($file, 200, ['X-Framework' => 'symfony']);
if ($request->query->has('name')) {
    $response->setContentDisposition('attachment', $request->query->get('name'));
}
if ($request->query->has('etag')) {
    $response->setAutoEtag();
}
if ($request->query->has('delete')) {
    $response->deleteFileAfterSend();
}
$response->prepare($request);
$response->send();

if ($request->query->has('result')) {
    file_put_contents($dir . '/results/' . basename($request->query->get('result')), 'sent');
}
