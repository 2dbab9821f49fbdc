//! What PHP users install beside the extension: the Composer package (composer.json at the
//! repository root, as Packagist reads it, autoloading php/src) and the IDE /
//! static-analysis stubs in php/stubs, which must declare exactly what the extension
//! registers (`php --re handoff`), so that they cannot drift from it.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::{extension, repo_root};

fn run(mut cmd: Command) -> (String, Output) {
    let line = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("run {line}: {e}"));
    let report = format!(
        "{line}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (report, out)
}

/// Debian's `composer`, with its home in `dir` and no questions.
fn composer(dir: &Path) -> Command {
    let mut cmd = Command::new("composer");
    cmd.args(["--no-interaction", "--no-ansi"])
        .env("COMPOSER_HOME", dir.join("composer-home"))
        .env("COMPOSER_ALLOW_SUPERUSER", "1");
    cmd
}

#[test]
fn composer_json_is_valid_for_packagist() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = composer(dir.path());
    cmd.args(["validate", "--strict"]).current_dir(repo_root());
    let (report, out) = run(cmd);
    assert!(out.status.success(), "{report}");
}

/// Composer's own autoloader, made from composer.json, finds the classes in php/src.
#[test]
fn composer_autoloads_php_src() {
    let dir = tempfile::tempdir().expect("temp dir");
    let project = dir.path().join("project");
    std::fs::create_dir(&project).expect("mkdir project");
    std::fs::copy(
        repo_root().join("composer.json"),
        project.join("composer.json"),
    )
    .expect("copy composer.json");
    std::os::unix::fs::symlink(repo_root().join("php"), project.join("php")).expect("link php/");
    let mut cmd = composer(dir.path());
    cmd.arg("dump-autoload").current_dir(&project);
    let (report, out) = run(cmd);
    assert!(out.status.success(), "{report}");

    // HandoffFileResponse extends Symfony's BinaryFileResponse: Debian's HttpFoundation
    // autoloader provides it, Composer's ours.
    let script = "require 'vendor/autoload.php';
        require '/usr/share/php/Symfony/Component/HttpFoundation/autoload.php';
        echo get_parent_class(Handoff\\Symfony\\HandoffFileResponse::class), \"\\n\";";
    let mut cmd = Command::new("php");
    cmd.args(["-r", script]).current_dir(&project);
    let (report, out) = run(cmd);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Symfony\\Component\\HttpFoundation\\BinaryFileResponse",
        "{report}"
    );
}

/// php/stubs/handoff.stub.php and handoff.ini describe the extension's functions (with
/// their parameters, types and defaults), its class and its ini settings (with default and
/// where they can be set) exactly as the loaded extension reports them.
#[test]
fn stubs_match_the_extension() {
    let describe = repo_root().join("php/tests/cli/describe_api.php");
    let mut cmd = Command::new("php");
    cmd.arg("-n")
        .arg("-d")
        .arg(format!("extension={}", extension().display()))
        .arg(&describe)
        .arg("extension");
    let (report, loaded) = run(cmd);
    assert!(loaded.status.success(), "{report}");
    let mut cmd = Command::new("php");
    cmd.arg("-n").arg(&describe).arg("stubs");
    let (stub_report, stubs) = run(cmd);
    assert!(stubs.status.success(), "{stub_report}");
    let loaded = String::from_utf8_lossy(&loaded.stdout);
    let stubs = String::from_utf8_lossy(&stubs.stdout);
    assert!(
        loaded.lines().count() >= 10 && loaded.contains("function Handoff\\send_file("),
        "{report}"
    );
    assert_eq!(
        stubs, loaded,
        "php/stubs (left) differ from what the extension registers (right)"
    );
}
