<?php
// A plain PHP page: shows that a worker is free while a handed-off download runs.
echo "hello from php\n";
