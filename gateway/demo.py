"""``tile-gateway demo``: the reference ImageServer as a child process on real imagery, and the
gateway with its in-memory cache in front of it."""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.server import SHUTDOWN_TIMEOUT, PortInUse, serve_forever, start_site, url_host

# Seconds the reference ImageServer may take to listen (it decodes its imagery first).
IMAGESERVER_STARTUP = 120.0
# The folder of GeoTIFFs the demo's CreateImageCollection task reads, relative to the
# current directory (the checkout, under make demo); created when missing.
DEFAULT_RASTER_STORE = "raster-store"


# The demo's token-secured service of the reference ImageServer, and its one user: the
# password is made at each start, handed to the ImageServer in a private file and to the
# gateway in its environment (the demo config's credentials), and never printed.
SECURED_SERVICE = "shadedrelief"
DEMO_USER = "demo"
PASSWORD_VARIABLE = "DEMO_IMAGESERVER_PASSWORD"


def _imageserver_config(folder: str, password: str, raster_store: str) -> str:
    """A reference ImageServer config in ``folder`` (a private temporary directory): the
    built-in services, ``SECURED_SERVICE`` behind ArcGIS Server tokens for ``DEMO_USER``, and
    ``raster_store`` (an absolute path) as the raster store of its CreateImageCollection
    task."""
    path = os.path.join(folder, "imageserver.yaml")
    security = {
        "enabled": True,
        "users": {DEMO_USER: password},
        "secured_services": [SECURED_SERVICE],
    }
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        # JSON is YAML.
        json.dump({"security": security, "raster_store": raster_store}, file)
    return path


async def _start_imageserver(
    host: str, port: int, config: str
) -> tuple[asyncio.subprocess.Process, int]:
    """The reference ImageServer (``python -m imageserver --config config``) as a child
    process listening on ``host``:``port`` (0: a free port), and its port, once it answers.

    It runs as a program of its own, not imported: the gateway never imports it, and its
    rendering keeps off the gateway's event loop. Raises ``SystemExit`` with a message when it
    is not installed, its port is taken, or it ends before listening.
    """
    if importlib.util.find_spec("imageserver") is None:
        raise SystemExit(
            "tile-gateway demo needs the reference ImageServer: "
            "pip install 'tile-gateway[imageserver]'"
        )
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    try:
        # Bound as aiohttp binds (SO_REUSEADDR), so only a listening socket counts as taken.
        probe = socket.create_server((host, port), family=family)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise SystemExit(
            f"tile-gateway demo: the reference ImageServer {PortInUse(host, port)}; choose "
            "another with make demo IMAGESERVER_PORT=<port> "
            "(or tile-gateway demo --imageserver-port <port>)"
        ) from None
    with probe:
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imageserver",
        "--config",
        config,
        "--host",
        host,
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,  # its banner; the demo prints the URLs itself
    )
    deadline = time.monotonic() + IMAGESERVER_STARTUP
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise SystemExit(
                f"tile-gateway demo: the reference ImageServer ended with status "
                f"{process.returncode} before listening on {url_host(host)}:{port}"
            )
        try:
            _, writer = await asyncio.open_connection(url_host(host).strip("[]"), port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return process, port
    process.kill()
    raise SystemExit(
        f"tile-gateway demo: the reference ImageServer did not listen within "
        f"{IMAGESERVER_STARTUP:g} s"
    )


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End a child process: SIGTERM, then SIGKILL if it takes longer than the drain."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()


async def run_demo(
    host: str,
    port: int,
    imageserver_port: int,
    load: Callable[[str], GatewayConfig],
    config_path: str,
    raster_store: str = DEFAULT_RASTER_STORE,
) -> None:
    """Serve the demo until cancelled: the reference ImageServer on ``host``:``imageserver_port``
    as a child process, its ``SECURED_SERVICE`` behind tokens and ``raster_store`` (a folder,
    created if missing) as its raster store, and the gateway of ``load(config_path)`` on
    ``host``:``port`` (0: any free port), with ``${IMAGESERVER_URL}`` set to the child's URL
    and ``${DEMO_IMAGESERVER_PASSWORD}`` to the password made for this run; print the URLs.
    The child is stopped on the way out. Raises ``SystemExit`` with a message saying how to
    choose another port when one is taken, or when ``raster_store`` cannot be a folder.
    """
    password = secrets.token_urlsafe(24)
    store = os.path.abspath(raster_store)
    try:
        os.makedirs(store, exist_ok=True)
    except OSError as exc:
        raise SystemExit(
            f"tile-gateway demo: the raster store {store} cannot be made a folder: "
            f"{exc.strerror or exc}; choose another with make demo RASTER_STORE=<folder> "
            "(or tile-gateway demo --raster-store <folder>)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="tile-gateway-demo-") as folder:
        upstream, upstream_port = await _start_imageserver(
            host, imageserver_port, _imageserver_config(folder, password, store)
        )
        # The gateway's credentials for the secured service; the browser never sees them.
        os.environ[PASSWORD_VARIABLE] = password
        try:
            await _serve_demo(host, port, upstream_port, load, config_path, store)
        finally:
            await _stop(upstream)


async def _serve_demo(
    host: str,
    port: int,
    upstream_port: int,
    load: Callable[[str], GatewayConfig],
    config_path: str,
    raster_store: str,
) -> None:
    """The gateway of ``load(config_path)`` on ``host``:``port`` in front of the child
    ImageServer on ``upstream_port``, until cancelled; the URLs and the raster store
    printed."""
    # The demo config points its layers at ${IMAGESERVER_URL}: the child ImageServer.
    os.environ["IMAGESERVER_URL"] = f"http://{url_host(host)}:{upstream_port}"
    config = load(config_path)
    config = config.model_copy(
        update={"server": config.server.model_copy(update={"host": host, "port": port})}
    )
    try:
        gateway, listening = await start_site(create_app(config), host, port)
    except PortInUse as exc:
        raise SystemExit(
            f"tile-gateway demo: the gateway {exc}; choose another with "
            "make demo PORT=<port> (or tile-gateway demo --port <port>)"
        ) from None
    base = f"http://{url_host(host)}:{listening}"
    print(f"Reference ImageServer: {os.environ['IMAGESERVER_URL']}/arcgis/rest/services")
    print(
        f"Raster store: {raster_store} (its GeoTIFFs are CreateImageCollection uris "
        "/rasterStore/<file>)"
    )
    print(f"Tile URL: {base}/tiles/bluemarble/{{z}}/{{x}}/{{y}}.jpg")
    if config.proxy is not None:
        print(
            f"ArcGIS REST through the gateway: {base}{config.proxy.prefix}/"
            f"{SECURED_SERVICE}/ImageServer (token-secured upstream; the gateway holds "
            "the credential)"
        )
    print(f"Viewer: {base}/", flush=True)
    await serve_forever([gateway])
