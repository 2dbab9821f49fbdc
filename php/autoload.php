<?php
// PSR-4 autoloader for the Handoff\ classes in src/, for applications that do not use
// Composer (Composer users get the same mapping from composer.json).
declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    if (strncmp($class, 'Handoff\\', 8) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, 8)) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
