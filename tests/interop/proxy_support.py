"""What the reverse-proxy tests share: a token-secured reference ImageServer as a real process,
credential providers for it, and a gateway process whose configured credentials hold its API
key.

The providers speak the ``sources.http.Credentials`` protocol to the real token service of the
reference ImageServer (``generateToken``) or send one of its API keys; the gateway's own
providers (``gateway/credentials``) plug into the same protocol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.sources.http import UpstreamRequest
from tests.conftest import DATA, free_port, wait_for_port

USER, PASSWORD = "proxy-user", "proxy-password-0123"
API_KEY = "proxy-test-api-key-0123456789abcdef"
API_KEY_VARIABLE = "PROXY_TEST_API_KEY"


@dataclass
class SecuredImageServer:
    """The reference ImageServer with token security: ``services`` is its services root;
    ``rgb`` (RGB.byte.tif) needs a token, ``dtm`` is public."""

    root: str

    @property
    def services(self) -> str:
        return f"{self.root}/arcgis/rest/services"

    @property
    def token_url(self) -> str:
        return f"{self.root}/arcgis/tokens/generateToken"


@pytest.fixture(scope="session")
def secured_imageserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredImageServer]:
    """The secured reference ImageServer as a real process, for the whole session."""
    workdir = tmp_path_factory.mktemp("secured-imageserver")
    config, log = workdir / "imageserver.yaml", workdir / "imageserver.log"
    config.write_text(
        yaml.safe_dump(
            {
                "builtin": False,
                "services": {
                    "rgb": {"path": str(DATA / "RGB.byte.tif")},
                    "dtm": {"path": str(DATA / "dtm.tif")},
                },
                "security": {
                    "enabled": True,
                    "users": {USER: PASSWORD},
                    "api_keys": [API_KEY],
                    "secured_services": ["rgb"],
                    "token_lifetime": 600,
                },
            }
        )
    )
    port = free_port()
    command = [sys.executable, "-m", "imageserver", "--config", str(config), "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    wait_for_port(port, process, log, timeout=60)
    try:
        yield SecuredImageServer(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class GeneratedToken:
    """A server token from ``generateToken`` (POST, ``client=requestip``), fetched again when
    ArcGIS rejects it. ``token`` starts as given (a stale one, to see the refresh);
    ``issued`` counts the tokens fetched."""

    token_url: str
    token: str = "stale-token-that-the-server-never-issued"
    issued: int = 0
    sent: list[str] = field(default_factory=list)

    async def apply(self, request: UpstreamRequest) -> None:
        request.params["token"] = self.token
        self.sent.append(self.token)

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        form = {"username": USER, "password": PASSWORD, "client": "requestip", "f": "json"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.token_url, data=form) as response,
        ):
            answer = json.loads(await response.text())
        self.token = answer["token"]
        self.issued += 1
        return True


def fetch_token(server: SecuredImageServer) -> str:
    """A token for the secured ``rgb`` service, bound to the caller's address."""
    form = urllib.parse.urlencode(
        {"username": USER, "password": PASSWORD, "client": "requestip", "f": "json"}
    ).encode()
    with urllib.request.urlopen(server.token_url, data=form, timeout=30) as response:
        return str(json.loads(response.read())["token"])


def proxy_config(server: SecuredImageServer, **proxy: Any) -> dict[str, Any]:
    """A gateway config (YAML tree) whose proxy serves ``rgb`` and ``dtm`` of ``server`` at
    ``/arcgis/rest/services/<name>/ImageServer``, with the credential set ``arcgis`` (the API
    key in ``$PROXY_TEST_API_KEY``, unless a test passes its own providers to ``create_app``)."""
    return {
        # The gateway's own provider of the set: the API key, read from the environment.
        "credentials": {"arcgis": {"type": "static", "token_env": API_KEY_VARIABLE}},
        "layers": {"dtm": {"url": f"{server.services}/dtm/ImageServer", "formats": ["png"]}},
        "proxy": {
            "services": [
                {
                    "path": "",
                    "url": server.services,
                    "credentials": "arcgis",
                    "allow": ["rgb/ImageServer", "dtm/ImageServer"],
                },
            ],
            **proxy,
        },
    }


def start_proxy_gateway(
    config: dict[str, Any], workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """``tile-gateway serve`` of ``config`` as a real process, with the test API key in its
    environment for the credential set ``arcgis``; returns it and its base URL."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(config))
    log = workdir / "gateway.log"
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(workdir / "gateway.yaml")]
    env = {**os.environ, API_KEY_VARIABLE: API_KEY}
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    wait_for_port(port, process, log, timeout=60)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def proxy_gateway_url(
    secured_imageserver: SecuredImageServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of a gateway process proxying the secured ImageServer with its API key."""
    process, url = start_proxy_gateway(
        proxy_config(secured_imageserver), tmp_path_factory.mktemp("proxy-gateway")
    )
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)
