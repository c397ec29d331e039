"""Malformed requests (issue 9, item 5), each case against a gateway on a socket with a real
Redis: never a 5xx, always the front's own error format, and nothing a client sends reaches the
log raw or as a traceback.

Requests a client library would refuse to send (bytes outside UTF-8 in a header, a broken
request line) go over a raw socket.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lxml import etree

from gateway.app import create_app
from gateway.server import start_site
from gateway.services.http import front_app, render_json_error
from tests.conftest import gateway_config
from tests.integration.conftest import FakeUpstream

OWS = "{http://www.opengis.net/ows/1.1}"
TOKEN = "s3cret-admin-token"
# Longer than Python turns into an int (4,300 digits, sys.get_int_max_str_digits).
LONG = "7" * 5000


def layers(url: str) -> dict[str, dict[str, Any]]:
    return {"fake": {"url": url, "formats": ["png", "jpg"], "meta_size": [1, 1], "maxzoom": 5}}


@pytest.fixture
async def gateway(
    fake_upstream: FakeUpstream, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Client]:
    """A client of the gateway served as ``tile-gateway serve`` serves it (``start_site``),
    with a Redis cache, ``trust_proxy`` and the admin API on."""
    monkeypatch.setenv("TILE_GATEWAY_ADMIN_TOKEN", TOKEN)
    config = gateway_config(
        layers(fake_upstream.url), {"redis_url": redis_url, "prefix": key_prefix}, trust_proxy=True
    )
    runner, port = await start_site(create_app(config), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield Client(session, port)
    finally:
        await runner.cleanup()


@dataclass
class Client:
    session: aiohttp.ClientSession
    port: int

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(path, **kwargs)


def check_format(status: int, content_type: str, body: bytes, kind: str) -> None:
    """The body is the front's own error: an OWS ExceptionReport or the gateway's JSON."""
    if kind == "ows":
        assert content_type.startswith("application/xml"), content_type
        report = etree.fromstring(body)
        assert report.tag == f"{OWS}ExceptionReport"
        assert report.find(f"{OWS}Exception") is not None
    else:
        assert content_type.startswith("application/json"), content_type
        error = json.loads(body)["error"]
        assert error["code"] == status and isinstance(error["message"], str)


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        # str.isdigit takes "²": a TileMatrix/TileCol/TileRow of it is no number.
        ("/tiles/fake/%C2%B2/0/0.png", 400, "json"),
        ("/tiles/fake/0/%C2%B2/0.png", 400, "json"),
        ("/tiles/fake/0/0/%C2%B2.png", 400, "json"),
        ("/tiles/fake/WebMercatorQuad/1/%C2%B2/0.png", 400, "json"),
        (
            "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=fake&STYLE=default"
            "&FORMAT=image/png&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=1&TILEROW=%C2%B2&TILECOL=0",
            400,
            "ows",
        ),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/1/0/%C2%B2.png", 404, "ows"),
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/1/%C2%B2/0", 400, "json"),
        ("/tiles/fake/tilejson.json?scale=%C2%B2", 400, "json"),
        # Thousands of digits: out of any matrix, never turned into an int.
        (f"/tiles/fake/{LONG}/0/0.png", 404, "json"),
        (f"/tiles/fake/1/{LONG}/0.png", 404, "json"),
        (f"/tiles/fake/1/0/{LONG}.png", 404, "json"),
        (f"/tiles/fake/1/0/{LONG}@2x.png", 404, "json"),
        (
            "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=fake&STYLE=default"
            f"&FORMAT=image/png&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=1&TILEROW={LONG}&TILECOL=0",
            400,
            "ows",
        ),
        (
            "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=fake&STYLE=default"
            f"&FORMAT=image/png&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=1&TILEROW=0&TILECOL=-{LONG}",
            400,
            "ows",
        ),
        (f"/wmts/1.0.0/fake/default/WebMercatorQuad/1/{LONG}/0.png", 404, "ows"),
        (f"/wmts/1.0.0/fake/default/WebMercatorQuad/{LONG}/0/0.png", 404, "ows"),
        (f"/ogcapi/collections/fake/map/tiles/WebMercatorQuad/{LONG}/0/0", 404, "json"),
        (f"/ogcapi/collections/fake/map/tiles/WebMercatorQuad/1/{LONG}/0", 404, "json"),
        (f"/ogcapi/collections/fake/map/tiles/WebMercatorQuad/1/0/{LONG}", 404, "json"),
        # Control characters in a path the front does not know (its 404 names the path).
        ("/wmts/%00", 404, "ows"),
        ("/wmts/%0D%0Ainjected", 404, "ows"),
        ("/ogcapi/%00", 404, "json"),
        ("/%00", 404, "json"),
    ],
)
async def test_malformed_addresses_are_client_errors(
    gateway: Client, caplog: pytest.LogCaptureFixture, path: str, status: int, kind: str
) -> None:
    caplog.set_level(logging.INFO)
    response = await gateway.get(path)
    assert response.status == status
    check_format(status, response.content_type, await response.read(), kind)
    no_error_logged(caplog)


async def test_a_long_number_is_cut_in_the_message(gateway: Client) -> None:
    response = await gateway.get(f"/ogcapi/collections/fake/map/tiles/WebMercatorQuad/1/{LONG}/0")
    message = (await response.json())["error"]["message"]
    assert message == "tile 1/777777777777.../0 is outside the tileMatrixSetLimits of 'fake'"


async def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` over a
    new connection; the status, the headers block and the body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    headers, _, content = answer.partition(b"\r\n\r\n")
    return int(headers.split(b" ", 2)[1]), headers, content


def content_type(headers: bytes) -> str:
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            return value.strip().decode()
    return ""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/wmts", "ows"),
        ("/wmts?SERVICE=WMTS&REQUEST=GetCapabilities", "ows"),
        ("/wmts/1.0.0/WMTSCapabilities.xml", "ows"),
        ("/tiles/fake/tilejson.json", "json"),
        ("/ogcapi", "json"),
        ("/ogcapi/collections", "json"),
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad", "json"),
    ],
)
@pytest.mark.parametrize(
    "header",
    [
        b"Host: caf\xe9.example",  # Latin-1, not UTF-8
        b"Host: \xff\xfe",
        b"Host: a b",
        b"Host: evil.example/abc?x=",
        b"Host: localhost\r\nX-Forwarded-Host: \xff",
        b"Host: localhost\r\nX-Forwarded-Proto: \xff",
        b"Host: localhost\r\nX-Forwarded-Proto: javascript",
        b"Host: localhost\r\nX-Forwarded-Prefix: /a\xffb",
        b"Host: localhost\r\nX-Forwarded-Prefix: /a b",
    ],
)
async def test_a_host_that_is_no_url_host_is_refused_in_the_fronts_format(
    gateway: Client, caplog: pytest.LogCaptureFixture, path: str, kind: str, header: bytes
) -> None:
    caplog.set_level(logging.INFO)
    status, headers, body = await raw_request(
        gateway.port, f"GET {path} HTTP/1.1\r\n".encode() + header
    )
    assert status == 400
    check_format(status, content_type(headers), body, kind)
    no_error_logged(caplog)


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (deep_json(100_000), {}, 400),
        (b'{"layer": ' + deep_json(100_000) + b"}", {}, 400),
        (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(b'{"layer": "fake"}')[:14], {"Content-Encoding": "gzip"}, 400),
        (b"garbage", {"Content-Encoding": "deflate"}, 400),
        (b'{"layer": "fake"}', {"Content-Type": "application/json; charset=no-such"}, 200),
        (b'{"layer": "caf\xe9"}', {}, 400),
        (b"\xff\xfe\x00", {}, 400),
        (b'{"layer": "fake", "zoom": "\xc2\xb2"}', {}, 400),
        (b'{"layer": "fake", "zoom": [' + LONG.encode() + b", 1]}", {}, 400),
        (b"x" * (2 * 1024 * 1024), {}, 413),
    ],
)
async def test_bad_purge_bodies_are_client_errors(
    gateway: Client,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    caplog.set_level(logging.INFO)
    response = await gateway.post(
        "/admin/purge",
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **headers},
    )
    assert response.status == status, await response.text()
    if status != 200:
        check_format(status, response.content_type, await response.read(), "json")
    no_error_logged(caplog)


async def test_a_good_gzip_purge_body_is_read(gateway: Client) -> None:
    response = await gateway.post(
        "/admin/purge",
        data=zlib.compress(b'{"layer": "fake"}'),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Encoding": "deflate"},
    )
    assert response.status == 200
    assert (await response.json())["layer"] == "fake"


async def test_an_unhandled_error_logs_the_path_escaped(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The one log line of an unexpected error names the path a client chose: escaped."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    config = gateway_config(
        {"fake": {"url": "http://127.0.0.1:9/arcgis/rest/services/x/ImageServer"}}
    )
    app = web.Application()
    app.add_subapp("/front", front_app(config, [web.get("/{name}", broken)], render_json_error))
    client = await aiohttp_client(app)
    response = await client.get("/front/a%0D%0A2026-01-01 ERROR forged%1B[31m")
    assert response.status == 500
    assert (await response.json())["error"] == {"code": 500, "message": "internal error"}
    (record,) = [r for r in caplog.records if r.name == "gateway.services.http.fronts"]
    message = record.getMessage()
    assert message == "unhandled error on GET /front/a\\r\\n2026-01-01 ERROR forged\\x1b[31m"
    assert message.isprintable()


@pytest.fixture
async def gateway_site(fake_upstream: FakeUpstream) -> AsyncIterator[int]:
    """The gateway on a port of its own, served as ``tile-gateway serve`` serves it
    (``server.start_site``)."""
    runner, port = await start_site(
        create_app(gateway_config(layers(fake_upstream.url))), "127.0.0.1", 0
    )
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "head",
    [
        b"GARBAGE",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the HTTP port
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\x1b[31mforged: line",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\nHeader: y",
        b"GET /healthz\x00\n2026-01-01 ERROR forged HTTP/1.1\r\nHost: x",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 9000,
        b"GET /healthz HTTP/9.9\r\nHost: x",
        b"POST /admin/purge HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6",
        b"POST /admin/purge HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz",
        b"POST /admin/purge HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 3",
    ],
)
async def test_requests_aiohttp_cannot_parse_log_one_escaped_line_without_traceback(
    gateway_site: int, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    status, _, _ = await raw_request(gateway_site, head, b"abc")
    assert 400 <= status < 500
    # The server logs after answering: give it the moment it needs.
    for _ in range(50):
        server = [r for r in caplog.records if r.name == "aiohttp.server"]
        if server:
            break
        await asyncio.sleep(0.02)
    assert len(server) <= 1, [r.getMessage() for r in server]
    for record in caplog.records:
        assert record.levelno <= logging.INFO, record.getMessage()
        assert record.exc_info is None, record.getMessage()
        assert record.getMessage().isprintable(), record.getMessage()


async def test_access_lines_escape_what_the_client_sent(
    gateway_site: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    status, _, _ = await raw_request(
        gateway_site,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        # A tab, NEL (U+0085: a line break to some log viewers) and a byte outside UTF-8.
        b"User-Agent: a\tb\xc2\x85c\r\nReferer: \xff",
    )
    assert status == 200
    for _ in range(50):
        access = [r for r in caplog.records if r.name == "gateway.access"]
        if access:
            break
        await asyncio.sleep(0.02)
    (record,) = access
    assert record.getMessage().endswith('"\\udcff" "a\\tb\\x85c"')
