"""The reverse proxy in front of the token-secured reference ImageServer (a real process): the
gateway's token goes upstream, refreshed through the real ``generateToken`` when rejected, and
no answer a client reads holds a token or the upstream's address."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.config import parse_config
from gateway.services.http import PIPELINE
from gateway.sources.http import Credentials
from tests.interop.proxy_support import (
    PASSWORD,
    USER,
    GeneratedToken,
    SecuredImageServer,
    proxy_config,
    secured_imageserver,
)

__all__ = ["secured_imageserver"]  # the session fixture, used by name
RGB = "/arcgis/rest/services/rgb/ImageServer"
EXPORT = {"bbox": "200000,2700000,210000,2710000", "size": "40,30", "format": "png"}


async def gateway_with(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    server: SecuredImageServer,
    provider: Credentials,
) -> TestClient:
    lookup = {"arcgis": provider}
    config = parse_config({**proxy_config(server), "cache": {}})
    return await aiohttp_client(create_app(config, lookup.__getitem__))


async def test_stale_token_is_refreshed_and_never_reaches_the_client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    secured_imageserver: SecuredImageServer,
) -> None:
    provider = GeneratedToken(secured_imageserver.token_url)
    client = await gateway_with(aiohttp_client, secured_imageserver, provider)
    response = await client.get(RGB, params={"f": "json", "token": "a-client-token"})
    text = await response.text()
    assert response.status == 200, text
    info = json.loads(text)
    assert info["name"] == "rgb" and info["bandCount"] == 3
    # The stale token was rejected (498), a real one fetched, the request sent again.
    assert provider.issued == 1
    assert provider.sent == ["stale-token-that-the-server-never-issued", provider.token]
    for secret in provider.sent:
        assert secret not in text
    assert secured_imageserver.root not in text


async def test_export_json_href_is_served_by_the_gateway_with_the_token_added(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    secured_imageserver: SecuredImageServer,
) -> None:
    provider = GeneratedToken(secured_imageserver.token_url)
    client = await gateway_with(aiohttp_client, secured_imageserver, provider)
    answer = await client.post(f"{RGB}/exportImage", data={**EXPORT, "f": "json"})
    text = await answer.text()
    document = json.loads(text)
    href = document["href"]
    assert href.startswith(str(client.make_url("/arcgis/rest/services/_outputs/rgb_ImageServer/")))
    assert provider.token not in text and secured_imageserver.root not in text
    # Like esri-leaflet, fetch the href as it is: the gateway adds its token upstream.
    image = await client.session.get(href)
    assert (image.status, image.content_type) == (200, "image/png")
    assert Image.open(io.BytesIO(await image.read())).size == (40, 30)
    direct = await client.get(f"{RGB}/exportImage", params={**EXPORT, "f": "image"})
    assert direct.headers["X-Cache"] == "MISS"
    assert Image.open(io.BytesIO(await direct.read())).size == (40, 30)


async def test_the_configured_server_credentials_serve_the_proxy_and_a_layer_with_one_token(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    secured_imageserver: SecuredImageServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No provider passed in: the gateway's own (generateToken, bound to its address), from the
    # configuration, shared by the proxied rgb service and the rgb tile layer of one server.
    monkeypatch.setenv("PROXY_TEST_PASSWORD", PASSWORD)
    tree = proxy_config(secured_imageserver)
    tree["credentials"] = {
        "arcgis": {
            "type": "server",
            "url": secured_imageserver.token_url,
            "username": USER,
            "password_env": "PROXY_TEST_PASSWORD",
            "client": "requestip",
        }
    }
    tree["layers"]["rgb"] = {
        "url": f"{secured_imageserver.services}/rgb/ImageServer",
        "formats": ["png"],
        "credentials": "arcgis",
        # Past the 300 m scene's default last level (10).
        "maxzoom": 12,
    }
    client = await aiohttp_client(create_app(parse_config({**tree, "cache": {}})))
    info = await client.get(RGB, params={"f": "json"})
    text = await info.text()
    assert info.status == 200, text
    assert json.loads(text)["name"] == "rgb"
    image = await client.get(f"{RGB}/exportImage", params={**EXPORT, "f": "image"})
    assert (image.status, image.content_type) == (200, "image/png")
    tile = await client.get("/tiles/rgb/12/1163/1759.png")
    assert (tile.status, tile.headers["X-Cache"]) == (200, "MISS")
    providers = client.app[PIPELINE].credentials
    assert providers is not None
    provider = providers.for_service("arcgis", f"{secured_imageserver.services}/")
    token = provider._token  # the one token both got: never in what the client reads
    assert token is not None
    for answer, body in ((info, text.encode()), (image, await image.read())):
        assert token.value.encode() not in body
        assert token.value not in str(answer.headers)
    assert PASSWORD not in text
