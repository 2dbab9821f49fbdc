//! deploy/kubernetes/handoff.yaml parses (python3's yaml, as `kubectl` would read it) and
//! keeps the sidecar pattern: php-fpm and the manager in one pod sharing an emptyDir at
//! /run/handoff, the data mounted in php only, the manager mounting nothing else, and the
//! ConfigMap holding the shared deploy/ files unchanged. No cluster runs here.

use std::process::Command;

use crate::util::repo_root;

/// Checks the manifest with python3 + yaml; the script prints what is wrong.
const CHECK: &str = r#"
import sys, yaml
repo = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(repo + "/deploy/kubernetes/handoff.yaml")) if d]
kinds = {d["kind"]: d for d in docs}
for kind in ("ConfigMap", "Deployment", "Service"):
    assert kind in kinds, f"no {kind} in the manifest (have {sorted(kinds)})"
for name, path in (("nginx-site.conf.template", "deploy/nginx-site.conf.template"),
                   ("php-fpm-pool.conf", "deploy/php-fpm-pool.conf")):
    assert kinds["ConfigMap"]["data"][name] == open(repo + "/" + path).read(), \
        f"the ConfigMap's {name} differs from {path}"
pod = kinds["Deployment"]["spec"]["template"]["spec"]
volumes = {v["name"]: v for v in pod["volumes"]}
containers = {c["name"]: c for c in pod["containers"]}
assert {"nginx", "php", "manager"} <= set(containers), sorted(containers)
def mounts(name):
    return {m["mountPath"]: m["name"] for m in containers[name].get("volumeMounts", [])}
for name in ("nginx", "php", "manager"):
    run = mounts(name).get("/run/handoff")
    assert run is not None, f"{name} does not mount /run/handoff"
    assert "emptyDir" in volumes[run], f"{name}'s /run/handoff is not an emptyDir"
assert len({mounts(n)["/run/handoff"] for n in ("nginx", "php", "manager")}) == 1, \
    "the containers do not share one socket directory"
assert list(mounts("manager")) == ["/run/handoff"], \
    f"the manager must mount the socket directory only: {mounts('manager')}"
data = [p for p, v in mounts("php").items() if "persistentVolumeClaim" in volumes[v]]
assert data, "php mounts no data volume"
for name in ("nginx", "manager"):
    assert not [p for p, v in mounts(name).items() if "persistentVolumeClaim" in volumes[v]], \
        f"{name} mounts the data"
env = {e["name"]: e["value"] for e in containers["php"]["env"]}
args = containers["manager"]["args"]
assert env["HANDOFF_SOCKET"] == args[args.index("--socket") + 1], \
    "php's HANDOFF_SOCKET is not the manager's --socket"
print("ok")
"#;

#[test]
fn manifest_parses_and_keeps_the_sidecar_pattern() {
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(repo_root())
        .output()
        .expect("run python3 (scripts/setup.sh installs python3-yaml)");
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "deploy/kubernetes/handoff.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
