//! What the extension registers with the engine or asks of it outside a request's SAPI
//! state: the ini handler of `handoff.global_functions`, ini values, the `open_basedir`
//! check, the phpinfo() section and SPL's `RuntimeException` (the parent of
//! `HandoffException`).

use std::ffi::{c_char, c_int, c_void, CStr};

use ext_php_rs::ffi;

use super::c_str_to_string;

extern "C" {
    // Exported by every PHP binary (php-fpm, php, libphp) but not in ext-php-rs' bindings.
    fn php_check_open_basedir_ex(path: *const c_char, warn: c_int) -> c_int;
    fn zend_ini_string_ex(
        name: *const c_char,
        name_length: usize,
        orig: bool,
        exists: *mut bool,
    ) -> *mut c_char;
    static mut spl_ce_RuntimeException: *mut ffi::zend_class_entry;
}

/// `open_basedir` check, without PHP's own warning (we throw instead).
pub fn open_basedir_allows(path: &CStr) -> bool {
    // SAFETY: `path` is a valid C string for the call.
    unsafe { php_check_open_basedir_ex(path.as_ptr(), 0) == 0 }
}

/// The current value of an ini setting.
pub fn ini_string(name: &str) -> Option<String> {
    let mut exists = false;
    // SAFETY: `name` is valid for its length; the returned value is owned by the ini
    // table and valid until the setting changes, and we copy it at once.
    let p = unsafe { zend_ini_string_ex(name.as_ptr().cast(), name.len(), false, &mut exists) };
    if !exists {
        return None;
    }
    c_str_to_string(p)
}

/// What [`global_functions_changed`] asks of the setting it handles.
pub trait GlobalFunctions {
    /// The global functions the setting can remove, lower case as PHP's function table
    /// keys them.
    const NAMES: &'static [&'static str];
    /// Whether a value of the setting keeps them.
    fn wanted(value: &str) -> bool;
}

/// PHP's `on_modify` handler of `handoff.global_functions`, run when the value is set: at
/// startup by the ini registration (php.ini, `-d`), and in a php-fpm worker by the pool's
/// `php_admin_value`, before the worker's first request.
///
/// Off deletes the global `send_file()` and `handoff_available()` from the function table,
/// the way PHP's own `disable_functions` does, so a script may declare functions of those
/// names; `Handoff\send_file()` and `Handoff\available()` stay. No request is running at
/// either moment (the executor counts its persistent functions at each request's start, so
/// the smaller table is what every later request sees). Once deleted, the functions cannot
/// come back in this process: On after Off is refused, and the setting keeps saying Off.
///
/// Generic over the setting's policy ([`GlobalFunctions`], implemented in `settings`), so
/// that this module, which PHP calls into, imports nothing from the modules above it.
///
/// # Safety
/// Called by PHP with a valid (or null) `new_value`, outside any request.
pub unsafe extern "C" fn global_functions_changed<G: GlobalFunctions>(
    _entry: *mut ffi::zend_ini_entry,
    new_value: *mut ffi::zend_string,
    _arg1: *mut c_void,
    _arg2: *mut c_void,
    _arg3: *mut c_void,
    _stage: c_int,
) -> c_int {
    const SUCCESS: c_int = 0;
    const FAILURE: c_int = -1;
    // SAFETY: PHP passes the new value as a live zend_string (or null for no value).
    let value = match unsafe { new_value.as_ref() } {
        Some(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        None => String::new(),
    };
    // SAFETY: the compiler globals exist for the life of the process; their function table
    // is set up before any extension starts.
    let table = unsafe { (*ffi::ext_php_rs_compiler_globals()).function_table };
    if table.is_null() {
        return FAILURE;
    }
    let wanted = G::wanted(&value);
    for name in G::NAMES {
        // SAFETY: `table` is PHP's live function table and `name` is valid for its length.
        let present =
            unsafe { !ffi::zend_hash_str_find(table, name.as_ptr().cast(), name.len()).is_null() };
        if wanted && !present {
            return FAILURE;
        }
        if !wanted && present {
            // SAFETY: as above; no request runs, so no call frame refers to the function,
            // and the table's destructor frees it as PHP's disable_functions does.
            unsafe { ffi::zend_hash_str_del(table, name.as_ptr().cast(), name.len()) };
        }
    }
    SUCCESS
}

/// The class entry of SPL's `RuntimeException`, the parent of `HandoffException`.
pub fn runtime_exception() -> &'static ext_php_rs::zend::ClassEntry {
    // SAFETY: SPL is always compiled in and registers its classes before any shared
    // extension starts, so the pointer is set and valid for the life of the process.
    unsafe {
        let p = spl_ce_RuntimeException;
        match p.as_ref() {
            Some(ce) => ce,
            None => ext_php_rs::zend::ce::exception(),
        }
    }
}

/// Prints the extension's `phpinfo()` table of `rows` (computed by safe code in `lib.rs`).
/// Only call from the module's info function, while PHP prints phpinfo().
pub fn print_info_table(rows: Vec<(String, String)>) {
    // SAFETY: called by PHP while printing phpinfo(); the table functions write output.
    unsafe { ffi::php_info_print_table_start() };
    for (k, v) in rows {
        ext_php_rs::info_table_row!(k.as_str(), v.as_str());
    }
    // SAFETY: as above.
    unsafe { ffi::php_info_print_table_end() };
}
