<?php
// Handoff\Laravel\HandoffServiceProvider's settings. `php artisan vendor:publish
// --tag=handoff-config` copies this file to config/handoff.php.
return [
    // true: response()->download(), response()->file() and Storage::disk(...)->download()
    // (local disks) hand their files to handoff-manager, as response()->handoff() does.
    'downloads' => (bool) env('HANDOFF_DOWNLOADS', false),

    // send_file() options for those downloads: 'tag' (a label in the manager's download
    // records), 'rate' (bytes per second), 'rate_group' (a shared bandwidth budget).
    'options' => [],
];
