"""``GET /tiles/<layer>/point?lon=&lat=``: the upstream's identify as band values, checked
against rasterio reads of the source rasters at pixel centres."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from aiohttp.test_utils import TestClient, TestServer
from rasterio.warp import transform

from imageserver.app import create_app
from imageserver.config import CatalogRaster, ImageServerConfig, ServiceSpec
from tests.conftest import DATA, MakeGateway

NAIP = DATA / "m_4709963_se_14_1_20100629.tif"  # 4 x uint8 (R, G, B, NIR), EPSG:26914
NAIP_2020 = DATA / "m_4709963_se_14_1_20200831.tif"  # the same quarter-quad ten years on
DTM = DATA / "dtm.tif"  # float32, nodata -9999 with holes, EPSG:26918


@pytest.fixture
async def client(
    aiohttp_server: Callable[..., Awaitable[TestServer]], make_gateway: MakeGateway
) -> TestClient:
    scenes = (
        CatalogRaster(path=NAIP, acquired=datetime.date(2010, 6, 29)),
        CatalogRaster(path=NAIP_2020, acquired=datetime.date(2020, 8, 31)),
    )
    services = {
        "naip": ServiceSpec(name="naip", path=NAIP),
        "dtm": ServiceSpec(name="dtm", path=DTM),
        "years": ServiceSpec(name="years", rasters=scenes),
    }
    server = await aiohttp_server(create_app(ImageServerConfig(services=services, builtin=False)))
    root = server.make_url("/arcgis/rest/services")
    layers: dict[str, dict[str, object]] = {
        name: {"url": f"{root}/{name}/ImageServer"} for name in ("naip", "dtm")
    }
    for year, object_id in (("2010", 1), ("2020", 2)):
        # A layer locked to one scene: its mosaicRule goes with identify too.
        rule = {"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [object_id]}
        layers[f"y{year}"] = {"url": f"{root}/years/ImageServer", "export": {"mosaicRule": rule}}
    # Variants: a style of the service's NDVI template and the two dates.
    layers["years"] = {
        "url": f"{root}/years/ImageServer",
        "styles": {"natural": {"bandIds": [0, 1, 2]}, "ndvi": {"rasterFunction": "NDVI"}},
        "time": {"values": ["2010-06-29", "2020-08-31"], "default": "2020-08-31"},
    }
    return await make_gateway(layers)


def centres(path: Path, pixels: list[tuple[int, int]]) -> list[tuple[float, float, list[float]]]:
    """``(lon, lat, band values)`` at the centre of each ``(row, col)`` pixel, by rasterio."""
    with rasterio.open(path) as dataset:
        xs, ys = zip(*(dataset.xy(row, col) for row, col in pixels), strict=True)
        lons, lats = transform(dataset.crs, "EPSG:4326", list(xs), list(ys))
        values = [dataset.read(window=((r, r + 1), (c, c + 1)))[:, 0, 0] for r, c in pixels]
    return [(lon, lat, list(v)) for lon, lat, v in zip(lons, lats, values, strict=True)]


async def point(client: TestClient, layer: str, lon: float, lat: float) -> dict[str, object]:
    response = await client.get(f"/tiles/{layer}/point", params={"lon": lon, "lat": lat})
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-cache"
    return await response.json()


async def test_naip_band_values_are_the_source_pixels(client: TestClient) -> None:
    with rasterio.open(NAIP) as dataset:
        height, width = dataset.shape
    pixels = [(100, 200), (height // 2, width // 3), (height - 50, width - 70)]
    for lon, lat, expected in centres(NAIP, pixels):
        answer = await point(client, "naip", lon, lat)
        assert answer["values"] == [int(v) for v in expected]
        assert (answer["lon"], answer["lat"]) == (lon, lat)


async def test_dtm_float_values_and_nodata_as_null(client: TestClient) -> None:
    with rasterio.open(DTM) as dataset:
        band = dataset.read(1)
        nodata = dataset.nodata
    holes = np.argwhere(band == nodata)
    data = np.argwhere(band != nodata)
    assert len(holes) and len(data)
    picked = [tuple(map(int, data[len(data) // 3])), tuple(map(int, data[-1]))]
    for lon, lat, expected in centres(DTM, picked):
        (value,) = (await point(client, "dtm", lon, lat))["values"]
        assert value == pytest.approx(float(expected[0]), rel=1e-6)
    lon, lat, _ = centres(DTM, [tuple(map(int, holes[len(holes) // 2]))])[0]
    assert (await point(client, "dtm", lon, lat))["values"] == [None]
    # Far outside the raster: NoData too, one null per band.
    assert (await point(client, "naip", 10.0, 50.0))["values"] == [None] * 4


async def test_the_layers_mosaic_rule_picks_the_scene(client: TestClient) -> None:
    with rasterio.open(NAIP) as dataset:
        height, width = dataset.shape
    differ = 0
    pixels = [
        (height // 3, width // 4),
        (height // 2, width // 2),
        (2 * height // 3, 3 * width // 5),
    ]
    for lon, lat, _ in centres(NAIP, pixels):
        answers = {}
        for year, path in (("2010", NAIP), ("2020", NAIP_2020)):
            with rasterio.open(path) as dataset:
                (x,), (y,) = transform("EPSG:4326", dataset.crs, [lon], [lat])
                row, col = dataset.index(x, y)
                expected = dataset.read(window=((row, row + 1), (col, col + 1)))[:, 0, 0]
            answers[year] = (await point(client, f"y{year}", lon, lat))["values"]
            assert answers[year] == [int(v) for v in expected], year
        differ += answers["2010"] != answers["2020"]
    assert differ > 0  # the two scenes tell apart


async def test_style_and_time_choose_what_identify_answers(client: TestClient) -> None:
    with rasterio.open(NAIP) as dataset:
        height, width = dataset.shape
    pixels = [(height // 3, width // 4), (height // 2, width // 2)]
    for lon, lat, _ in centres(NAIP, pixels):
        for time, path in (("2010-06-29", NAIP), ("2020-08-31", NAIP_2020), (None, NAIP_2020)):
            with rasterio.open(path) as dataset:
                (x,), (y,) = transform("EPSG:4326", dataset.crs, [lon], [lat])
                row, col = dataset.index(x, y)
                red, _, _, nir = dataset.read(window=((row, row + 1), (col, col + 1)))[:, 0, 0]
            query = {"lon": lon, "lat": lat, "style": "ndvi", **({"time": time} if time else {})}
            response = await client.get("/tiles/years/point", params=query)
            assert response.status == 200, await response.text()
            (value,) = (await response.json())["values"]
            # ArcGIS's NDVI function: U8 (NDVI * 100) + 100 (imageserver/functions.py).
            ndvi = (float(nir) - float(red)) / (float(nir) + float(red))
            assert value == pytest.approx(ndvi * 100 + 100, abs=1), (time, lon, lat)
    refused = await client.get(
        "/tiles/years/point", params={"lon": lon, "lat": lat, "style": "nope"}
    )
    assert refused.status == 400
    assert "nope" in (await refused.json())["error"]["message"]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"lon": "-98"},
        {"lon": "x", "lat": "47"},
        {"lon": "-98", "lat": "91"},
        {"lon": "181", "lat": "47"},
        {"lon": "nan", "lat": "47"},
    ],
)
async def test_a_bad_point_is_400_json(client: TestClient, query: dict[str, str]) -> None:
    response = await client.get("/tiles/naip/point", params=query)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == 400


async def test_an_unknown_layer_is_404_json(client: TestClient) -> None:
    response = await client.get("/tiles/nope/point", params={"lon": "0", "lat": "0"})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == 404
