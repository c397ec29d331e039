"""Cached image services read directly (issue 13, acceptance 4).

The reference ImageServer runs in this process on a real socket with a middleware that
records every request path, so the tests count ``exportImage`` and ``tile`` calls. ``rgb``
is RGB.byte.tif as a cached service (ArcGIS Online Web Mercator scheme, LODs 0-14, tiles
built to level 10); ``rgb_plain`` is the same raster without a cache.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import morecantile
import numpy as np
import pytest
import rasterio
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from PIL import Image
from rasterio.warp import transform_bounds

from gateway.seed import SeedOptions, run_seed
from imageserver.app import create_app
from imageserver.config import ImageServerConfig, ServiceSpec, TileCacheSpec
from imageserver.tilecache import tile_info
from tests.conftest import DATA, MakeGateway, gateway_config

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")


@dataclass
class CountingServer:
    """The reference ImageServer and the request paths it received."""

    server: TestServer
    paths: list[str] = field(default_factory=list)

    def url(self, service: str) -> str:
        return str(self.server.make_url(f"/arcgis/rest/services/{service}/ImageServer"))

    def count(self, operation: str) -> int:
        """Requests of ``exportImage`` or ``tile``."""
        marker = "/exportImage" if operation == "exportImage" else "/ImageServer/tile/"
        return sum(marker in path for path in self.paths)


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> CountingServer:
    paths: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        paths.append(request.path)
        return await handler(request)

    raster = DATA / "RGB.byte.tif"
    services = {
        "rgb": ServiceSpec(
            name="rgb", path=raster, cache=TileCacheSpec(max_level=14, built_max_level=10)
        ),
        "rgb_plain": ServiceSpec(name="rgb_plain", path=raster),
    }
    app = create_app(ImageServerConfig(services=services, builtin=False), middlewares=[record])
    return CountingServer(await aiohttp_server(app), paths)


def tiles_at(z: int, lon: float = -78.0, lat: float = 24.6) -> list[tuple[int, int]]:
    """``(x, y)`` of the tile holding the point and its east and south neighbours."""
    tile = WEB_MERCATOR.tile(lon, lat, z)
    return [(tile.x, tile.y), (tile.x + 1, tile.y), (tile.x, tile.y + 1)]


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGBA")).astype(int)


async def test_cached_tiles_cost_no_export_image(
    make_gateway: MakeGateway, upstream: CountingServer
) -> None:
    client = await make_gateway({"rgb": {"url": upstream.url("rgb"), "formats": ["png", "jpg"]}})
    asked = [(z, x, y) for z in (8, 9, 10) for x, y in tiles_at(z)]
    for z, x, y in asked:
        response = await client.get(f"/tiles/rgb/{z}/{x}/{y}.png")
        assert response.status == 200, await response.text()
        assert decode(await response.read())[..., 3].any()
    assert upstream.count("exportImage") == 0
    assert upstream.count("tile") == len(asked)
    # Cached by the gateway like any tile: asked again, no upstream call at all.
    for z, x, y in asked:
        response = await client.get(f"/tiles/rgb/{z}/{x}/{y}.png")
        assert response.headers["X-Cache"] == "HIT"
    assert upstream.count("tile") == len(asked)
    # A JPEG tile of a PNG cache is the cached tile encoded again, still without a render.
    z, (x, y) = 9, tiles_at(9)[0]
    response = await client.get(f"/tiles/rgb/{z}/{x}/{y}.jpg")
    assert response.status == 200 and response.content_type == "image/jpeg"
    Image.open(io.BytesIO(await response.read())).load()
    assert upstream.count("exportImage") == 0


async def test_cached_tiles_equal_export_image_tiles(
    make_gateway: MakeGateway, upstream: CountingServer
) -> None:
    client = await make_gateway(
        {
            "cached": {"url": upstream.url("rgb"), "formats": ["png"]},
            # One tile per exportImage: the same bbox and size as the cached tile.
            "rendered": {"url": upstream.url("rgb_plain"), "formats": ["png"], "meta_size": [1, 1]},
        }
    )
    compared = 0
    for z in (8, 10):
        for x, y in tiles_at(z):
            cached = decode(await (await client.get(f"/tiles/cached/{z}/{x}/{y}.png")).read())
            rendered = decode(await (await client.get(f"/tiles/rendered/{z}/{x}/{y}.png")).read())
            # Esri's origin is ...342787, TMS 2.0's ...342789244: 2 mm apart, resampling
            # differs at most at edges of the data.
            both = (cached[..., 3] > 0) & (rendered[..., 3] > 0)
            assert both.mean() > 0.2
            assert np.mean(cached[..., 3] != rendered[..., 3]) < 0.01
            assert np.mean(np.abs(cached[both, :3] - rendered[both, :3])) < 1.0
            compared += 1
    assert compared == 6
    assert upstream.count("exportImage") == 6 and upstream.count("tile") == 6


async def test_missing_cached_tiles_fall_back_to_export_image(
    make_gateway: MakeGateway, upstream: CountingServer
) -> None:
    client = await make_gateway(
        {"rgb": {"url": upstream.url("rgb"), "formats": ["png"], "maxzoom": 16}}
    )
    # Level 11 is in the cache's LODs but was not built: 404, then exportImage.
    (x, y) = tiles_at(11)[0]
    response = await client.get(f"/tiles/rgb/11/{x}/{y}.png")
    assert response.status == 200 and decode(await response.read())[..., 3].any()
    assert (upstream.count("tile"), upstream.count("exportImage")) == (1, 1)
    # Level 15 is beyond the LODs: exportImage straight away, metatiles as usual.
    (x, y) = tiles_at(15)[0]
    response = await client.get(f"/tiles/rgb/15/{x}/{y}.png")
    assert response.status == 200
    assert (upstream.count("tile"), upstream.count("exportImage")) == (1, 2)


@pytest.mark.parametrize(
    "layer",
    [
        {"use_service_cache": "never"},
        # A cache holds the default rendering: a layer with export parameters renders.
        {"export": {"bandIds": [2, 1, 0]}},
    ],
)
async def test_a_layer_that_must_render_never_reads_the_cache(
    make_gateway: MakeGateway, upstream: CountingServer, layer: dict[str, object]
) -> None:
    client = await make_gateway({"rgb": {"url": upstream.url("rgb"), "formats": ["png"], **layer}})
    (x, y) = tiles_at(9)[0]
    response = await client.get(f"/tiles/rgb/9/{x}/{y}.png")
    assert response.status == 200
    assert (upstream.count("tile"), upstream.count("exportImage")) == (0, 1)


async def test_a_seed_fills_its_metatiles_from_the_cache(
    upstream: CountingServer, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    config = gateway_config(
        {"rgb": {"url": upstream.url("rgb"), "formats": ["png"], "maxzoom": 10}},
        {"redis_url": redis_url, "prefix": key_prefix},
    )
    options = SeedOptions("rgb", (8, 10), state=tmp_path / "state.json")
    assert await run_seed(config, options) == 0
    # Every tile over the data, read one by one; tiles beside it are empty without a call.
    assert upstream.count("exportImage") == 0
    tiles = upstream.count("tile")
    with rasterio.open(DATA / "RGB.byte.tif") as scene:
        west, south, east, north = transform_bounds(scene.crs, "EPSG:4326", *scene.bounds, 21)
    assert tiles == len(list(WEB_MERCATOR.tiles(west, south, east, north, [8, 9, 10])))
    assert await run_seed(config, options) == 0
    assert upstream.count("tile") == tiles  # all fresh in the cache


# -- a cache that misbehaves -------------------------------------------------------------------

TILE_ANSWERS: dict[str, Callable[[], web.Response]] = {
    # ArcGIS' error JSON under HTTP 200.
    "error_json": lambda: web.json_response(
        {"error": {"code": 404, "message": "Tile not found", "details": []}}
    ),
    # A PNG cut short: the signature is right, the pixels are not all there.
    "truncated": lambda: web.Response(body=encode_png((10, 20, 30))[:60], content_type="image/png"),
    "http500": lambda: web.Response(status=500, text="Internal Server Error"),
}


def encode_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (256, 256), (*colour, 255)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class ScriptedCache(CountingServer):
    """A cached service whose tiles answer ``TILE_ANSWERS[behaviour]``."""

    behaviour: str = "error_json"


@pytest.fixture
async def scripted(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> ScriptedCache:
    """A cached service (the standard Web Mercator ``tileInfo``) whose exportImage draws
    solid green."""
    app = web.Application()
    state: dict[str, ScriptedCache] = {}
    root = "/arcgis/rest/services/scripted/ImageServer"

    async def info(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": "scripted",
                "singleFusedMapCache": True,
                "tileInfo": tile_info(TileCacheSpec()),
            }
        )

    async def tile(request: web.Request) -> web.Response:
        state["server"].paths.append(request.path)
        return TILE_ANSWERS[state["server"].behaviour]()

    async def export(request: web.Request) -> web.Response:
        state["server"].paths.append(request.path)
        return web.Response(body=encode_png((0, 200, 0)), content_type="image/png")

    app.router.add_get(root, info)
    app.router.add_get(f"{root}/tile/{{level}}/{{row}}/{{col}}", tile)
    app.router.add_get(f"{root}/exportImage", export)
    state["server"] = ScriptedCache(await aiohttp_server(app))
    return state["server"]


@pytest.mark.parametrize("behaviour", ["error_json", "truncated"])
async def test_an_error_json_or_broken_cached_tile_falls_back_to_export_image(
    make_gateway: MakeGateway, scripted: ScriptedCache, behaviour: str
) -> None:
    scripted.behaviour = behaviour
    client = await make_gateway(
        {"s": {"url": scripted.url("scripted"), "formats": ["png"], "maxzoom": 5}}
    )
    for _ in range(2):
        response = await client.get("/tiles/s/3/2/3.png")
        assert response.status == 200
        assert tuple(decode(await response.read())[128, 128]) == (0, 200, 0, 255)
    # Once each: the rendered tile is cached, the broken cached one never was.
    assert (scripted.count("tile"), scripted.count("exportImage")) == (1, 1)


async def test_a_failing_cache_is_an_upstream_error_not_a_render(
    make_gateway: MakeGateway, scripted: ScriptedCache
) -> None:
    scripted.behaviour = "http500"
    client = await make_gateway(
        {"s": {"url": scripted.url("scripted"), "formats": ["png"], "maxzoom": 5}}
    )
    for _ in range(2):
        response = await client.get("/tiles/s/3/2/3.png")
        assert response.status == 502
        assert (await response.json())["error"]["code"] == 502
    assert (scripted.count("tile"), scripted.count("exportImage")) == (2, 0)
