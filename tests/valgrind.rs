//! The PHP-level tests again, under valgrind's memcheck: every script in `php/tests/cli`
//! with the extension loaded, `USE_ZEND_ALLOC=0` (so that PHP's own allocator does not
//! hide our heap use from valgrind), and `--errors-for-leak-kinds=definite`.
//!
//! `ZEND_DONT_UNLOAD_MODULES=1` keeps the extension mapped at exit, as PHP's own test runner
//! does under valgrind: otherwise PHP `dlclose()`s it before valgrind looks for leaks, the
//! module entry that ext-php-rs builds once per process (and keeps in a static) becomes
//! "definitely lost" (about 340 bytes in 5 blocks, all under `get_module`), and every frame
//! in `libhandoff.so` shows as `???`.
//!
//! Skipped, with a message, only where valgrind is missing and `CI` is unset.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{
    extension, find_program, free_local_addr, read_lossy, repo_root, start_manager, tail,
    write_random_file, MIB,
};

/// valgrind's exit status when it found errors (`--error-exitcode`).
const ERROR_EXIT: i32 = 99;

/// Scripts that end in a PHP bailout: PHP's CLI exits with 255 and, itself, does not free
/// the script's compiled code and a few arrays after a bailout (definite leaks with no
/// frame of ours, also without the extension). For these, only leaks that pass through
/// our code, and errors other than leaks, fail.
const ENDS_IN_BAILOUT: [&str; 1] = ["bailout.php"];

/// The definite-leak records of a valgrind log that pass through our code, and whether
/// the log has errors that are not definite leaks.
fn our_leaks(log: &str) -> (Vec<String>, bool) {
    let mut records: Vec<String> = Vec::new();
    let mut in_leak = false;
    for line in log.lines() {
        let text = line.split_once("== ").map_or(line, |(_, t)| t);
        if text.contains("definitely lost in loss record") {
            records.push(String::new());
            in_leak = true;
        } else if text.trim().is_empty() {
            in_leak = false;
        }
        if in_leak {
            if let Some(r) = records.last_mut() {
                r.push_str(line);
                r.push('\n');
            }
        }
    }
    let errors: usize = log
        .lines()
        .find_map(|l| {
            l.split_once("ERROR SUMMARY: ")?
                .1
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(usize::MAX);
    let other_errors = errors > records.len();
    let ours = records
        .into_iter()
        .filter(|r| r.contains("libhandoff") || r.contains("handoff::"))
        .collect();
    (ours, other_errors)
}

fn valgrind() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("valgrind"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "valgrind is not installed, and CI must run the memcheck tests \
             (scripts/setup.sh installs it)"
        );
        eprintln!("valgrind is not installed: skipping the memcheck run of the PHP-level tests");
    }
    found
}

/// The lines of a valgrind log that name our library, for the failure message.
fn our_frames(log: &str) -> String {
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("libhandoff") || l.contains("handoff::") || l.contains("src/"))
        .collect();
    if ours.is_empty() {
        "(no frame in libhandoff.so: the errors are in PHP or libc)".into()
    } else {
        ours.join("\n")
    }
}

