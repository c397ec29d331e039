"""k8s/: every overlay renders with kustomize, validates against the Kubernetes schemas offline
and passes checkov's policies; the base Deployment, run the way a kubelet runs it, is served by
the gateway on the ports and probe paths it names."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.server import SHUTDOWN_TIMEOUT
from tests.deploy.conftest import RunContainer
from tests.deploy.podman import REPO, Podman

pytestmark = pytest.mark.kubernetes

OVERLAYS = ["base", "overlays/redis", "overlays/sidecar", "overlays/reverse-proxy"]
# The Kubernetes release the manifests are validated against (the oldest one they target).
KUBERNETES_VERSION = "1.33.0"
BIN = Path(sys.executable).parent
# install-test-deps.sh puts checkov in a virtualenv of its own inside the test one.
CHECKOV = Path(sys.prefix) / "checkov" / "bin" / "checkov"


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize k8s/<overlay>`` renders."""
    result = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(REPO / "k8s" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, prefix: str = "") -> dict[str, Any]:
    """The single object of ``kind`` whose name starts with ``prefix``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_schemas(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION,
         str(rendered)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # Every object lands in a namespace of its own, never "default".
    assert {o["metadata"].get("namespace") for o in objects} <= {"tile-gateway", "map-app"}


def test_checkov_finds_nothing_in_any_overlay(tmp_path: Path) -> None:
    assert CHECKOV.exists(), "checkov lives in .venv/checkov: run scripts/install-test-deps.sh"
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay.replace('/', '-')}.yaml").write_text(
            yaml.safe_dump_all(render(overlay))
        )
    # Offline: no guidelines download; every failed check counts (open-source checkov has no
    # severities), skips only by an annotation giving the reason.
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(tmp_path), "--framework", "kubernetes",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(result.stdout)
    failed = [
        (c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert report["summary"]["passed"] > 200
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped == {"CKV_K8S_35", "CKV_K8S_43"}


def test_reverse_proxy_config_names_its_public_address_and_trusts_the_ingress() -> None:
    objects = render("overlays/reverse-proxy")
    config = yaml.safe_load(one(objects, "ConfigMap", "tile-gateway-config")["data"]["config.yaml"])
    assert config["server"]["public_url"] == "https://tiles.example.org/"
    assert config["server"]["trust_proxy"] is True
    host = one(objects, "Ingress")["spec"]["rules"][0]["host"]
    assert config["server"]["allowed_hosts"] == [host]
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


def test_redis_overlay_is_a_cache_with_lru_eviction() -> None:
    objects = render("overlays/redis")
    redis = one(objects, "Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert args[args.index("--save") + 1] == ""
    gateway = one(objects, "Deployment", "tile-gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in gateway["containers"][0]["env"]}
    service = one(objects, "Service", "redis")
    assert env["REDIS_URL"] == f"redis://{service['metadata']['name']}:6379/0"


def probe_status(podman: Podman, container: str, url: str, host: str = "") -> int:
    """The status of ``GET url`` (with ``Host: host`` when given) asked from inside
    ``container``'s network namespace (the pod's, where a kubelet's probe arrives), 0 when
    nothing answers."""
    script = (
        "import sys, urllib.error, urllib.request\n"
        "try:\n"
        "    headers = {'Host': sys.argv[2]} if sys.argv[2] else {}\n"
        "    request = urllib.request.Request(sys.argv[1], headers=headers)\n"
        "    print(urllib.request.urlopen(request, timeout=10).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
        "except OSError:\n"
        "    print(0)\n"
    )
    result = podman("exec", container, "python3", "-c", script, url, host)
    return int(result.stdout.strip())


@pytest.mark.container
def test_the_base_deployment_runs_as_a_kubelet_would_run_it(
    podman: Podman,
    gateway_image: str,
    imageserver_image: str,
    run_container: RunContainer,
    tmp_path: Path,
) -> None:
    objects = render("base")
    deployment = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = deployment["containers"][0]
    config_map = one(objects, "ConfigMap", "tile-gateway-config")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config["server"]["port"]}
    service = one(objects, "Service")["spec"]["ports"][0]
    assert service["targetPort"] in ports
    # The drain fits in the grace period after the preStop pause.
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert deployment["terminationGracePeriodSeconds"] >= pause + SHUTDOWN_TIMEOUT

    # The pod: the reference ImageServer stands for the ArcGIS Server, its bluemarble service
    # secured for the user the Deployment names; the gateway joins its network namespace.
    env = {e["name"]: e for e in container["env"]}
    password = secrets.token_urlsafe(16)
    security = {
        "security": {
            "enabled": True,
            "users": {env["ARCGIS_USERNAME"]["value"]: password},
            "secured_services": ["bluemarble"],
        }
    }
    (tmp_path / "imageserver.yaml").write_text(json.dumps(security))
    mount = f"{tmp_path / 'imageserver.yaml'}:/etc/imageserver.yaml:ro"
    pod = run_container(
        imageserver_image, "--config", "/etc/imageserver.yaml", "--host", "127.0.0.1",
        "--port", "8081", options=("--network", "none", "--volume", mount),
    )  # fmt: skip

    services = "http://127.0.0.1:8081/arcgis/rest/services?f=json"
    deadline = time.monotonic() + 90
    while probe_status(podman, pod, services) != 200:
        assert time.monotonic() < deadline, podman("logs", pod, check=False).stderr
        time.sleep(0.5)

    volumes = {v["name"]: v for v in deployment["volumes"]}
    options = ["--network", f"container:{pod}", "--cap-drop", "ALL"]
    security_context = {**deployment["securityContext"], **container["securityContext"]}
    options += ["--user", f"{security_context['runAsUser']}:{security_context['runAsGroup']}"]
    if security_context["readOnlyRootFilesystem"]:
        options.append("--read-only")
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        folder = tmp_path / mount["name"]
        folder.mkdir()
        if "configMap" in volume:
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]
            for key, text in config_map["data"].items():
                (folder / key).write_text(text)
        elif "secret" in volume:
            for item in volume["secret"]["items"]:
                assert item["key"] == "arcgis-password"
                (folder / item["path"]).write_text(password)
        else:
            assert "emptyDir" in volume
            options += ["--tmpfs", mount["mountPath"]]
            continue
        folder.chmod(0o755)
        for file in folder.iterdir():
            file.chmod(0o644)
        options += ["--volume", f"{folder}:{mount['mountPath']}:ro"]
    # What an overlay sets per site: the upstream. The rest is the rendered environment.
    values = {"IMAGERY_URL": "http://127.0.0.1:8081/arcgis/rest/services/bluemarble/ImageServer"}
    for name, entry in env.items():
        value = values.get(name, entry.get("value", "test-admin-token"))
        options += ["--env", f"{name}={value}"]
    if "command" in container:
        options += ["--entrypoint", json.dumps(container["command"])]
    gateway = run_container(gateway_image, *container.get("args", []), options=tuple(options))

    def url(probe: dict[str, Any]) -> str:
        http = probe["httpGet"]
        return f"http://127.0.0.1:{ports[http['port']]}{http['path']}"

    startup = container["startupProbe"]
    deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
    while probe_status(podman, gateway, url(startup)) != 200:
        if time.monotonic() > deadline:
            logs = podman("logs", gateway, check=False)
            pytest.fail(f"the startup probe never passed:\n{logs.stdout}{logs.stderr}")
        time.sleep(1)
    for probe in ("livenessProbe", "readinessProbe"):
        assert probe_status(podman, gateway, url(container[probe])) == 200, probe
    # A tile of the configured layer, its token got with the password file of the Secret, asked
    # by the Service's name (the probes' pod address is exempt from allowed_hosts, clients not).
    layer = next(iter(config["layers"]))
    tile = f"http://127.0.0.1:{ports['http']}/tiles/{layer}/1/0/0.jpg"
    assert probe_status(podman, gateway, tile) == 400
    name = one(objects, "Service")["metadata"]["name"]
    assert probe_status(podman, gateway, tile, host=name) == 200
