"""deploy/k8s, checked offline (no cluster runs here).

- every resource validates against the Kubernetes 1.37 schemas (kubernetes-validate --strict);
- checkov finds nothing that is not fixed or justified in an annotation;
- the kustomization lists every manifest, and the Deployment uses only flags the binary knows,
  with the same registry / replica / state settings as scripts/fleet.sh (the tested fleet).

The two scanners live in their own virtual environment (.venv-k8s, made by scripts/setup.sh
--train): checkov pins versions of packages that conflict with the trainer's.
"""

import json
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
TOOLS = REPO / ".venv-k8s" / "bin"


def resources() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def deployment() -> dict:
    return next(d for d in documents(K8S / "deployment.yaml") if d["kind"] == "Deployment")


def test_every_manifest_validates_against_the_kubernetes_schemas():
    out = subprocess.run(
        [TOOLS / "kubernetes-validate", "--strict", "--kubernetes-version", "1.37.0", *resources()],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # One "passed" line per resource: nothing was skipped as unknown.
    expected = sum(len(documents(p)) for p in resources())
    assert out.stdout.count(" passed ") + out.stderr.count(" passed ") == expected, out.stdout + out.stderr


def test_checkov_has_no_unjustified_finding():
    out = subprocess.run(
        [TOOLS / "checkov", "-d", K8S, "--framework", "kubernetes", "--compact", "--quiet", "--skip-download"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Failed checks: 0" in out.stdout, out.stdout[-4000:]
    # Every skip carries a reason.
    for path in resources():
        for key, value in re.findall(r"checkov\.io/(skip\d+): (.*)", path.read_text()):
            assert "=" in value and len(value.split("=", 1)[1]) > 20, f"{path.name} {key}: {value}"


def test_the_kustomization_names_every_manifest_and_the_secret_the_pods_mount():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == [p.name for p in resources()]
    secret = k["secretGenerator"][0]
    assert (K8S / "admin-token.env.example").read_text().count("MOE_ADMIN_TOKEN=") == 1
    spec = deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["admin-token"]["secret"]["secretName"] == secret["name"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["MOE_ADMIN_TOKEN_FILE"]["value"].endswith("/MOE_ADMIN_TOKEN"), "the env file's key is the file name"


def test_the_deployment_runs_the_tested_fleet_with_flags_the_binary_knows():
    help_text = subprocess.run(
        [REPO / "target" / "release" / "moe", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    known = set(re.findall(r"env: (MOE_[A-Z_]+)", help_text))
    spec = deployment()["spec"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    moe_env = {name for name in env if name.startswith("MOE_")}
    assert moe_env <= known, f"unknown to `moe serve`: {moe_env - known}"
    # The settings scripts/fleet.sh (and tests/fleet.rs) give every replica.
    fleet = (REPO / "scripts" / "fleet.sh").read_text()
    for name in ["MOE_REGISTRY", "MOE_REPLICA_ID", "MOE_STATE", "MOE_MODELS", "MOE_ADMIN_TOKEN"]:
        assert name in fleet, name
        assert any(n.startswith(name) for n in env), name
    assert env["MOE_REGISTRY"]["value"].startswith("etcd://moe-etcd:2379/")
    assert env["MOE_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Probes on the service's own routes; a drain shorter than the grace period.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    drain_s = int(env["MOE_SHUTDOWN_DRAIN_MS"]["value"]) / 1000
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > drain_s + pre_stop_s
    assert spec["replicas"] == 3
    # The model root is shared by every replica.
    pvc = documents(K8S / "models-pvc.yaml")[0]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def image_settings() -> dict:
    """The final stage of the Dockerfile: its USER, EXPOSE, VOLUME, ENV and HEALTHCHECK path."""
    lines = (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    found: dict = {"env": {}}
    for line in final:
        word, _, rest = line.partition(" ")
        if word == "ENV":
            found["env"].update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        elif word in ("USER", "EXPOSE", "WORKDIR"):
            found[word.lower()] = rest.strip()
        elif word == "VOLUME":
            found["volumes"] = json.loads(rest)
        elif word == "HEALTHCHECK":
            found["health_path"] = re.search(r"GET (/\w+) ", rest).group(1)
    return found


def test_the_deployment_matches_the_image_it_runs():
    image = image_settings()
    help_text = subprocess.run(
        [REPO / "target" / "release" / "moe", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags_env = set(re.findall(r"env: ([A-Z_]+)", help_text))
    routes = yaml.safe_load((REPO / "openapi.yaml").read_text())["paths"]
    pod = deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Every variable is a flag of `moe serve`, or one that another variable's value refers to.
    referenced = {n for v in env.values() if v for n in re.findall(r"\$\((\w+)\)", v)}
    assert set(env) - referenced <= flags_env, set(env) - referenced - flags_env
    # The port the service listens on is the one the image exposes and the probes and Service use.
    port = int(env.get("MOE_PORT") or image["env"]["MOE_PORT"])
    assert port == int(image["expose"]) == container["ports"][0]["containerPort"]
    service = documents(K8S / "service.yaml")[0]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == container["ports"][0]["name"] and get["path"] in routes, (probe, get)
    assert container["readinessProbe"]["httpGet"]["path"] == image["health_path"]
    # The image's user, not root.
    user, group = (int(x) for x in image["user"].split(":"))
    context = pod["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (user, group, True)
    # A read-only root: every folder the service writes (its model root and state) is a volume,
    # at the image's own paths, and the seed copies the image's experts into the models volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for name in ("MOE_MODELS", "MOE_STATE"):
        assert env[name] == image["env"][name], name
        assert env[name] in mounts, f"{name}={env[name]} is not a volume"
    assert image["env"]["MOE_STATE"] in image["volumes"]
    assert mounts[env["MOE_MODELS"]] == "models" and mounts[env["MOE_STATE"]] == "state"
    seed = pod["initContainers"][0]
    seed_mount = seed["volumeMounts"][0]
    assert seed_mount["name"] == "models"
    assert f"cp -a {image['env']['MOE_MODELS']}/. {seed_mount['mountPath']}/" in seed["command"][-1]
    assert env["MOE_ADMIN_TOKEN_FILE"].startswith(
        next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "admin-token")
    )