#[test]
fn php_level_scripts_are_clean_under_memcheck() {
    let Some(valgrind) = valgrind() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("payload.bin");
    let size = MIB + 17;
    write_random_file(&file, size, 43);
    // A manager, so that the scripts that ask for one find it.
    let socket = dir.path().join("manager.sock");
    let _manager = start_manager(&socket, &dir.path().join("manager.log"));

    let mut scripts: Vec<PathBuf> = fs::read_dir(repo_root().join("php/tests/cli"))
        .expect("read php/tests/cli")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "php"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no PHP-level scripts found");

    let mut failures = Vec::new();
    for script in &scripts {
        let name = script.file_name().unwrap_or_default().to_string_lossy();
        let log = dir.path().join(format!("{name}.memcheck.log"));
        if let Err(e) = run_one(&valgrind, script, &log, dir.path(), &file, &socket) {
            failures.push(format!("==== {name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scripts failed under memcheck:\n{}",
        failures.len(),
        scripts.len(),
        failures.join("\n")
    );
}

/// The `-d` settings and the arguments a PHP-level script needs, as tests/php_level.rs
/// runs it: most need none.
fn how_to_run(script: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match script {
        // It declares its own send_file(), which only handoff.global_functions = Off allows.
        "own_send_file.php" => (&["-d", "handoff.global_functions=Off"], &[]),
        // It describes what the loaded extension registers (or the stubs).
        "describe_api.php" => (&[], &["extension"]),
        _ => (&[], &[]),
    }
}

fn run_one(
    valgrind: &Path,
    script: &Path,
    log: &Path,
    test_dir: &Path,
    file: &Path,
    socket: &Path,
) -> Result<(), String> {
    let name = script.file_name().unwrap_or_default().to_string_lossy();
    let (settings, args) = how_to_run(&name);
    let mut cmd = Command::new(valgrind);
    cmd.args([
        "--tool=memcheck",
        "--error-exitcode=99",
        "--errors-for-leak-kinds=definite",
        "--leak-check=full",
        "--num-callers=40",
        "--track-fds=no",
    ])
    .arg(format!("--log-file={}", log.display()))
    .arg(find_program(&["php"]))
    .arg("-d")
    .arg(format!("extension={}", extension().display()))
    .args(["-d", "display_errors=stderr"])
    .arg("-d")
    .arg(format!("handoff.socket={}", socket.display()))
    .args(settings)
    .arg(script)
    .args(args)
    .env("USE_ZEND_ALLOC", "0")
    .env("ZEND_DONT_UNLOAD_MODULES", "1")
    .env("HANDOFF_TEST_DIR", test_dir)
    .env("HANDOFF_TEST_FILE", file);
    let cmdline = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("run {cmdline}: {e}"))?;
    let report = read_lossy(log);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stdout_shown = if stdout.len() > 2000 {
        format!("<{} bytes>", out.stdout.len())
    } else {
        stdout.to_string()
    };
    let context = || {
        format!(
            "{cmdline}\nexit: {}\nstdout: {stdout_shown}\nstderr:\n{}\nvalgrind log ({}):\n{}\n\
             frames in our code:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            log.display(),
            tail(&report, 200),
            our_frames(&report)
        )
    };
    let name = script.file_name().unwrap_or_default().to_string_lossy();
    if ENDS_IN_BAILOUT.contains(&name.as_ref()) {
        let (ours, other_errors) = our_leaks(&report);
        if !ours.is_empty() || other_errors {
            return Err(format!(
                "memcheck found errors in our code\n{}\nour leaks:\n{}",
                context(),
                ours.join("\n")
            ));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        // 255 from PHP, or valgrind's own code for PHP's leaks.
        let exit_ok = matches!(out.status.code(), Some(255 | ERROR_EXIT));
        if !exit_ok || !stderr.contains("PASS") || stderr.contains("FAIL") {
            return Err(format!("the script failed under valgrind\n{}", context()));
        }
        return Ok(());
    }
    if out.status.code() == Some(ERROR_EXIT) || !report.contains("ERROR SUMMARY: 0 errors") {
        return Err(format!("memcheck found errors\n{}", context()));
    }
    if !out.status.success() {
        return Err(format!("the script failed under valgrind\n{}", context()));
    }
    if stdout.contains("FAIL") {
        return Err(format!("a check failed under valgrind\n{}", context()));
    }
    Ok(())
}

/// The handoff path itself under memcheck: `php -S` (the one SAPI where a test can wrap the
/// PHP process in valgrind) hands a download to the manager, serves the error and
/// flushed-headers pages, and falls back once the manager is gone; then it is stopped with
/// SIGINT, so that PHP shuts down normally and valgrind checks for leaks.
#[test]
fn cli_server_handoff_and_fallback_are_clean_under_memcheck() {
    use std::net::TcpStream;
    use std::time::Duration;

    use crate::util::{curl, docroot, wait_until, Endpoint, Proc};
    use nix::sys::signal::Signal;

    let Some(valgrind) = valgrind() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    for sub in ["data", "results", "client"] {
        fs::create_dir(dir.path().join(sub)).expect("create subdir");
    }
    let size = MIB + 5;
    let sha = write_random_file(&dir.path().join("data/v.bin"), size, 44);
    let socket = dir.path().join("manager.sock");
    let manager = start_manager(&socket, &dir.path().join("manager.log"));

    let addr = free_local_addr();
    let log = dir.path().join("php-server.memcheck.log");
    let mut cmd = Command::new(&valgrind);
    cmd.args([
        "--tool=memcheck",
        "--error-exitcode=99",
        "--errors-for-leak-kinds=definite",
        "--leak-check=full",
        "--num-callers=40",
    ])
    .arg(format!("--log-file={}", log.display()))
    .arg(find_program(&["php"]))
    .arg("-d")
    .arg(format!("extension={}", extension().display()))
    .arg("-d")
    .arg(format!("handoff.socket={}", socket.display()))
    .arg("-S")
    .arg(addr.to_string())
    .arg("-t")
    .arg(docroot())
    .env("USE_ZEND_ALLOC", "0")
    .env("ZEND_DONT_UNLOAD_MODULES", "1")
    .env("HANDOFF_TEST_DIR", dir.path());
    let mut server = Proc::spawn(
        "php -S under valgrind",
        cmd,
        dir.path().join("php-server.out"),
        Signal::SIGKILL,
    );
    let report = |server: &Proc| {
        format!(
            "{}\noutput:\n{}\nvalgrind log:\n{}\nframes in our code:\n{}",
            server.cmdline,
            tail(&server.log_text(), 50),
            tail(&read_lossy(&log), 200),
            our_frames(&read_lossy(&log))
        )
    };
    wait_until(
        "php -S under valgrind",
        Duration::from_secs(120),
        || TcpStream::connect(addr).is_ok(),
        || server.check_alive(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", report(&server)));

    let endpoint = Endpoint::Tcp(addr);
    let client = dir.path().join("client");
    let get = |name: &str, path: &str| curl(&client, name, &endpoint, path).run();
    let result = |name: &str| fs::read_to_string(dir.path().join("results").join(name)).ok();

    let r = get("handed", "/download.php?f=v.bin&result=handed");
    assert_eq!(
        r.body_sha(),
        sha,
        "handed-off download\n{}",
        report(&server)
    );
    wait_until(
        "send_file() result",
        Duration::from_secs(60),
        || result("handed").is_some_and(|s| !s.is_empty()),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result("handed").as_deref(), Some("true"), "handed off");
    let r = curl(&client, "range", &endpoint, "/download.php?f=v.bin")
        .args(&["-r", "10-99"])
        .run();
    assert_eq!((r.status, r.body_len()), (206, 90), "range");
    let r = get("missing", "/missing.php");
    assert_eq!(r.status, 404, "missing file page");
    get("flushed", "/flushed.php?f=v.bin");

    // The manager goes away (SIGKILL): the next download is streamed by PHP itself.
    drop(manager);
    let r = get("fallback", "/download.php?f=v.bin&result=fallback");
    assert_eq!(r.body_sha(), sha, "fallback download\n{}", report(&server));
    wait_until(
        "send_file() result of the fallback",
        Duration::from_secs(60),
        || result("fallback").is_some_and(|s| !s.is_empty()),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result("fallback").as_deref(), Some("false"), "fell back");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        Signal::SIGINT,
    )
    .expect("SIGINT php -S");
    let status = server
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("php -S did not exit on SIGINT\n{}", report(&server)));
    let vg = read_lossy(&log);
    assert!(
        status.code() != Some(ERROR_EXIT) && vg.contains("ERROR SUMMARY: 0 errors"),
        "memcheck found errors (exit {status})\n{}",
        report(&server)
    );
    assert!(
        vg.contains("LEAK SUMMARY") || vg.contains("All heap blocks were freed"),
        "php -S did not reach valgrind's leak check (exit {status})\n{}",
        report(&server)
    );
}
