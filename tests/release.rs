//! What a release carries: one version, reported alike by the extension and the manager
//! (they speak a versioned protocol and must come from the same release), a changelog entry
//! for it, and the licence the manifests name.

use std::process::Command;

use crate::util::{extension, manager_binary, repo_root};

/// `version` of `[workspace.package]` in the top-level Cargo.toml, which every crate
/// inherits.
fn workspace_version() -> String {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let section = manifest
        .split("\n[")
        .find(|s| s.starts_with("workspace.package]"))
        .expect("Cargo.toml has no [workspace.package] section");
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("[workspace.package] has no version")
}

/// Runs a command and returns its stdout, or panics with everything it printed.
fn stdout_of(cmd: &mut Command) -> String {
    let cmdline = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmdline}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmdline}\nexit: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn extension_and_manager_report_the_workspace_version() {
    let version = workspace_version();
    let php = stdout_of(
        Command::new("php")
            .arg("-n")
            .arg("-d")
            .arg(format!("extension={}", extension().display()))
            .args(["-r", "echo phpversion('handoff');"]),
    );
    assert_eq!(php, version, "phpversion('handoff')");
    let manager = stdout_of(Command::new(manager_binary()).arg("--version"));
    assert_eq!(
        manager.trim(),
        format!("handoff-manager {version}"),
        "handoff-manager --version"
    );
}

#[test]
fn changelog_and_licence_cover_the_release() {
    let version = workspace_version();
    let changelog =
        std::fs::read_to_string(repo_root().join("CHANGELOG.md")).expect("CHANGELOG.md");
    assert!(
        changelog
            .lines()
            .any(|l| l.starts_with(&format!("## [{version}]"))),
        "CHANGELOG.md has no \"## [{version}]\" entry"
    );
    let licence = std::fs::read_to_string(repo_root().join("LICENSE")).expect("LICENSE");
    assert!(licence.starts_with("MIT License\n"), "LICENSE is not MIT");
    for crate_dir in ["", "core/", "manager/", "stack/", "bench/client/"] {
        let manifest = std::fs::read_to_string(repo_root().join(crate_dir).join("Cargo.toml"))
            .expect("Cargo.toml");
        assert!(
            manifest.contains("\nversion.workspace = true\n")
                && manifest.contains("\nlicense.workspace = true\n"),
            "{crate_dir}Cargo.toml does not inherit the workspace's version and licence"
        );
    }
}
