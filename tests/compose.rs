//! docker-compose.yml is valid and uses the shared deploy/ configs.
//!
//! Runs `docker-compose config` (no Docker engine needed). Included from tests/tests.rs as
//! `mod compose;` and self-contained: it uses nothing but std.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `docker-compose -f REPO/docker-compose.yml ARGS`, or returns None when docker-compose
/// is not installed and the test may be skipped (outside CI only).
fn compose(args: &[&str]) -> Option<Output> {
    let file = repo_root().join("docker-compose.yml");
    match Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .args(args)
        .current_dir(repo_root())
        .env_remove("HANDOFF_PORT")
        .output()
    {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED compose test: docker-compose is not installed \
                 (scripts/setup.sh installs it; in CI this test must run)"
            );
            None
        }
        Err(e) => panic!("cannot run docker-compose: {e} (scripts/setup.sh installs it)"),
    }
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "docker-compose {what} failed with {}:\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the resolved config mounts `source` (a host path relative to the repo, or a volume
/// name) at a target that starts with `target_prefix`. Handles the short syntax of
/// docker-compose v1 (`SRC:TARGET:ro`) and the long one of v2 (`source:` / `target:` lines).
fn mounts(config: &str, source: &str, target_prefix: &str) -> bool {
    let abs = repo_root().join(source).to_string_lossy().into_owned();
    let lines: Vec<&str> = config.lines().map(str::trim).collect();
    lines.iter().enumerate().any(|(i, line)| {
        let short = [
            format!("{abs}:"),
            format!("{source}:"),
            format!("./{source}:"),
        ];
        if let Some(rest) = short
            .iter()
            .find_map(|p| line.trim_start_matches("- ").strip_prefix(p.as_str()))
        {
            return rest.starts_with(target_prefix);
        }
        let long = [format!("source: {abs}"), format!("source: {source}")];
        if long
            .iter()
            .any(|p| line.trim_start_matches("- ") == p.as_str())
        {
            return lines[i.saturating_sub(3)..(i + 4).min(lines.len())]
                .iter()
                .any(|l| l.starts_with(&format!("target: {target_prefix}")));
        }
        false
    })
}

#[test]
fn compose_config_is_valid_and_mounts_the_deploy_files() {
    assert!(
        repo_root().join("docker-compose.yml").is_file(),
        "docker-compose.yml is missing at the repository root"
    );
    let Some(out) = compose(&["config"]) else {
        return;
    };
    let config = stdout_of(&out, "config");

    assert!(
        mounts(
            &config,
            "deploy/nginx-site.conf.template",
            "/etc/nginx/templates/"
        ),
        "deploy/nginx-site.conf.template is not mounted into /etc/nginx/templates/:\n{config}"
    );
    assert!(
        mounts(
            &config,
            "deploy/php-fpm-pool.conf",
            "/usr/local/etc/php-fpm.d/"
        ),
        "deploy/php-fpm-pool.conf is not mounted into /usr/local/etc/php-fpm.d/:\n{config}"
    );
    assert!(
        mounts(&config, "handoff-run", "/run/handoff"),
        "the handoff-run volume is not mounted at /run/handoff:\n{config}"
    );

    let out = compose(&["config", "--services"]).expect("docker-compose ran a moment ago");
    let services = stdout_of(&out, "config --services");
    let services: Vec<&str> = services.lines().map(str::trim).collect();
    for name in ["nginx", "php", "manager"] {
        assert!(
            services.contains(&name),
            "service {name} is missing from docker-compose.yml (have {services:?})"
        );
    }
}
