"""A layer's zoom range defaults to what its service's pixel size supports (issue 13).

RGB.byte.tif has 300 m pixels (UTM 18N, ~24.6° N: ~330 Web Mercator metres, between
TileMatrix 9 at 305.7 m and 8 at 611.5 m); dtm.tif 2 m pixels (UTM 18N, ~40.6° N: ~2.6
Web Mercator metres, TileMatrix 16 at 2.39 m). The expected levels are computed here from the
rasters with rasterio, not taken from the gateway.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
import rasterio
from aiohttp.test_utils import TestServer
from lxml import etree
from rasterio.warp import transform

from imageserver.app import create_app
from imageserver.config import ImageServerConfig, ServiceSpec
from tests.conftest import DATA, MakeGateway

WMTS = "{http://www.opengis.net/wmts/1.0}"
OWS = "{http://www.opengis.net/ows/1.1}"
LEVEL0 = 2 * math.pi * 6378137 / 256  # WebMercatorQuad cell size at TileMatrix 0, metres


def expected_native_zoom(name: str) -> int:
    """The first WebMercatorQuad level whose cell is at most the raster's pixel in Web
    Mercator metres at the raster's centre."""
    with rasterio.open(DATA / name) as dataset:
        left, bottom, right, top = dataset.bounds
        cx, cy, pixel = (left + right) / 2, (bottom + top) / 2, dataset.res[0]
        xs, ys = transform(dataset.crs, "EPSG:3857", [cx - pixel / 2, cx + pixel / 2], [cy, cy])
    native = math.hypot(xs[1] - xs[0], ys[1] - ys[0])
    return next(z for z in range(31) if LEVEL0 / 2**z <= native)


@pytest.fixture
async def upstream_url(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    services = {
        "rgb": ServiceSpec(name="rgb", path=DATA / "RGB.byte.tif"),
        "dtm": ServiceSpec(name="dtm", path=DATA / "dtm.tif"),
    }
    server = await aiohttp_server(create_app(ImageServerConfig(services=services, builtin=False)))
    return str(server.make_url("/arcgis/rest/services"))


def test_the_expected_levels_are_what_the_pixel_sizes_say() -> None:
    assert expected_native_zoom("RGB.byte.tif") == 9
    assert expected_native_zoom("dtm.tif") == 16


async def test_maxzoom_follows_the_pixel_size_plus_overzoom(
    make_gateway: MakeGateway, upstream_url: str
) -> None:
    client = await make_gateway(
        {
            "rgb": {"url": f"{upstream_url}/rgb/ImageServer", "formats": ["png"]},
            "dtm": {"url": f"{upstream_url}/dtm/ImageServer", "formats": ["png"]},
            "dtm3": {"url": f"{upstream_url}/dtm/ImageServer", "overzoom": 3},
            "fixed": {"url": f"{upstream_url}/dtm/ImageServer", "minzoom": 2, "maxzoom": 12},
        }
    )
    rgb, dtm = expected_native_zoom("RGB.byte.tif"), expected_native_zoom("dtm.tif")
    expected = {"rgb": (0, rgb + 1), "dtm": (0, dtm + 1), "dtm3": (0, dtm + 3), "fixed": (2, 12)}
    for name, (low, high) in expected.items():
        document = await (await client.get(f"/tiles/{name}/tilejson.json")).json()
        assert (document["minzoom"], document["maxzoom"]) == (low, high), name
    viewer = await (await client.get("/layers.json")).json()
    assert {
        layer["name"]: (layer["minzoom"], layer["maxzoom"]) for layer in viewer["layers"]
    } == expected
    # WMTS: the TileMatrixSetLimits of WebMercatorQuad end at the same level.
    capabilities = etree.fromstring(
        await (await client.get("/wmts/1.0.0/WMTSCapabilities.xml")).read()
    )
    for layer in capabilities.iter(f"{WMTS}Layer"):
        name = layer.findtext(f"{OWS}Identifier")
        for link in layer.iter(f"{WMTS}TileMatrixSetLink"):
            if link.findtext(f"{WMTS}TileMatrixSet") != "WebMercatorQuad":
                continue
            levels = [int(m.text) for m in link.iter(f"{WMTS}TileMatrix")]
            assert max(levels) == expected[name][1], name
    # OGC API - Tiles: the tileset's tileMatrixSetLimits too.
    for name, (low, high) in expected.items():
        tileset = await (
            await client.get(f"/ogcapi/collections/{name}/map/tiles/WebMercatorQuad?f=json")
        ).json()
        levels = [int(limit["tileMatrix"]) for limit in tileset["tileMatrixSetLimits"]]
        assert (min(levels), max(levels)) == (low, high), name
    # Beyond the range: 404 without asking the upstream.
    response = await client.get(f"/tiles/rgb/{rgb + 2}/0/0.png")
    assert response.status == 404
