"""A cached image service: ``tileInfo`` in its service info and ``tile/<level>/<row>/<col>``
(ArcGIS REST "Image Service" and "Image Tile", docs/arcgis-rest.md section 2.1)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from rasterio.warp import transform

from imageserver.app import create_app
from imageserver.config import ImageServerConfig, ServiceSpec, TileCacheSpec
from tests.imageserver.conftest import AiohttpClient, data_path
from tests.imageserver.helpers import SERVICES, decode_png, export

ESRI_ORIGIN = (-20037508.342787, 20037508.342787)


@pytest.fixture
async def cached(aiohttp_client: AiohttpClient) -> TestClient:
    """``rgb`` cached up to level 14 (built to 10), ``dtm`` without a cache."""
    services = {
        "rgb": ServiceSpec(
            name="rgb",
            path=data_path("RGB.byte.tif"),
            cache=TileCacheSpec(max_level=14, built_max_level=10),
        ),
        "dtm": ServiceSpec(name="dtm", path=data_path("dtm.tif")),
    }
    return await aiohttp_client(create_app(ImageServerConfig(services=services, builtin=False)))


def tile_of(lon: float, lat: float, level: int) -> tuple[int, int]:
    """``(row, col)`` of the tile holding a point, from the scheme's own definition."""
    (x,), (y,) = transform("EPSG:4326", "EPSG:3857", [lon], [lat])
    span = 256 * 156543.03392800014 / 2**level
    return math.floor((ESRI_ORIGIN[1] - y) / span), math.floor((x - ESRI_ORIGIN[0]) / span)


async def test_service_info_has_the_standard_web_mercator_tile_info(cached: TestClient) -> None:
    info = await (await cached.get(f"{SERVICES}/rgb/ImageServer", params={"f": "json"})).json()
    assert info["singleFusedMapCache"] is True
    tile_info = info["tileInfo"]
    assert (tile_info["rows"], tile_info["cols"], tile_info["dpi"]) == (256, 256, 96)
    assert tile_info["origin"] == {"x": ESRI_ORIGIN[0], "y": ESRI_ORIGIN[1]}
    assert tile_info["spatialReference"] == {"wkid": 102100, "latestWkid": 3857}
    lods = tile_info["lods"]
    assert [lod["level"] for lod in lods] == list(range(15))
    assert lods[0]["resolution"] == 156543.03392800014
    assert lods[0]["scale"] == pytest.approx(591657527.591555)
    # Scale = resolution * dpi / 0.0254 m per inch, every level (Esri rounds to ~2e-6).
    for lod in lods:
        assert lod["scale"] == pytest.approx(lod["resolution"] * 96 / 0.0254, rel=1e-5)
    plain = await (await cached.get(f"{SERVICES}/dtm/ImageServer", params={"f": "json"})).json()
    assert plain["singleFusedMapCache"] is False and "tileInfo" not in plain


async def test_a_tile_is_the_export_image_of_its_bbox(cached: TestClient) -> None:
    level = 9
    row, col = tile_of(-78.0, 24.6, level)
    response = await cached.get(f"{SERVICES}/rgb/ImageServer/tile/{level}/{row}/{col}")
    assert response.status == 200 and response.content_type == "image/png"
    tile = decode_png(await response.read())
    span = 256 * 156543.03392800014 / 2**level
    xmin, ymax = ESRI_ORIGIN[0] + col * span, ESRI_ORIGIN[1] - row * span
    _, body = await export(
        cached,
        "rgb",
        bbox=f"{xmin},{ymax - span},{xmin + span},{ymax}",
        bboxSR=3857,
        imageSR=3857,
        size="256,256",
        format="png32",
    )
    assert np.array_equal(tile, decode_png(body))
    assert tile[..., 3].any() and tile[..., :3].std() > 5  # real imagery, not a blank tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/11/{row11}/{col11}",  # a level in lods the cache was not built for
        "tile/9/0/0",  # over the Arctic, far from the data
        "tile/20/0/0",  # beyond the lods
        "tile/2/9/0",  # outside the matrix
    ],
)
async def test_a_tile_the_cache_does_not_hold_is_404(cached: TestClient, path: str) -> None:
    row11, col11 = tile_of(-78.0, 24.6, 11)
    url = f"{SERVICES}/rgb/ImageServer/" + path.format(row11=row11, col11=col11)
    response = await cached.get(url)
    assert response.status == 404
    assert json.loads(await response.text())["error"]["code"] == 404


async def test_tile_of_a_service_without_cache_or_with_bad_numbers_is_an_error(
    cached: TestClient,
) -> None:
    for url in (f"{SERVICES}/dtm/ImageServer/tile/3/2/2", f"{SERVICES}/rgb/ImageServer/tile/a/b/c"):
        response = await cached.get(url)
        assert response.status == 200
        assert json.loads(await response.text())["error"]["code"] == 400
