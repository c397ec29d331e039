"""The Dockerfile's images, built and run with podman: what the image promises (non-root, exec
entrypoint, HEALTHCHECK, no compiler, no ImageServer) and what a container of it does (tiles
from the reference ImageServer's container through Redis, probes, a drain on ``podman stop``).
"""

from __future__ import annotations

import asyncio
import io
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import redis
import yaml
from PIL import Image

from gateway.server import SHUTDOWN_TIMEOUT
from tests.conftest import free_port
from tests.deploy.conftest import RunContainer
from tests.deploy.podman import Podman
from tests.integration.conftest import FakeUpstream

pytestmark = pytest.mark.container

CONFIG = "/etc/tile-gateway/config.yaml"
UID = 10001


def wait_healthy(
    podman: Podman, name: str, port: int, timeout: float = 60, path: str = "/healthz"
) -> None:
    """Wait until the container answers ``path`` on ``port`` with 200; fail with its log if it
    exits or does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        state = podman.inspect("container", name)["State"]
        if not state["Running"]:
            break
        time.sleep(0.2)
    logs = podman("logs", name, check=False)
    pytest.fail(f"container {name} did not answer {path} on {port}:\n{logs.stdout}{logs.stderr}")


def gateway_options(config: Path, *extra: str) -> tuple[str, ...]:
    """How a cluster runs the gateway: the config mounted read-only, a read-only root
    filesystem, every capability dropped, no privilege escalation."""
    return (
        "--volume", f"{config}:{CONFIG}:ro",
        "--read-only",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        *extra,
    )  # fmt: skip


def test_image_runs_the_gateway_as_non_root_with_a_healthcheck(
    podman: Podman, gateway_image: str
) -> None:
    image = podman.inspect("image", gateway_image)
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    # Exec form: the server is PID 1 of the container and gets SIGTERM itself.
    assert config["Entrypoint"] == ["tile-gateway", "serve"]
    assert config["Cmd"] == ["--config", CONFIG, "--host", "0.0.0.0"]
    assert "8080/tcp" in config["ExposedPorts"]
    assert "/tmp" in config["Volumes"]
    health = image["Healthcheck"]["Test"]
    assert health[0] == "CMD" and "TILE_GATEWAY_HEALTHCHECK_URL" in health[-1]
    assert any(
        e == "TILE_GATEWAY_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz" for e in config["Env"]
    )


def test_image_has_no_compiler_and_no_reference_imageserver(
    podman: Podman, gateway_image: str
) -> None:
    probe = (
        "import importlib.util, shutil;"
        "print([c for c in ('gcc', 'cc', 'c++', 'make', 'ld') if shutil.which(c)]);"
        "print(importlib.util.find_spec('imageserver'), importlib.util.find_spec('gateway').name)"
    )
    result = podman("run", "--rm", "--network", "host", "--entrypoint", "python3", gateway_image,
                    "-c", probe)  # fmt: skip
    assert result.stdout.split("\n")[:2] == ["[]", "None gateway"]


def test_container_serves_tiles_from_the_imageserver_container_through_redis(
    podman: Podman,
    gateway_image: str,
    imageserver_image: str,
    run_container: RunContainer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    imageserver_port, port = free_port(), free_port()
    imageserver = run_container(
        imageserver_image, "--host", "127.0.0.1", "--port", str(imageserver_port)
    )
    wait_healthy(podman, imageserver, imageserver_port, 90, "/arcgis/rest/services?f=json")
    prefix = f"tg-container-{imageserver_port}"
    config = {
        "server": {"host": "127.0.0.1", "port": 8080, "allowed_hosts": ["127.0.0.1"]},
        "cache": {"redis_url": "${REDIS_URL}", "prefix": prefix},
        "layers": {
            "bluemarble": {
                "url": "${IMAGESERVER_URL}/arcgis/rest/services/bluemarble/ImageServer",
                "formats": ["jpg"],
                "maxzoom": 6,
            }
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # The environment overrides what the mounted file leaves open; --port the file's port.
    name = run_container(
        gateway_image, "--config", CONFIG, "--host", "127.0.0.1", "--port", str(port),
        options=gateway_options(
            tmp_path / "config.yaml",
            "--env", f"REDIS_URL={redis_url}",
            "--env", f"IMAGESERVER_URL=http://127.0.0.1:{imageserver_port}",
            "--env", f"TILE_GATEWAY_HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz",
        ),
    )  # fmt: skip
    wait_healthy(podman, name, port, timeout=90)

    pid = podman.inspect("container", name)["State"]["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(UID)] * 4
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
        b"/opt/tile-gateway/bin/tile-gateway",
        b"serve",
    ]

    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/readyz", timeout=30) as answer:
        ready = yaml.safe_load(answer.read())
    assert ready == {
        "status": "ready",
        "upstreams": {"bluemarble": "ok"},
        "cache": {"backend": "redis", "state": "ok"},
    }
    caches = []
    for _ in range(2):
        with urllib.request.urlopen(f"{base}/tiles/bluemarble/2/1/1.jpg", timeout=60) as answer:
            assert answer.headers["Content-Type"] == "image/jpeg"
            caches.append(answer.headers["X-Cache"])
            tile = Image.open(io.BytesIO(answer.read()))
            assert tile.size == (256, 256)
    assert caches == ["MISS", "HIT"]
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{prefix}:bluemarble:*", count=1000))
    finally:
        client.close()

    # The image's HEALTHCHECK, run the way the runtime runs it.
    assert podman("healthcheck", "run", name, check=False).returncode == 0


async def test_podman_stop_drains_the_requests_in_flight(
    podman: Podman,
    gateway_image: str,
    run_container: RunContainer,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    fake_upstream.behaviour = "slow"  # every exportImage takes 3 s
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "cache": {"backend": "memory"},
        "layers": {"fake": {"url": fake_upstream.url, "formats": ["png"], "meta_size": [4, 4]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    name = run_container(
        gateway_image, "--config", CONFIG, options=gateway_options(tmp_path / "config.yaml")
    )
    await asyncio.to_thread(wait_healthy, podman, name, port)
    async with aiohttp.ClientSession() as session:

        async def get(x: int, y: int) -> int:
            async with session.get(f"http://127.0.0.1:{port}/tiles/fake/3/{x}/{y}.png") as r:
                await r.read()
                return r.status

        # Eight tiles of two 4 x 4 metatiles: two exportImage calls in flight.
        answers = asyncio.gather(*(get(x, y) for x in range(8) for y in range(1)))
        while len(fake_upstream.queries) < 2:
            await asyncio.sleep(0.05)
        stopped = time.monotonic()
        # podman stop sends the image's StopSignal (SIGTERM), then SIGKILL after --time.
        stop = asyncio.to_thread(podman, "stop", "--time", str(int(SHUTDOWN_TIMEOUT) + 10), name)
        statuses, _ = await asyncio.gather(answers, stop)
    assert Counter(statuses) == {200: 8}
    assert time.monotonic() - stopped < SHUTDOWN_TIMEOUT
    state = podman.inspect("container", name)["State"]
    logs = podman("logs", name).stdout + podman("logs", name).stderr
    assert state["ExitCode"] == 0, logs
    assert "Traceback" not in logs
