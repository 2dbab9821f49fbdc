<?php
// No views are rendered; ViewServiceProvider needs the two settings to build its factory.
return [
    'paths' => [],
    'compiled' => sys_get_temp_dir(),
];
