"""The reverse proxy against a scripted upstream on a real socket: the allow-list refuses every
open-proxy trick before any upstream request, redirects are never followed off the service,
bodies are bounded, headers and cookies stay on their side, the client's token is replaced,
answers are streamed or scrubbed, and cacheable reads go through the cache.

Attack paths are written to a raw socket: an HTTP client library would normalise them first.
"""

from __future__ import annotations

import asyncio
import email
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from gateway.app import create_app
from gateway.config import ConfigError, parse_config
from gateway.sources.http import Credentials, UpstreamRequest

GATEWAY_TOKEN = "gateway-token-0123456789abcdef"
CLIENT_TOKEN = "client-token-fedcba9876543210"
SERVICE = "/arcgis/rest/services/up/allowed/ImageServer"


def png(size: tuple[int, int] = (4, 4), colour: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


class StaticToken:
    """A provider sending ``GATEWAY_TOKEN``; ``refreshed`` counts refreshes (never granted)."""

    def __init__(self) -> None:
        self.refreshed = 0

    async def apply(self, request: UpstreamRequest) -> None:
        request.params["token"] = GATEWAY_TOKEN

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        self.refreshed += 1
        return False


@dataclass
class Seen:
    """One request the scripted upstream received."""

    method: str
    raw_path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """The scripted upstream: ``seen`` requests (the gateway layer's own service-info
    requests left out), ``release`` lets the ``big`` answer finish."""

    server: TestServer
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    answers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(
        default_factory=dict
    )
    provider: StaticToken = field(default_factory=lambda: StaticToken())
    counts: dict[str, int] = field(default_factory=lambda: {"export": 0, "tile": 0})

    @property
    def root(self) -> str:
        """Its origin by name: cookie jars keep no cookies of a bare IP address."""
        return f"http://localhost:{self.server.port}"

    def proxied(self) -> list[Seen]:
        return [seen for seen in self.seen if "/layer/" not in seen.raw_path]


async def _serve(upstream: Upstream, request: web.Request) -> web.StreamResponse:
    body = await request.read()
    upstream.seen.append(
        Seen(request.method, request.raw_path, dict(request.headers), dict(request.query), body)
    )
    name = request.path.rsplit("/", 1)[-1]
    answer = upstream.answers.get(name)
    if answer is not None:
        return await answer(request)
    if request.path.endswith("/allowed/ImageServer"):
        service = f"{upstream.root}/arcgis/rest/services/allowed/ImageServer"
        return web.json_response(
            {
                "name": "allowed",
                "serviceUrl": f"{service}?token={GATEWAY_TOKEN}",
                "legend": f"{service}/legend",
                "tokenServicesUrl": f"{upstream.root}/arcgis/tokens/",
                "token": GATEWAY_TOKEN,
                "note": f"signed with {GATEWAY_TOKEN}",
            }
        )
    if name == "echo":
        response = web.json_response(
            {
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": body.decode(errors="replace"),
            }
        )
        response.set_cookie("AGS_ROLES", "internal-session")
        response.headers["X-Internal-Host"] = "gis01.internal"
        return response
    return web.json_response({})


async def _big(upstream: Upstream, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    await response.write(b"\x89PNG\r\n\x1a\n" + b"first-half" * 1000)
    await upstream.release.wait()
    await response.write(b"second-half" * 1000)
    return response


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    state: dict[str, Upstream] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        return await _serve(state["upstream"], request)

    app.router.add_route("*", "/{tail:.*}", serve)
    server = await aiohttp_server(app)
    upstream = state["upstream"] = Upstream(server)
    upstream.answers["big"] = lambda request: _big(upstream, request)
    return upstream


def config(upstream: Upstream, cache: dict[str, Any] | None = None, **proxy: Any) -> Any:
    return parse_config(
        {
            "cache": cache or {},
            # Named so that the config is valid; the tests pass their own provider of "main".
            "credentials": {"main": {"type": "static", "token_env": "PROXY_TEST_UNUSED"}},
            "layers": {"layer": {"url": f"{upstream.root}/arcgis/rest/services/layer/ImageServer"}},
            "proxy": {
                "services": [
                    {
                        "path": "up",
                        "url": f"{upstream.root}/arcgis/rest/services",
                        "credentials": "main",
                        "allow": ["allowed/ImageServer", "folder/svc/ImageServer"],
                    }
                ],
                **proxy,
            },
        }
    )


@pytest.fixture
async def gateway(
    upstream: Upstream, aiohttp_client: Callable[[web.Application], Awaitable[TestClient]]
) -> TestClient:
    lookup: dict[str, Credentials] = {"main": upstream.provider}
    return await aiohttp_client(
        create_app(config(upstream, max_body_bytes=4096), lookup.__getitem__)
    )


async def raw_request(client: TestClient, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` as they
    are; the status and body of the answer."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head.encode("latin-1") + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def arcgis_error(body: bytes, status: int) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert error["code"] == status and error["details"] == [] and error["message"]
    return error


# Every path a client might use to leave the allow-list (resource-proxy's open-proxy history,
# arcgis-rest.md section 6), each answered 403 or 404 without any upstream request.
ATTACKS = [
    ("/arcgis/rest/services/up/../secret/ImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/../../secret/ImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/%2e%2e/%2e%2e/secret/ImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/%2E%2E/%2E%2E/secret/ImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/.%2e/.%2e/secret/ImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/..%2f..%2fsecret%2fImageServer", 403),
    ("/arcgis/rest/services/up/allowed%2fImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/..%5c..%5csecret%5cImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/%252e%252e/%252e%252e/secret", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/%c0%ae%c0%ae/secret", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/%00", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer/%2e", 403),
    ("/arcgis/rest/services/up//evil.example/ImageServer", 403),
    ("/arcgis/rest/services/up/@evil.example/ImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServer@evil.example/x", 403),
    ("/arcgis/rest/services/up/user:pass@evil.example/allowed/ImageServer", 403),
    ("/arcgis/rest/services/up/http://evil.example/allowed/ImageServer", 403),
    ("/arcgis/rest/services/up/https:%2f%2fevil.example%2fallowed", 403),
    ("/arcgis/rest/services/up/%2f%2fevil.example/allowed/ImageServer", 403),
    ("/arcgis/rest/services/up/secret/ImageServer", 403),
    ("/arcgis/rest/services/up/allowedX/ImageServer", 403),
    ("/arcgis/rest/services/up/allowed/ImageServerX/exportImage", 403),
    ("/arcgis/rest/services/up/ALLOWED/ImageServer", 403),
    ("/arcgis/rest/services/up/folder/ImageServer", 403),
    ("/arcgis/rest/services/up/_outputs/../secret/ImageServer", 403),
    ("/arcgis/rest/services/up/_outputs/secret/ImageServer", 404),
    ("/arcgis/rest/services/up?http://evil.example/secret", 404),
    ("/arcgis/rest/services/up/", 404),
    ("/arcgis/rest/services/other/allowed/ImageServer", 404),
    ("/arcgis/rest/%73ervices/up/allowed/ImageServer", 404),
]


@pytest.mark.parametrize(("target", "status"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_open_proxy_attempts_are_refused(
    gateway: TestClient, upstream: Upstream, target: str, status: int
) -> None:
    answer_status, body = await raw_request(gateway, f"GET {target} HTTP/1.1\r\nHost: gw")
    assert answer_status == status
    arcgis_error(body, status)
    assert upstream.proxied() == []


@pytest.mark.parametrize(
    "head",
    [
        # Absolute-form request targets (RFC 9112 section 3.2.2): the host is the client's.
        "GET http://evil.example/arcgis/rest/services/up/secret/ImageServer HTTP/1.1\r\nHost: gw",
        "GET http://127.0.0.1/arcgis/rest/services/up/../secret HTTP/1.1\r\nHost: gw",
        # Raw backslashes: refused by the HTTP parser or by the allow-list.
        "GET /arcgis/rest/services/up/allowed/ImageServer\\..\\..\\secret HTTP/1.1\r\nHost: gw",
        # A request line with a second URL after a space.
        "GET /arcgis/rest/services/up/allowed/ImageServer http://evil.example/ HTTP/1.1\r\n"
        "Host: gw",
    ],
)
async def test_malformed_request_targets_never_reach_the_upstream(
    gateway: TestClient, upstream: Upstream, head: str
) -> None:
    status, _ = await raw_request(gateway, head)
    assert status in (400, 403, 404)
    assert upstream.proxied() == []


async def test_allowed_paths_reach_the_upstream_at_the_checked_url(
    gateway: TestClient, upstream: Upstream
) -> None:
    for target in (
        f"{SERVICE}/echo",
        # Percent-encoded plain characters decode once to the same path.
        "/arcgis/rest/services/up/%61llowed/ImageServer/echo",
        "/arcgis/rest/services/up/folder/svc/ImageServer/echo",
    ):
        status, _ = await raw_request(gateway, f"GET {target}?f=json HTTP/1.1\r\nHost: gw")
        assert status == 200
    assert [seen.raw_path for seen in upstream.proxied()] == [
        f"/arcgis/rest/services/allowed/ImageServer/echo?f=json&token={GATEWAY_TOKEN}",
        f"/arcgis/rest/services/allowed/ImageServer/echo?f=json&token={GATEWAY_TOKEN}",
        f"/arcgis/rest/services/folder/svc/ImageServer/echo?f=json&token={GATEWAY_TOKEN}",
    ]


async def test_redirects_are_not_followed_off_the_service(
    gateway: TestClient, upstream: Upstream, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    stolen: list[str] = []

    async def steal(request: web.Request) -> web.Response:
        stolen.append(request.raw_path)
        return web.Response(text="secret")

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", steal)
    elsewhere = await aiohttp_server(other)

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(elsewhere.make_url("/steal")))

    async def home(request: web.Request) -> web.Response:
        raise web.HTTPFound("/arcgis/rest/services/allowed/ImageServer/echo?f=json&token=x1")

    async def up_and_out(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{upstream.root}/arcgis/rest/services/secret/ImageServer")

    upstream.answers.update({"away": away, "home": home, "out": up_and_out})
    for name in ("away", "out"):
        response = await gateway.get(f"{SERVICE}/{name}", allow_redirects=False)
        assert response.status == 502
        arcgis_error(await response.read(), 502)
    assert stolen == []
    assert [s.raw_path.split("?")[0].rsplit("/", 1)[1] for s in upstream.proxied()] == [
        "away",
        "out",
    ]
    # A redirect within the configured service is passed on, pointing at the gateway.
    response = await gateway.get(f"{SERVICE}/home", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == str(gateway.make_url(f"{SERVICE}/echo?f=json"))


async def test_oversized_bodies_are_413(gateway: TestClient, upstream: Upstream) -> None:
    form = {"f": "json", "renderingRule": "x" * 5000}
    response = await gateway.post(f"{SERVICE}/echo", data=form)
    assert response.status == 413
    arcgis_error(await response.read(), 413)

    # Chunked (no Content-Length): counted as it streams.
    async def chunks() -> Any:
        for _ in range(10):
            yield b"a=" + b"b" * 1000 + b"&"

    response = await gateway.post(
        f"{SERVICE}/echo",
        data=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 413
    arcgis_error(await response.read(), 413)
    writer = aiohttp.MultipartWriter("form-data")
    writer.append(b"z" * 8000, {"Content-Disposition": 'form-data; name="file"; filename="a"'})

    async def stream_multipart() -> Any:
        buffer = io.BytesIO()

        class Sink:
            async def write(self, data: bytes) -> None:
                buffer.write(data)

        await writer.write(Sink())  # type: ignore[arg-type]
        data = buffer.getvalue()
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    response = await gateway.post(
        f"{SERVICE}/echo",
        data=stream_multipart(),
        headers={"Content-Type": writer.content_type},
    )
    assert response.status == 413
    arcgis_error(await response.read(), 413)
    assert all(seen.body == b"" or len(seen.body) <= 4096 for seen in upstream.proxied())
    response = await gateway.post(
        f"{SERVICE}/echo", data=b"{}", headers={"Content-Type": "application/json"}
    )
    assert response.status == 415


async def test_client_credentials_cookies_and_hop_by_hop_headers_stay_behind(
    gateway: TestClient, upstream: Upstream
) -> None:
    headers = {
        "Cookie": "AGS_ROLES=client",
        "Authorization": f"Bearer {CLIENT_TOKEN}",
        "X-Esri-Authorization": f"Bearer {CLIENT_TOKEN}",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Referer": "https://app.example/",
        "X-Forwarded-For": "10.0.0.1",
        "Forwarded": "for=10.0.0.1",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "1",
        "TE": "trailers",
        "Accept": "application/json",
    }
    for _ in range(2):
        response = await gateway.get(
            f"{SERVICE}/echo", params={"f": "json", "TOKEN": CLIENT_TOKEN}, headers=headers
        )
        assert response.status == 200
        assert "Set-Cookie" not in response.headers
        assert "X-Internal-Host" not in response.headers
    for seen in upstream.proxied():
        sent = {name.lower() for name in seen.headers}
        assert sent.isdisjoint(
            {
                "cookie",
                "authorization",
                "x-esri-authorization",
                "proxy-authorization",
                "referer",
                "x-forwarded-for",
                "forwarded",
                "x-hop",
                "te",
            }
        ), seen.headers
        assert seen.headers["Accept"] == "application/json"
        assert seen.query == {"f": "json", "token": GATEWAY_TOKEN}
        assert CLIENT_TOKEN not in json.dumps(seen.headers) + seen.raw_path


async def test_form_and_multipart_tokens_are_replaced(
    gateway: TestClient, upstream: Upstream
) -> None:
    response = await gateway.post(
        f"{SERVICE}/echo", data={"f": "json", "token": CLIENT_TOKEN, "bbox": "1,2,3,4"}
    )
    assert response.status == 200
    form = upstream.proxied()[-1]
    assert form.body == b"f=json&bbox=1%2C2%2C3%2C4"
    assert form.query == {"token": GATEWAY_TOKEN}
    payload = bytes(range(256)) * 8
    writer = aiohttp.MultipartWriter("form-data")
    writer.append("json", {"Content-Disposition": 'form-data; name="f"'})
    writer.append(CLIENT_TOKEN, {"Content-Disposition": 'form-data; name="token"'})
    part = writer.append(payload, {"Content-Type": "application/octet-stream"})
    part.set_content_disposition("form-data", name="file", filename="raster.bin")
    response = await gateway.post(f"{SERVICE}/echo", data=writer)
    assert response.status == 200
    multipart = upstream.proxied()[-1]
    assert multipart.query == {"token": GATEWAY_TOKEN}
    assert CLIENT_TOKEN.encode() not in multipart.body
    message = email.message_from_bytes(
        f"Content-Type: {multipart.headers['Content-Type']}\r\n\r\n".encode() + multipart.body
    )
    parts = {
        part.get_param("name", header="content-disposition"): (
            part.get_filename(),
            part.get_payload(decode=True),
        )
        for part in message.get_payload()
    }
    assert parts == {"f": (None, b"json"), "file": ("raster.bin", payload)}


async def test_large_answers_are_streamed(gateway: TestClient, upstream: Upstream) -> None:
    response = await gateway.get(f"{SERVICE}/big")
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/png"
    # The first half arrives while the upstream still holds back the second.
    first = await asyncio.wait_for(response.content.readexactly(8 + 10 * 1000), 10)
    assert first.startswith(b"\x89PNG")
    assert not upstream.release.is_set()
    upstream.release.set()
    rest = await response.read()
    assert rest == b"second-half" * 1000


async def test_streamed_answers_carry_the_cors_headers(
    gateway: TestClient, upstream: Upstream
) -> None:
    """A streamed answer (an output file of ``exportImage?f=json``, a large image) sends its
    headers before the front's middleware sees it: the CORS headers must be there all the same,
    or a page on another origin cannot show it (esri-leaflet's ``imageMapLayer`` with
    ``f: "json"`` loads the ``href`` as a CORS image)."""
    upstream.release.set()
    response = await gateway.get(f"{SERVICE}/big", headers={"Origin": "http://page.example"})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in response.headers["Access-Control-Expose-Headers"]
    assert (await response.read()).endswith(b"second-half")


async def test_json_answers_are_scrubbed(gateway: TestClient, upstream: Upstream) -> None:
    response = await gateway.get(SERVICE, params={"f": "json"})
    assert response.status == 200
    text = await response.text()
    document = json.loads(text)
    base = str(gateway.make_url("/arcgis/rest/services/up/allowed/ImageServer"))
    assert document == {
        "name": "allowed",
        "serviceUrl": base,
        "legend": f"{base}/legend",
        "tokenServicesUrl": "",
        "note": "signed with ",
    }
    assert GATEWAY_TOKEN not in text and upstream.root not in text
    assert response.headers["Vary"] == "Host"


async def test_html_pages_are_not_relayed(gateway: TestClient, upstream: Upstream) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(
            text=f"<a href='{upstream.root}/arcgis/admin'>admin</a>", content_type="text/html"
        )

    upstream.answers["page"] = html
    response = await gateway.get(f"{SERVICE}/page")
    assert response.status == 403
    assert upstream.root not in await response.text()


async def test_a_rejected_token_is_refreshed_once(gateway: TestClient, upstream: Upstream) -> None:
    async def rejected(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": 498, "message": "Invalid Token"}})

    upstream.answers["rejected"] = rejected
    response = await gateway.get(f"{SERVICE}/rejected", params={"f": "json"})
    assert (await response.json())["error"]["code"] == 498
    assert upstream.provider.refreshed == 1


@pytest.fixture
async def cached_gateway(
    upstream: Upstream,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    redis_url: str,
    key_prefix: str,
) -> TestClient:
    counts = upstream.counts

    async def export(request: web.Request) -> web.Response:
        counts["export"] += 1
        if request.query.get("bbox") == "0,0,0,0":
            return web.json_response({"error": {"code": 400, "message": "Invalid bbox"}})
        width, height = (int(v) for v in request.query["size"].split(","))
        return web.Response(body=png((width, height)), content_type="image/png")

    async def tile(request: web.Request) -> web.Response:
        counts["tile"] += 1
        return web.Response(body=png((256, 256), (1, 2, 3)), content_type="image/png")

    upstream.answers.update({"exportImage": export, "7": tile})
    lookup: dict[str, Credentials] = {"main": upstream.provider}
    app = create_app(
        config(upstream, cache={"redis_url": redis_url, "prefix": key_prefix}), lookup.__getitem__
    )
    return await aiohttp_client(app)


async def test_exports_and_tiles_go_through_the_cache(
    cached_gateway: TestClient, upstream: Upstream, redis_client: redis.Redis, key_prefix: str
) -> None:
    counts = upstream.counts
    export = {"bbox": "-10,-10,10,10", "size": "64,32", "f": "image", "format": "png"}
    first = await cached_gateway.get(
        f"{SERVICE}/exportImage", params={**export, "bboxSR": "102100", "token": CLIENT_TOKEN}
    )
    assert (first.status, first.headers["X-Cache"]) == (200, "MISS")
    body = await first.read()
    assert Image.open(io.BytesIO(body)).size == (64, 32)
    # Another spelling of the same export: Web Mercator WKID, parameter case, empty values.
    again = await cached_gateway.get(
        f"{SERVICE}/exportImage",
        params={**export, "BBOXSR": "3857", "time": "", "bbox": "-10.0,-10,10,10.000"},
    )
    assert (again.headers["X-Cache"], await again.read()) == ("HIT", body)
    assert counts["export"] == 1
    for _ in range(2):
        tile = await cached_gateway.get(f"{SERVICE}/tile/7/8/7")
        assert tile.status == 200
    assert counts["tile"] == 1
    keys = sorted(key.decode() for key in redis_client.keys(f"{key_prefix}:*"))
    assert keys[0].startswith(f"{key_prefix}:_proxy:up:allowed:ImageServer:export:")
    assert keys[1] == f"{key_prefix}:_proxy:up:allowed:ImageServer:tile:7:8:7"
    assert len(keys) == 2
    stored = b"".join(redis_client.get(key) or b"" for key in keys)
    assert GATEWAY_TOKEN.encode() not in stored and CLIENT_TOKEN.encode() not in stored
    assert all(GATEWAY_TOKEN not in key and CLIENT_TOKEN not in key for key in keys)


async def test_error_answers_to_cacheable_reads_are_relayed_not_cached(
    cached_gateway: TestClient, upstream: Upstream, redis_client: redis.Redis, key_prefix: str
) -> None:
    params = {"bbox": "0,0,0,0", "size": "64,64", "f": "image"}
    for _ in range(2):
        response = await cached_gateway.get(f"{SERVICE}/exportImage", params=params)
        assert (await response.json())["error"]["code"] == 400
    assert upstream.counts["export"] == 2
    assert redis_client.keys(f"{key_prefix}:_proxy:*") == []


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"allow": ["../admin"]}, "allow prefix"),
        ({"allow": ["a/%2e%2e"]}, "allow prefix"),
        ({"path": "a/../b"}, "path"),
        ({"url": "http://user:secret@gis.example/arcgis/rest/services"}, "user name"),
        ({"url": "http://gis.example/arcgis/rest/services?token=abc"}, "query string"),
    ],
)
def test_proxy_settings_refuse_what_routing_would_refuse(
    service: dict[str, Any], message: str
) -> None:
    settings = {"url": "http://gis.example/arcgis/rest/services", "allow": ["a/ImageServer"]}
    with pytest.raises(ConfigError, match=message):
        parse_config(
            {
                "layers": {
                    "layer": {"url": "http://gis.example/arcgis/rest/services/a/ImageServer"}
                },
                "proxy": {"services": [{**settings, **service}]},
            }
        )
