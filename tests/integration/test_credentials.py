"""Upstream credentials against the reference ImageServer secured with tokens, run as a real
process on a socket: each provider's flow (static token / API key, ArcGIS Server and portal
generateToken with the federated exchange, OAuth 2.0 client credentials) through every front;
renewal ahead of expiry and after a rejection (498 as JSON, HTTP status or HTML page) under
200 concurrent requests; a failing token service; seeding; check-config refusing a secret in
plain text. Every response and log line a test sees is scanned for the tokens and secrets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.seed import SeedOptions, run_seed
from gateway.services.http.fronts import PIPELINE
from gateway.sources.http import UpstreamRequest
from tests.conftest import DATA, REPO, free_port, wait_for_port

PASSWORD = f"pw-{secrets.token_hex(8)}"
APP_ID = "tg-test-app"
APP_SECRET = f"app-secret-{secrets.token_hex(8)}"
API_KEY = f"api-key-{secrets.token_hex(8)}"
SECRETS = (PASSWORD, APP_SECRET, API_KEY)
REFERER = "https://maps.example.org/viewer"
LAYER = "secure"
# The tokens each renewal asks for, per token service of the reference ImageServer.
SERVER, PORTAL, OAUTH2 = (
    "tokens/generateToken",
    "sharing/rest/generateToken",
    "sharing/rest/oauth2/token",
)
BURST = 200

# Credentials of each provider flow, and the tokens one renewal of it is issued (the portal
# exchange is a second generateToken call at the portal).
FLOWS: dict[str, tuple[dict[str, Any], Counter[str]]] = {
    "static-env-param": ({"type": "static", "token_env": "TG_TEST_API_KEY"}, Counter()),
    "static-file-header": (
        {"type": "static", "token_file": "{api_key_file}", "send_as": "header"},
        Counter(),
    ),
    "server-discovered-requestip": (
        {"type": "server", "username": "alice", "password_env": "TG_TEST_PASSWORD"},
        Counter({SERVER: 1}),
    ),
    "server-referer-header": (
        {
            "type": "server",
            "url": "{root}/tokens/generateToken",
            "username": "alice",
            "password_file": "{password_file}",
            "client": "referer",
            "referer": REFERER,
            "expiration": 60,
            "send_as": "header",
        },
        Counter({SERVER: 1}),
    ),
    "portal-federated-exchange": (
        {
            "type": "portal",
            "username": "alice",
            "password_env": "TG_TEST_PASSWORD",
            "exchange": True,
        },
        Counter({PORTAL: 2}),
    ),
    "portal-online-header": (
        {
            "type": "portal",
            "url": "{root}/sharing/rest/generateToken",
            "username": "alice",
            "password_env": "TG_TEST_PASSWORD",
            "referer": REFERER,
            "send_as": "header",
        },
        Counter({PORTAL: 1}),
    ),
    "oauth2-federated": (
        {"type": "oauth2", "client_id": APP_ID, "client_secret_env": "TG_TEST_APP_SECRET"},
        Counter({OAUTH2: 1}),
    ),
    "oauth2-exchange-header": (
        {
            "type": "oauth2",
            "url": "{root}/sharing/rest/oauth2/token",
            "client_id": APP_ID,
            "client_secret_file": "{app_secret_file}",
            "exchange": True,
            "send_as": "header",
        },
        Counter({OAUTH2: 1, PORTAL: 1}),
    ),
}
# Flows that discover their token service need a server that names the right one.
FEDERATED_FLOWS = {"portal-federated-exchange", "oauth2-federated"}


class SecuredImageServer:
    """``python -m imageserver`` serving ``rgb`` (RGB.byte.tif) behind token security with
    the test's user, app and API key, tokens living ``lifetime`` seconds, 498/499 answered
    in ``style``; ``restart`` forgets every token issued, as a restarted ArcGIS Server does."""

    def __init__(self, workdir: Path, lifetime: float, style: str, federated: bool) -> None:
        self.port = free_port()
        self.config = workdir / "imageserver.yaml"
        self.log = workdir / "imageserver.log"
        settings = {
            "builtin": False,
            "services": {"rgb": {"path": str(DATA / "RGB.byte.tif")}},
            "security": {
                "enabled": True,
                "users": {"alice": PASSWORD},
                "apps": {APP_ID: APP_SECRET},
                "api_keys": [API_KEY],
                "token_lifetime": lifetime,
                "token_errors": style,
                "federated": federated,
                "stats_endpoint": True,
            },
        }
        self.config.write_text(yaml.safe_dump(settings))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}/arcgis"

    @property
    def service_url(self) -> str:
        return f"{self.root}/rest/services/rgb/ImageServer"

    def start(self) -> None:
        command = [sys.executable, "-m", "imageserver", "--config", str(self.config)]
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)], stdout=output, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, self.process, self.log, timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stats(self) -> tuple[Counter[str], Counter[str]]:
        """Tokens issued per token service, and requests refused per code ("498", "499")."""
        url = f"http://127.0.0.1:{self.port}/_test/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.loads(response.read())
        return Counter(document["tokensIssued"]), Counter(document["refused"])


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, SecuredImageServer]]:
    """Two long-lived token servers, by ``federated``: a stand-alone ArcGIS Server and one
    federated with its portal (tokens live 120 s: no renewal within a test)."""
    started = {}
    try:
        for federated in (False, True):
            server = SecuredImageServer(tmp_path_factory.mktemp("secured"), 120, "json", federated)
            server.start()
            started[federated] = server
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., SecuredImageServer]]:
    """``make_server(lifetime, style, federated=False)``: a token server of this test's own."""
    made: list[SecuredImageServer] = []

    def make(lifetime: float, style: str = "json", federated: bool = False) -> SecuredImageServer:
        workdir = tmp_path / f"server{len(made)}"
        workdir.mkdir()
        server = SecuredImageServer(workdir, lifetime, style, federated)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


