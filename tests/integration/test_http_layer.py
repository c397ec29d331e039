"""The HTTP layer every front shares, on a gateway on a socket: each front's own error format
for paths it does not know, gzip for documents and never for tiles, conditional requests,
ready answers for every tile front, and the upstream credential hook's one refresh and retry.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Awaitable, Callable
from email.utils import formatdate, parsedate_to_datetime

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from lxml import etree
from PIL import Image

from gateway.errors import UpstreamError
from gateway.services.http import READY
from gateway.sources.http import UpstreamPool, UpstreamRequest
from gateway.sources.imageserver import ImageServerClient
from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream, encode_image

OWS = "{http://www.opengis.net/ows/1.1}"
GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}


def layer(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "formats": ["png", "jpg"], "meta_size": [1, 1], **extra}


# -- each front's errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/wmts/nothing/here", 404, "ows"),
        ("POST", "/wmts", 405, "ows"),
        ("GET", "/ogcapi/nothing/here", 404, "json"),
        ("POST", "/ogcapi/collections", 405, "json"),
        ("GET", "/tiles/fake", 404, "json"),
        ("GET", "/admin/nothing", 404, "json"),
        ("GET", "/admin/purge", 405, "json"),
        ("GET", "/nothing", 404, "json"),
    ],
)
async def test_each_front_answers_unknown_paths_in_its_own_format(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    method: str,
    path: str,
    status: int,
    kind: str,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.request(method, path)
    assert response.status == status
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Cache-Control"] == "no-store"
    if kind == "ows":
        assert response.content_type == "application/xml"
        report = etree.fromstring(await response.read())
        exception = report.find(f"{OWS}Exception")
        assert exception is not None and exception.get("exceptionCode") == "NoApplicableCode"
    else:
        assert (await response.json())["error"]["code"] == status
    if status == 405:
        # RFC 9110 section 15.5.6: a 405 lists the methods the resource has.
        allowed = {name.strip() for name in response.headers["Allow"].split(",")}
        assert allowed and method not in allowed


async def test_control_characters_in_an_unknown_wmts_path_are_escaped(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.get("/wmts/a%00b%1bc")
    assert response.status == 404
    text = etree.fromstring(await response.read()).findtext(f"{OWS}Exception/{OWS}ExceptionText")
    assert text == "no WMTS resource /wmts/a\\x00b\\x1bc"


# -- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/wmts?SERVICE=WMTS&REQUEST=GetCapabilities",
        "/wmts/1.0.0/WMTSCapabilities.xml",
        "/tiles/fake/tilejson.json",
        "/ogcapi",
        "/ogcapi/collections",
        "/ogcapi/collections/fake/map/tiles/WebMercatorQuad",
        "/ogcapi/tileMatrixSets/WebMercatorQuad",
    ],
)
async def test_documents_are_gzipped_for_clients_that_accept_it(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, path: str
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, maxzoom=3)})
    plain = await client.get(path, headers=IDENTITY, auto_decompress=False)
    packed = await client.get(path, headers=GZIP, auto_decompress=False)
    assert plain.status == packed.status == 200
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == "gzip"
    for response in (plain, packed):
        assert "Accept-Encoding" in response.headers["Vary"]
    body = await packed.read()
    assert gzip.decompress(body) == await plain.read()
    assert len(body) < len(await plain.read())
    # q=0 refuses gzip (RFC 9110 section 12.5.3).
    refused = await client.get(path, headers={"Accept-Encoding": "gzip;q=0, br"})
    assert "Content-Encoding" not in refused.headers


async def test_tiles_are_never_compressed(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    for path in (
        "/tiles/fake/2/1/1.png",
        "/wmts/1.0.0/fake/default/WebMercatorQuad/2/1/1.png",
        "/ogcapi/collections/fake/map/tiles/WebMercatorQuad/2/1/1?f=png",
    ):
        for _ in range(2):  # the miss, then the hit
            response = await client.get(path, headers=GZIP, auto_decompress=False)
            assert response.status == 200
            assert "Content-Encoding" not in response.headers
            assert "Accept-Encoding" not in response.headers.get("Vary", "")
            Image.open(io.BytesIO(await response.read())).verify()


# -- conditional requests -------------------------------------------------------------------


async def test_if_modified_since_and_if_none_match(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    path = "/tiles/fake/2/1/1.png"
    first = await client.get(path)
    modified = first.headers["Last-Modified"]
    when = parsedate_to_datetime(modified).timestamp()
    same = await client.get(path, headers={"If-Modified-Since": modified})
    assert same.status == 304 and await same.read() == b""
    assert same.headers["ETag"] == first.headers["ETag"]
    later = await client.get(
        path, headers={"If-Modified-Since": formatdate(when + 60, usegmt=True)}
    )
    assert later.status == 304
    earlier = await client.get(
        path, headers={"If-Modified-Since": formatdate(when - 1, usegmt=True)}
    )
    assert earlier.status == 200 and await earlier.read() == await first.read()
    # If-None-Match wins over If-Modified-Since (RFC 9110 section 13.2.2).
    other = await client.get(
        path, headers={"If-None-Match": '"other"', "If-Modified-Since": modified}
    )
    assert other.status == 200
    assert (await client.get(path, headers={"If-None-Match": "*"})).status == 304
    garbage = await client.get(path, headers={"If-Modified-Since": "yesterday"})
    assert garbage.status == 200


# -- ready answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("front", "path", "headers"),
    [
        ("/tiles", "/tiles/fake/3/2/1.png", {}),
        (
            "/wmts",
            "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=fake&STYLE=default"
            "&FORMAT=image/png&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=3&TILEROW=1&TILECOL=2",
            {},
        ),
        ("/wmts", "/wmts/1.0.0/fake/default/WebMercatorQuad/3/1/2.png", {}),
        (
            "/ogcapi",
            "/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/1/2",
            {"Accept": "image/png"},
        ),
        (
            "/ogcapi",
            "/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/1/2?f=jpg",
            {"Accept": "*/*"},
        ),
    ],
)
async def test_every_tile_front_answers_repeated_hits_from_ready_answers(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    front: str,
    path: str,
    headers: dict[str, str],
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    miss, first_hit, ready_hit = [await client.get(path, headers=headers) for _ in range(3)]
    assert [r.headers["X-Cache"] for r in (miss, first_hit, ready_hit)] == ["MISS", "HIT", "HIT"]
    app = client.server.app
    request = make_mocked_request("GET", path, headers=headers, app=app)
    assert app[READY].answer(request) is not None
    for name in (
        "Content-Type",
        "ETag",
        "Last-Modified",
        "Cache-Control",
        "Vary",
        "Content-Length",
    ):
        assert ready_hit.headers.get(name) == first_hit.headers.get(name), name
    assert await ready_hit.read() == await first_hit.read() == await miss.read()
    if front == "/ogcapi":
        # Another Accept is another answer: not the one prepared for image/png.
        other = make_mocked_request("GET", path, headers={"Accept": "image/jpeg"}, app=app)
        assert app[READY].answer(other) is None
    assert len(fake_upstream.queries) == 1


# -- the credential hook ----------------------------------------------------------------------


class Rotating:
    """A credential provider for the test: token ``old`` until refreshed, then ``new``."""

    def __init__(self, renews: bool = True) -> None:
        self.token = "old"
        self.renews = renews
        self.refreshes = 0

    async def apply(self, request: UpstreamRequest) -> None:
        request.params["token"] = self.token

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        self.refreshes += 1
        assert rejected.params["token"] == self.token
        if self.renews:
            self.token = "new"
        return self.renews


def _rejection(kind: str) -> web.Response:
    if kind == "status499":
        return web.Response(status=499, text="Token Required")
    if kind == "error200":
        body = {"error": {"code": 498, "message": "Invalid Token", "details": []}}
        return web.json_response(body)
    return web.Response(text="<html><body>Invalid Token</body></html>", content_type="text/html")


@pytest.fixture
async def token_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> Callable[[str], Awaitable[tuple[str, list[str]]]]:
    async def start(kind: str) -> tuple[str, list[str]]:
        tokens: list[str] = []

        async def export_image(request: web.Request) -> web.Response:
            tokens.append(request.query.get("token", ""))
            if request.query.get("token") != "new":
                return _rejection(kind)
            return web.Response(
                body=encode_image("png", (4, 4), (1, 2, 3)), content_type="image/png"
            )

        app = web.Application()
        app.router.add_get("/arcgis/rest/services/s/ImageServer/exportImage", export_image)
        server = await aiohttp_server(app)
        return str(server.make_url("/arcgis/rest/services/s/ImageServer")), tokens

    return start


@pytest.mark.parametrize("kind", ["status499", "error200", "html"])
async def test_a_rejected_token_is_refreshed_once_and_the_request_sent_again(
    token_upstream: Callable[[str], Awaitable[tuple[str, list[str]]]], kind: str
) -> None:
    url, tokens = await token_upstream(kind)
    pool = UpstreamPool()
    provider = Rotating()
    try:
        client = ImageServerClient(url, pool.upstream(url, 5, provider))
        image = await client.export_image((0, 0, 1, 1), 3857, (4, 4), "png", {})
    finally:
        await pool.close()
    assert image.data.startswith(b"\x89PNG")
    assert tokens == ["old", "new"]
    assert provider.refreshes == 1


@pytest.mark.parametrize("kind", ["status499", "error200", "html"])
async def test_a_token_that_cannot_be_renewed_fails_after_one_request(
    token_upstream: Callable[[str], Awaitable[tuple[str, list[str]]]], kind: str
) -> None:
    url, tokens = await token_upstream(kind)
    pool = UpstreamPool()
    provider = Rotating(renews=False)
    try:
        client = ImageServerClient(url, pool.upstream(url, 5, provider))
        with pytest.raises(UpstreamError) as failure:
            await client.export_image((0, 0, 1, 1), 3857, (4, 4), "png", {})
    finally:
        await pool.close()
    assert tokens == ["old"] and provider.refreshes == 1
    assert failure.value.status == 502
    assert failure.value.code in (498, 499)
    assert "old" not in failure.value.message


async def test_one_session_per_upstream_origin(fake_upstream: FakeUpstream) -> None:
    pool = UpstreamPool(connections=3)
    try:
        first = pool.upstream(fake_upstream.url, 5)
        second = pool.upstream(fake_upstream.url.replace("/fake/", "/other/"), 5)
        assert first._session is second._session
        connector = first._session.connector
        assert isinstance(connector, aiohttp.TCPConnector) and connector.limit == 3
        body = json.loads((await first.get(fake_upstream.url, {"f": "json"})).body)
        assert body["name"] == "fake"
    finally:
        await pool.close()


async def test_ready_answers_are_for_reads_only(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    path = "/tiles/fake/3/2/1.png"
    for _ in range(2):
        await client.get(path)
    assert (await client.head(path)).headers["X-Cache"] == "HIT"
    posted = await client.post(path)
    assert posted.status == 405
    assert (await posted.json())["error"]["code"] == 405
    assert {name.strip() for name in posted.headers["Allow"].split(",")} >= {"GET", "HEAD"}
