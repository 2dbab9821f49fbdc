<?php
// One local disk: the test's data/ directory.
return [
    'default' => 'local',
    'disks' => [
        'local' => ['driver' => 'local', 'root' => getenv('HANDOFF_TEST_DIR') . '/data'],
    ],
];
