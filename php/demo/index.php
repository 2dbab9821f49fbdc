<?php
// handoff demo: lists the files download.php can send and shows how the extension is set up.
declare(strict_types=1);

require __DIR__ . '/lib.php';

$dir = demo_data_dir();
$files = demo_files($dir);
$loaded = extension_loaded('handoff');
$socket = $loaded ? (string) ini_get('handoff.socket') : '';

header('Content-Type: text/html; charset=utf-8');
?>
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>handoff demo</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }
td.num { text-align: right; }
.ok { color: #060; } .bad { color: #a00; }
code { background: #f3f3f3; padding: 0 .2rem; }
</style>
</head>
<body>
<h1>handoff demo</h1>
<p>Each download below is opened by a php-fpm worker, which calls
<code>send_file()</code>: the client connection and the open file go to
<code>handoff-manager</code>, which streams the bytes while the worker takes the next request.</p>

<h2>Files</h2>
<?php if ($files === null): ?>
<p class="bad">The data directory <code><?= h($dir) ?></code> cannot be read
(set <code>HANDOFF_DEMO_DATA</code>).</p>
<?php elseif ($files === []): ?>
<p>No files in <code><?= h($dir) ?></code>.</p>
<?php else: ?>
<table>
<tr><th>File</th><th>Size</th><th>curl</th></tr>
<?php foreach ($files as $name => $size): ?>
<?php $href = 'download.php?name=' . rawurlencode($name); ?>
<tr>
<td><a href="<?= h($href) ?>"><?= h($name) ?></a></td>
<td class="num"><?= h(human_size($size)) ?></td>
<td><code>curl -o <?= h($name) ?> '<?= h(base_url() . $href) ?>'</code></td>
</tr>
<?php endforeach; ?>
</table>
<p>Data directory: <code><?= h($dir) ?></code> (outside the document root: nginx never serves it).</p>
<p>Generated download: <a href="zip.php">all of them as one ZIP</a>, built by ZipArchive in a
temp file that <code>send_file(..., ['delete' => true])</code> removes as soon as it is open
(<code>curl -o handoff-demo.zip '<?= h(base_url() . 'zip.php') ?>'</code>).</p>
<?php endif; ?>

<h2>Extension</h2>
<table>
<tr><th>handoff extension</th>
<td><?= $loaded ? '<span class="ok">loaded</span>' : '<span class="bad">not loaded</span> (downloads will fail)' ?></td></tr>
<?php if ($loaded): ?>
<tr><th>handoff.socket</th><td><code><?= h($socket) ?></code>
<?php
$up = function_exists('handoff_available') ? handoff_available() : @file_exists($socket);
echo $up
    ? '<span class="ok">(handoff-manager answers)</span>'
    : '<span class="bad">(handoff-manager not reachable: send_file() streams in-process)</span>';
?></td></tr>
<tr><th>handoff.fallback</th><td><code><?= h((string) ini_get('handoff.fallback')) ?></code></td></tr>
<tr><th>handoff.timeout_ms</th><td><code><?= h((string) ini_get('handoff.timeout_ms')) ?></code></td></tr>
<?php endif; ?>
<tr><th>PHP</th><td><?= h(PHP_VERSION . ' (' . PHP_SAPI . ')') ?></td></tr>
</table>
</body>
</html>
