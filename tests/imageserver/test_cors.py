"""CORS: ArcGIS Server lets every origin read its answers unless ``allowedOrigins`` says
otherwise; esri-leaflet's imageMapLayer needs that to read exportImage JSON."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from imageserver.app import create_app
from imageserver.config import ImageServerConfig, SecurityConfig
from tests.imageserver.conftest import AiohttpClient
from tests.imageserver.helpers import SERVICES, export_path

ORIGIN = "https://maps.example.org"


async def test_every_origin_is_allowed_by_default(client: TestClient) -> None:
    for path in (
        "/arcgis/rest/info",
        f"{SERVICES}/rgb/ImageServer",
        export_path("rgb") + "?bbox=200000,2700000,210000,2710000&f=image&format=png",
        f"{SERVICES}/nope/ImageServer",
    ):
        response = await client.get(path, headers={"Origin": ORIGIN})
        assert response.status == 200, path
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN, path
        assert "Origin" in response.headers["Vary"], path


async def test_same_origin_requests_get_no_cors_headers(client: TestClient) -> None:
    response = await client.get("/arcgis/rest/info")
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_preflight_allows_the_token_header(client: TestClient) -> None:
    response = await client.options(
        export_path("rgb"),
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-esri-authorization, content-type",
        },
    )
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST"}
    assert response.headers["Access-Control-Allow-Headers"] == "x-esri-authorization, content-type"


async def test_preflight_of_an_unknown_path_is_404(client: TestClient) -> None:
    response = await client.options(
        "/nowhere", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert response.status == 404


async def test_allowed_origins_restricts_readers(aiohttp_client: AiohttpClient) -> None:
    security = SecurityConfig(allowed_origins=(ORIGIN,))
    client = await aiohttp_client(create_app(ImageServerConfig(security=security)))
    allowed = await client.get("/arcgis/rest/info", headers={"Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = await client.get("/arcgis/rest/info", headers={"Origin": "https://evil.example"})
    assert other.status == 200
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await client.options(
        f"{SERVICES}/bluemarble/ImageServer",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers
