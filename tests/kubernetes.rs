//! deploy/kubernetes/handoff.yaml validates against the Kubernetes API schemas
//! (kubernetes-validate from PyPI, strict: an unknown field is an error; the schemas ship
//! in the package, scripts/setup.sh installs it) for the oldest version with native
//! sidecars (1.29) and the newest it knows, and keeps the sidecar pattern: php-fpm and the
//! manager in one pod sharing an emptyDir at /run/handoff, the data mounted in php only,
//! the manager mounting nothing else, and the ConfigMap holding the shared deploy/ files
//! unchanged. It starts: the manager is a native sidecar with a startup probe; every
//! container runs as the numeric user its image and docker-compose.yml name, non-root,
//! read-only root, no capabilities, RuntimeDefault seccomp, with probes, requests and
//! limits. No cluster runs here; scripts/compose-test.sh runs the same images with the same
//! users and restrictions under Docker.

use std::path::PathBuf;
use std::process::Command;

use crate::util::repo_root;

/// kubernetes-validate, from $HANDOFF_KUBE_VALIDATE or where scripts/setup.sh puts it.
fn kubernetes_validate() -> PathBuf {
    let venv = std::env::var_os("HANDOFF_KUBE_VALIDATE").map_or_else(
        || PathBuf::from("/opt/handoff/kubernetes-validate-1.37.0"),
        PathBuf::from,
    );
    venv.join("bin/kubernetes-validate")
}

#[test]
fn manifest_validates_against_the_kubernetes_api_schemas() {
    let tool = kubernetes_validate();
    assert!(
        tool.exists(),
        "{} is missing: run scripts/setup.sh",
        tool.display()
    );
    let manifest = repo_root().join("deploy/kubernetes/handoff.yaml");
    for version in ["1.29.0", "1.37.0"] {
        let out = Command::new(&tool)
            .args(["--strict", "--no-warn", "-k", version])
            .arg(&manifest)
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR") && text.matches("passed").count() == 4,
            "deploy/kubernetes/handoff.yaml against Kubernetes {version}:\n{text}"
        );
    }
}

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
containers = {c["name"]: c for c in pod["containers"] + pod.get("initContainers", [])}
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

# It starts: native sidecar first, then php once the manager answers.
sidecars = [c["name"] for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
assert sidecars == ["manager"], f"the manager must be the one native sidecar: {sidecars}"
assert "manager" not in [c["name"] for c in pod["containers"]]
assert pod["securityContext"]["runAsNonRoot"] is True
assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"

# The images' numeric USER lines (docker/Dockerfile) and docker-compose.yml's users.
stages, stage = {}, None
for line in open(repo + "/docker/Dockerfile"):
    words = line.split()
    if words[:1] == ["FROM"]:
        stage = words[-1]
    elif words[:1] == ["USER"]:
        stages[stage] = words[1]
compose = yaml.safe_load(open(repo + "/docker-compose.yml"))["services"]
for name, c in containers.items():
    sc = c.get("securityContext", {})
    user = f"{sc.get('runAsUser')}:{sc.get('runAsGroup')}"
    assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, f"{name}: runAsUser {sc}"
    assert stages.get(name) == user, f"{name}: manifest {user}, image USER {stages.get(name)}"
    assert compose[name]["user"] == user, f"{name}: manifest {user}, compose {compose[name]['user']}"
    assert sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
    assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
    assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities"
    assert compose[name].get("read_only") is True, f"{name}: compose read_only"
    assert compose[name].get("cap_drop") == ["ALL"], f"{name}: compose cap_drop"
    assert "no-new-privileges:true" in compose[name].get("security_opt", []), name
    assert "healthcheck" in compose[name], f"{name}: compose healthcheck"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{name}: {kind}"
    assert "livenessProbe" in c, f"{name}: no livenessProbe"
assert containers["manager"]["startupProbe"]["exec"]["command"][:2] == ["handoff-manager", "health"]
assert "--metrics" in args, "the manager's probe needs --metrics"
assert containers["php"]["readinessProbe"]["exec"]["command"] == ["handoff-php-ping"]
assert "ping.path = /fpm-ping" in open(repo + "/deploy/php-fpm-pool.conf").read()
assert "readinessProbe" in containers["nginx"]
assert "preStop" in containers["nginx"].get("lifecycle", {}), "nginx must drain on termination"
grace = next(int(a) for k, a in zip(args, args[1:]) if k == "--grace")
assert pod["terminationGracePeriodSeconds"] > grace, "no time for the manager's --grace"
assert compose["php"]["depends_on"]["manager"]["condition"] == "service_healthy"
assert compose["nginx"]["depends_on"]["php"]["condition"] == "service_healthy"
print("ok")
"#;

#[test]
fn manifest_keeps_the_sidecar_pattern_and_starts_as_non_root() {
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
