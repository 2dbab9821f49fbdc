<?php
// Handoff\Laravel\HandoffServiceProvider's settings, from the test request's query
// (php/tests/www/laravel.php): downloads=1 turns the switch on, tag=T is every download's tag.
return [
    'downloads' => isset($_GET['downloads']),
    'options' => isset($_GET['tag']) ? ['tag' => (string) $_GET['tag']] : [],
];