class Seen:
    """Every response a test received (status, headers, body) and every token the gateway
    held, for the final scan."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, list[tuple[str, str]], bytes]] = []
        self.tokens: set[str] = set()

    async def get(
        self, client: TestClient, path: str, params: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        response = await client.get(path, params=params)
        body = await response.read()
        self.responses.append((response.status, list(response.headers.items()), body))
        return response.status, response.content_type, body

    async def hold(self, client: TestClient) -> None:
        """Note the token the gateway's layer holds now, as it would send it."""
        upstream = client.server.app[PIPELINE].layers[LAYER].client.upstream
        request = UpstreamRequest("", {})
        await upstream.credentials.apply(request)
        token = request.params.get("token") or request.headers["X-Esri-Authorization"][7:]
        self.tokens.add(token)

    def scan(self, caplog: pytest.LogCaptureFixture, *more: str) -> None:
        """Assert that no test secret and no token held is in any response or log record."""
        needles = {*SECRETS, *self.tokens, *more}
        assert self.responses
        for status, headers, body in self.responses:
            for needle in needles:
                assert needle.encode() not in body, (status, body[:300])
                assert not [pair for pair in headers if needle in pair[0] or needle in pair[1]]
        assert caplog.records
        for record in caplog.records:
            text = f"{record.getMessage()} {record.exc_text or ''}"
            for needle in needles:
                assert needle not in text, text


@pytest.fixture
def seen(caplog: pytest.LogCaptureFixture) -> Seen:
    caplog.set_level(logging.DEBUG)
    return Seen()


@pytest.fixture
def secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test secrets in environment variables and in files (as a Kubernetes Secret
    mount holds them: no trailing newline, except the password, written as echo does)."""
    monkeypatch.setenv("TG_TEST_PASSWORD", PASSWORD)
    monkeypatch.setenv("TG_TEST_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("TG_TEST_API_KEY", API_KEY)
    files = {
        "password_file": PASSWORD + "\n",
        "app_secret_file": APP_SECRET,
        "api_key_file": API_KEY,
    }
    paths = {}
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        paths[name] = str(path)
    return paths


MakeGateway = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def gateway(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    secret_files: dict[str, str],
) -> AsyncIterator[MakeGateway]:
    """``await gateway(server, credentials)``: an in-process gateway on a socket with layer
    ``secure`` (``rgb``, PNG, one tile per exportImage call) naming ``credentials``, whose
    ``{root}`` and ``{<name>_file}`` placeholders are filled in."""

    async def make(
        server: SecuredImageServer, credentials: dict[str, Any], **layer: Any
    ) -> TestClient:
        filled = {
            key: value.format(root=server.root, **secret_files) if isinstance(value, str) else value
            for key, value in credentials.items()
        }
        config = parse_config(
            {
                "server": {
                    # Every request of a burst meets the token at once.
                    "max_concurrent_exports": BURST,
                    "max_queued_exports": 1000,
                    "export_queue_timeout": 120,
                    "upstream_timeout": 60,
                },
                "credentials": {"upstream": filled},
                "layers": {
                    LAYER: {
                        "url": server.service_url,
                        "credentials": "upstream",
                        "formats": ["png"],
                        "meta_size": [1, 1],
                        "maxzoom": 14,
                        **layer,
                    }
                },
            }
        )
        return await aiohttp_client(create_app(config))

    yield make


def tiles_with_data(client: TestClient, z: int, count: int) -> list[tuple[int, int]]:
    """``count`` (col, row) WebMercatorQuad tiles of TileMatrix ``z`` over the layer's data."""
    layer = client.server.app[PIPELINE].layers[LAYER]
    limits = layer.limits(layer.grids["WebMercatorQuad"], z)
    assert limits is not None
    min_col, max_col, min_row, max_row = limits
    tiles = [(x, y) for y in range(min_row, max_row + 1) for x in range(min_col, max_col + 1)]
    assert len(tiles) >= count
    return tiles[:count]


