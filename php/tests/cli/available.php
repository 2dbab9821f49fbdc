<?php
// Prints what handoff_available() says about the manager at handoff.socket.
echo 'available=' . var_export(handoff_available(), true) . "\n";
