<?php
// The probe page: a tiny dynamic response, as a visitor browsing while downloads run.
$body = "ok\n";
header('Content-Type: text/plain');
header('Content-Length: ' . strlen($body));
echo $body;
