<?php
// The one configuration file of the minimal Laravel application in php/tests/www/laravel.php.
return [
    'name' => 'handoff-test',
    'env' => 'testing',
    'debug' => true,
    'url' => 'http://localhost',
    'timezone' => 'UTC',
    'locale' => 'en',
    'key' => 'base64:' . base64_encode(str_repeat('k', 32)),
    'cipher' => 'AES-256-CBC',
    // The framework's own providers that ResponseFactory needs (it takes the view
    // factory), then the one under test.
    'providers' => [
        Illuminate\Filesystem\FilesystemServiceProvider::class,
        Illuminate\View\ViewServiceProvider::class,
        Handoff\Laravel\HandoffServiceProvider::class,
    ],
    'aliases' => [],
];
