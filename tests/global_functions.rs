//! `handoff.global_functions = Off` set per php-fpm pool (`php_admin_value`), the way a host
//! that loads the extension into every pool frees the global names for one application
//! that declares its own `send_file()`: that application runs behind nginx and hands off
//! through `Handoff\send_file()`, in every worker and on every request.

use crate::util::{Config, Kind, Stack, MIB};

#[test]
fn pool_admin_value_frees_the_global_names() {
    let stack = Stack::start(
        Config::new(Kind::Fpm).pool_line("php_admin_value[handoff.global_functions] = Off"),
    );
    let sha = stack.data_file("own.bin", 2 * MIB, 71);
    // More requests than workers: each worker serves several, so later requests see the
    // function table the first one left behind.
    for i in 0..6 {
        let name = format!("own-{i}");
        let r = stack.get(
            &name,
            &format!("/own_send_file.php?f=own.bin&result={name}"),
        );
        assert_eq!(r.status, 200, "{}", r.head_text);
        assert_eq!(r.body_sha(), sha, "request {i}: body");
        assert_eq!(stack.wait_result(&name), "true own own", "request {i}");
    }
    stack.wait_outcome("complete", 2 * MIB, 6);
    stack.assert_clean_logs();
}

/// The default keeps the global names, so the same application cannot be compiled: the
/// test above would pass for a wrong reason if the pool line were ignored.
#[test]
fn default_keeps_the_global_names() {
    let stack = Stack::start(Config::new(Kind::Fpm));
    stack.data_file("own.bin", 1000, 72);
    let r = stack.get("own", "/own_send_file.php?f=own.bin&result=own");
    assert_eq!(r.status, 500, "{}", r.head_text);
    assert_eq!(stack.result("own"), None, "the script never ran");
    let r = stack.get("plain", "/download.php?f=own.bin");
    assert_eq!(
        r.status, 200,
        "the global send_file() works: {}",
        r.head_text
    );
}

/// Off in php.ini (here `-d`) removes the names in the master before any pool exists; a
/// pool's `php_admin_value[...] = On` cannot bring them back, and says so by keeping Off:
/// the application with its own `send_file()` still runs there.
#[test]
fn pool_on_after_php_ini_off_keeps_the_names_free() {
    let stack = Stack::start(
        Config::new(Kind::Fpm)
            .ini("handoff.global_functions", "Off")
            .pool_line("php_admin_value[handoff.global_functions] = On"),
    );
    let sha = stack.data_file("own.bin", MIB, 73);
    let r = stack.get("own", "/own_send_file.php?f=own.bin&result=own");
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha);
    assert_eq!(stack.wait_result("own"), "true own own");
    stack.assert_clean_logs();
}