def assert_png(answer: tuple[int, str, bytes]) -> None:
    status, content_type, body = answer
    assert (status, content_type) == (200, "image/png"), body[:300]
    assert body.startswith(b"\x89PNG")


async def burst(seen: Seen, client: TestClient, tiles: list[tuple[int, int]], z: int) -> None:
    """Ask every tile at once; every one must be a PNG."""
    answers = await asyncio.gather(
        *(seen.get(client, f"/tiles/{LAYER}/{z}/{x}/{y}.png") for x, y in tiles)
    )
    failed = [(*answer[:2], answer[2][:200]) for answer in answers if answer[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} failed, e.g. {failed[0]}"
    for answer in answers:
        assert_png(answer)


@pytest.mark.parametrize("flow", FLOWS)
async def test_every_front_serves_tiles_of_a_secured_layer(
    flow: str,
    servers: dict[bool, SecuredImageServer],
    gateway: MakeGateway,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    credentials, per_renewal = FLOWS[flow]
    server = servers[flow in FEDERATED_FLOWS]
    issued_before, refused_before = server.stats()
    client = await gateway(server, credentials)
    (x0, y0), (x1, y1), (x2, y2), (x3, y3), (x4, y4) = tiles_with_data(client, 10, 5)

    assert_png(await seen.get(client, f"/tiles/{LAYER}/10/{x0}/{y0}.png"))
    get_tile = {
        "SERVICE": "WMTS",
        "REQUEST": "GetTile",
        "VERSION": "1.0.0",
        "LAYER": LAYER,
        "STYLE": "default",
        "FORMAT": "image/png",
        "TILEMATRIXSET": "WebMercatorQuad",
        "TILEMATRIX": "10",
        "TILEROW": str(y1),
        "TILECOL": str(x1),
    }
    assert_png(await seen.get(client, "/wmts", get_tile))
    rest = f"/wmts/1.0.0/{LAYER}/default/WebMercatorQuad/10/{y2}/{x2}.png"
    assert_png(await seen.get(client, rest))
    ogc = f"/ogcapi/collections/{LAYER}/map/tiles/WebMercatorQuad/10/{y3}/{x3}"
    assert_png(await seen.get(client, ogc))
    status, _, body = await seen.get(client, f"/tiles/{LAYER}/tilejson.json")
    assert status == 200
    template = json.loads(body)["tiles"][0]
    origin = str(client.make_url("/")).rstrip("/")
    assert_png(await seen.get(client, template.format(z=10, x=x4, y=y4).removeprefix(origin)))

    await seen.hold(client)
    issued, refused = server.stats()
    # One token for the service info at start and the five tiles; none refused.
    assert issued - issued_before == per_renewal
    assert refused - refused_before == Counter()
    seen.scan(caplog)


@pytest.mark.parametrize(
    "flow", ["server-discovered-requestip", "portal-federated-exchange", "oauth2-exchange-header"]
)
async def test_one_renewal_ahead_of_expiry_under_load(
    flow: str,
    make_server: Callable[..., SecuredImageServer],
    gateway: MakeGateway,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tokens live 10 s and are renewed from 9 s (90 %). A burst of 200 requests between
    then and expiry renews the token once, in the background, while the still valid one goes
    out; no request fails. (The burst ends well before the new token's own renewal point.)"""
    lifetime = 10.0
    server = make_server(lifetime, federated=flow in FEDERATED_FLOWS)
    credentials, per_renewal = FLOWS[flow]
    client = await gateway(server, credentials)
    started = time.monotonic()
    tiles = tiles_with_data(client, 13, BURST)
    await seen.hold(client)
    assert server.stats() == (per_renewal, Counter())

    await asyncio.sleep(max(0.0, started + 0.93 * lifetime - time.monotonic()))
    await burst(seen, client, tiles, 13)
    await seen.hold(client)
    issued, _ = server.stats()
    assert issued == per_renewal + per_renewal
    seen.scan(caplog)


async def test_one_renewal_after_expiry_under_load(
    make_server: Callable[..., SecuredImageServer],
    gateway: MakeGateway,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 requests meeting an expired token wait for one renewal; none is refused, none
    fails."""
    lifetime = 8.0
    server = make_server(lifetime)
    client = await gateway(server, FLOWS["server-discovered-requestip"][0])
    tiles = tiles_with_data(client, 13, BURST)
    await seen.hold(client)

    await asyncio.sleep(lifetime + 0.5)
    await burst(seen, client, tiles, 13)
    await seen.hold(client)
    assert server.stats() == (Counter({SERVER: 2}), Counter())
    seen.scan(caplog)


@pytest.mark.parametrize("style", ["json", "status", "html"])
async def test_a_rejected_token_is_renewed_once_and_the_request_sent_once_more(
    style: str,
    make_server: Callable[..., SecuredImageServer],
    gateway: MakeGateway,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(600, style)
    client = await gateway(server, FLOWS["server-discovered-requestip"][0])
    (x0, y0), (x1, y1) = tiles_with_data(client, 10, 2)
    assert_png(await seen.get(client, f"/tiles/{LAYER}/10/{x0}/{y0}.png"))
    await seen.hold(client)

    server.restart()  # every token it issued is unknown now: 498
    assert_png(await seen.get(client, f"/tiles/{LAYER}/10/{x1}/{y1}.png"))
    await seen.hold(client)
    assert server.stats() == (Counter({SERVER: 1}), Counter({"498": 1}))
    seen.scan(caplog)


@pytest.mark.parametrize(
    ("flow", "style"),
    [
        ("server-referer-header", "json"),
        ("portal-federated-exchange", "status"),
        ("oauth2-exchange-header", "html"),
    ],
)
async def test_a_token_rejected_under_load_is_renewed_once(
    flow: str,
    style: str,
    make_server: Callable[..., SecuredImageServer],
    gateway: MakeGateway,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(600, style, federated=flow in FEDERATED_FLOWS)
    credentials, per_renewal = FLOWS[flow]
    client = await gateway(server, credentials)
    tiles = tiles_with_data(client, 13, BURST)
    await seen.hold(client)

    server.restart()
    await burst(seen, client, tiles, 13)
    await seen.hold(client)
    issued, refused = server.stats()
    assert issued == per_renewal
    # Each request met the old token at most once: those sent before the renewal.
    assert 1 <= refused["498"] <= BURST
    assert refused["499"] == 0
    seen.scan(caplog)


async def test_a_rotated_token_file_is_read_again_when_the_token_is_rejected(
    servers: dict[bool, SecuredImageServer],
    gateway: MakeGateway,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "rotating-key"
    key_file.write_text("an-api-key-that-was-revoked")
    server = servers[False]
    client = await gateway(server, {"type": "static", "token_file": str(key_file)})
    (x0, y0), (x1, y1) = tiles_with_data(client, 11, 2)
    status, content_type, body = await seen.get(client, f"/tiles/{LAYER}/11/{x0}/{y0}.png")
    assert (status, content_type) == (502, "application/json")
    assert json.loads(body)["error"]["upstream"] == {"code": 498, "message": "Invalid Token"}

    key_file.write_text(API_KEY)  # the kubelet swaps the mounted Secret
    assert_png(await seen.get(client, f"/tiles/{LAYER}/11/{x1}/{y1}.png"))
    seen.scan(caplog, "an-api-key-that-was-revoked")


@pytest.mark.parametrize("failure", ["wrong-password", "unreachable", "unset-variable"])
async def test_a_failing_token_service_is_a_502_naming_the_layer_in_each_front(
    failure: str,
    servers: dict[bool, SecuredImageServer],
    gateway: MakeGateway,
    seen: Seen,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = servers[False]
    credentials = {"type": "server", "username": "alice", "password_env": "TG_TEST_PASSWORD"}
    if failure == "wrong-password":
        monkeypatch.setenv("TG_TEST_PASSWORD", f"not-{PASSWORD}")
        expected = "credentials 'upstream': the token service refused: Unable to generate token."
    elif failure == "unreachable":
        credentials["url"] = f"http://127.0.0.1:{free_port()}/arcgis/tokens/generateToken"
        expected = "credentials 'upstream': the token service is unreachable"
    else:
        monkeypatch.delenv("TG_TEST_PASSWORD")
        expected = "credentials 'upstream': environment variable TG_TEST_PASSWORD is unset"
    client = await gateway(server, credentials)

    status, content_type, body = await seen.get(client, f"/tiles/{LAYER}/3/2/3.png")
    assert (status, content_type) == (502, "application/json")
    error = json.loads(body)["error"]
    assert error["layer"] == LAYER
    assert error["message"].startswith(f"the upstream of layer {LAYER!r} failed: {expected}")

    status, content_type, body = await seen.get(
        client, f"/ogcapi/collections/{LAYER}/map/tiles/WebMercatorQuad/3/3/2"
    )
    assert (status, content_type) == (502, "application/json")
    assert LAYER in json.loads(body)["error"]["message"]

    status, content_type, body = await seen.get(
        client, f"/wmts/1.0.0/{LAYER}/default/WebMercatorQuad/3/3/2.png"
    )
    assert (status, content_type) == (502, "application/xml")
    assert b"ExceptionReport" in body
    assert f"the upstream of layer {LAYER!r} failed".encode() in body
    assert expected.encode() in body
    seen.scan(caplog, f"not-{PASSWORD}")


async def test_seeding_a_secured_layer(
    servers: dict[bool, SecuredImageServer],
    secret_files: dict[str, str],
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = servers[True]
    issued_before, refused_before = server.stats()
    config = parse_config(
        {
            "cache": {"redis_url": redis_url, "prefix": key_prefix},
            "credentials": {
                "enterprise": {
                    "type": "portal",
                    "username": "alice",
                    "password_file": secret_files["password_file"],
                    "exchange": True,
                    "send_as": "header",
                }
            },
            "layers": {
                LAYER: {"url": server.service_url, "credentials": "enterprise", "formats": ["png"]}
            },
        }
    )
    options = SeedOptions(layer=LAYER, zoom=(8, 10), state=tmp_path / "seed.json")
    assert await run_seed(config, options) == 0

    issued, refused = server.stats()
    assert issued - issued_before == Counter({PORTAL: 2})
    assert refused - refused_before == Counter()
    keys = [key.decode() for key in redis_client.scan_iter(match=f"{key_prefix}:{LAYER}:*")]
    # Every tile over the data at each TileMatrix: RGB.byte.tif covers 2 x 2 tiles at 10.
    assert {int(key.split(":")[4]) for key in keys} == {8, 9, 10}
    output = capsys.readouterr()
    texts = [*keys, output.out, output.err, *(r.getMessage() for r in caplog.records)]
    for text in texts:
        for needle in SECRETS:
            assert needle not in text


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"type": "server", "username": "alice", "password": "{secret}"}, "password"),
        ({"type": "static", "token": "{secret}"}, "token"),
        ({"type": "oauth2", "client_id": APP_ID, "client_secret": "{secret}"}, "client_secret"),
    ],
)
def test_check_config_refuses_a_secret_written_in_the_file(
    entry: dict[str, str], key: str, tmp_path: Path
) -> None:
    secret = f"plain-{secrets.token_hex(8)}"
    config = {
        "credentials": {"corp": {k: v.format(secret=secret) for k, v in entry.items()}},
        "layers": {
            "imagery": {
                "url": "https://gis.example.org/arcgis/rest/services/Ortho/ImageServer",
                "credentials": "corp",
            }
        },
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        f"credentials.corp.{key}: secrets are never written in the configuration" in result.stderr
    )
    assert f"{key}_env" in result.stderr and f"{key}_file" in result.stderr
    assert secret not in result.stderr + result.stdout
