<?php
// Prints the handoff API in one canonical form, one line per function, class and ini
// setting, sorted, from one of two sources:
//   php -d extension=handoff.so describe_api.php extension   what the extension registers
//                                                              (ReflectionExtension: what
//                                                              `php --re handoff` shows)
//   php describe_api.php stubs                                 php/stubs/handoff.stub.php and
//                                                              php/stubs/handoff.ini
// tests/php_package.rs compares the two.
declare(strict_types=1);

function describe_function(ReflectionFunction $f): string
{
    $params = [];
    foreach ($f->getParameters() as $p) {
        $param = ($p->hasType() ? $p->getType() . ' ' : '') . '$' . $p->getName();
        if ($p->isOptional()) {
            $param .= ' = ' . ($p->isDefaultValueAvailable() ? var_export($p->getDefaultValue(), true) : '?');
        }
        $params[] = $param;
    }

    return sprintf('function %s(%s): %s', $f->getName(), implode(', ', $params), $f->getReturnType());
}

function describe_class(ReflectionClass $c): string
{
    $methods = array_map(static fn (ReflectionMethod $m) => $m->getName(), array_filter($c->getMethods(), static fn (ReflectionMethod $m) => $m->getDeclaringClass()->getName() === $c->getName()));

    return sprintf('class %s extends %s methods [%s]', $c->getName(), $c->getParentClass() ? $c->getParentClass()->getName() : '-', implode(', ', $methods));
}

$access = [1 => 'PHP_INI_USER', 2 => 'PHP_INI_PERDIR', 4 => 'PHP_INI_SYSTEM'];
$lines = [];
if (($argv[1] ?? '') === 'extension') {
    $ext = new ReflectionExtension('handoff');
    foreach ($ext->getFunctions() as $f) {
        $lines[] = describe_function($f);
    }
    foreach ($ext->getClasses() as $c) {
        $lines[] = describe_class($c);
    }
    foreach (ini_get_all('handoff') as $name => $entry) {
        $changeable = $entry['access'] === INI_ALL ? ['PHP_INI_ALL'] : array_values(array_filter($access, static fn ($bit) => ($entry['access'] & $bit) !== 0, ARRAY_FILTER_USE_KEY));
        $lines[] = sprintf('ini %s = %s (%s)', $name, var_export($entry['global_value'], true), implode('|', $changeable));
    }
} elseif (($argv[1] ?? '') === 'stubs') {
    $stubs = dirname(__DIR__, 2) . '/stubs';
    $functions = get_defined_functions()['user'];
    $classes = get_declared_classes();
    require $stubs . '/handoff.stub.php';
    foreach (array_diff(get_defined_functions()['user'], $functions) as $name) {
        $lines[] = describe_function(new ReflectionFunction($name));
    }
    foreach (array_diff(get_declared_classes(), $classes) as $name) {
        $lines[] = describe_class(new ReflectionClass($name));
    }
    // Each setting is a `name = "default"` line after a `; changeable: ...` comment.
    $changeable = null;
    foreach (file($stubs . '/handoff.ini', FILE_IGNORE_NEW_LINES) as $line) {
        if (preg_match('/^; changeable: (\S+)$/', $line, $m)) {
            $changeable = $m[1];
        } elseif (preg_match('/^(handoff\.\w+) = "(.*)"$/', $line, $m)) {
            $lines[] = sprintf('ini %s = %s (%s)', $m[1], var_export($m[2], true), $changeable ?? '?');
            $changeable = null;
        }
    }
} else {
    fwrite(STDERR, "usage: describe_api.php extension|stubs\n");
    exit(2);
}
sort($lines);
echo implode("\n", $lines), "\n";
