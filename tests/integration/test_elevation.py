"""Elevation tiles (Terrain-RGB, Terrarium) and WebP tiles from the gateway, against the
reference ImageServer on a socket, checked against the rasters read with rasterio.

The heights are decoded here with the encodings' published formulas (Mapbox "Terrain-RGB v1",
Tilezen "terrarium"), not with the gateway's encoder, and compared with ``tests/data/dtm.tif``
(float32, EPSG:26918, nodata -9999 with holes) at the centre of every tile pixel.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pytest
import rasterio
from lxml import etree
from PIL import Image
from pyproj import Transformer
from rasterio.warp import transform_bounds

from gateway.config import ConfigError, parse_config
from gateway.seed import SeedOptions, run_seed
from tests.conftest import DATA, MakeGateway, gateway_config

DTM = DATA / "dtm.tif"
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
# One step of each encoding (metres): a decoded height is within half a step of the source.
STEP = {"terrain-rgb": 0.1, "terrarium": 1 / 256}
# Pixel centres this close (in source pixels) to a source pixel's edge are skipped: nearest
# neighbour resampling may pick either side there.
EDGE = 0.05


def decode(png: bytes, encoding: str) -> np.ndarray:
    """Heights (metres) of a Terrain-RGB or Terrarium PNG, by the published formulas."""
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"  # opaque: browsers premultiply alpha, losing RGB at alpha 0
        rgb = np.asarray(image, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if encoding == "terrain-rgb":
        return -10000 + (r * 256 * 256 + g * 256 + b) * 0.1
    return r * 256 + g + b / 256 - 32768


def source_at_pixel_centres(z: int, x: int, y: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The dtm.tif height at the centre of each pixel of tile z/x/y (nearest source pixel, NaN
    for nodata, 0 outside the raster) and a mask of the pixels far enough from a source pixel
    edge to be compared."""
    left, _, right, top = WEB_MERCATOR.xy_bounds(x, y, z)
    step = (right - left) / size
    xs = left + (np.arange(size) + 0.5) * step
    ys = top - (np.arange(size) + 0.5) * step
    grid_x, grid_y = np.meshgrid(xs, ys)
    with rasterio.open(DTM) as dataset:
        to_source = Transformer.from_crs(3857, dataset.crs, always_xy=True)
        east, north = to_source.transform(grid_x, grid_y)
        cols, rows = ~dataset.transform @ (east, north)
        data = dataset.read(1, masked=True)
    inside = (rows >= 0) & (rows < data.shape[0]) & (cols >= 0) & (cols < data.shape[1])
    frac_r, frac_c = rows - np.floor(rows), cols - np.floor(cols)
    clear = (np.minimum(frac_r, 1 - frac_r) > EDGE) & (np.minimum(frac_c, 1 - frac_c) > EDGE)
    r = np.clip(np.floor(rows).astype(int), 0, data.shape[0] - 1)
    c = np.clip(np.floor(cols).astype(int), 0, data.shape[1] - 1)
    heights = np.where(data.mask[r, c], np.nan, data.filled(np.nan)[r, c])
    return np.where(inside, heights, 0.0), clear


def dtm_layer(imageserver_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": f"{imageserver_url}/dtm/ImageServer",
        "formats": ["png", "terrain-rgb", "terrarium"],
        "maxzoom": 19,
        # Nearest neighbour: each tile pixel is one source pixel, comparable exactly.
        "export": {"interpolation": "RSP_NearestNeighbor"},
        **extra,
    }


def dtm_bounds() -> tuple[float, float, float, float]:
    with rasterio.open(DTM) as dataset:
        return transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds, densify_pts=21)


def centre_tile(z: int) -> morecantile.Tile:
    with rasterio.open(DTM) as dataset:
        to_wgs84 = Transformer.from_crs(dataset.crs, 4326, always_xy=True)
        b = dataset.bounds
        lon, lat = to_wgs84.transform((b.left + b.right) / 2, (b.bottom + b.top) / 2)
    return WEB_MERCATOR.tile(lon, lat, z)


@pytest.mark.parametrize("encoding", ["terrain-rgb", "terrarium"])
@pytest.mark.parametrize("meta_size", [[1, 1], [4, 4]])
async def test_heights_match_the_dem_at_pixel_centres(
    make_gateway: MakeGateway, imageserver_url: str, encoding: str, meta_size: list[int]
) -> None:
    client = await make_gateway({"dtm": dtm_layer(imageserver_url, meta_size=meta_size)})
    compared = holes = 0
    tile = centre_tile(17)
    # The centre tile and one to its south-east: nodata holes, and the raster's edge nearby.
    for x, y in ((tile.x, tile.y), (tile.x + 1, tile.y + 1)):
        response = await client.get(f"/tiles/dtm/{encoding}/17/{x}/{y}.png")
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "image/png"
        heights = decode(await response.read(), encoding)
        assert heights.shape == (256, 256)
        expected, clear = source_at_pixel_centres(17, x, y, 256)
        valid = clear & ~np.isnan(expected)
        # Nearest neighbour, float32 carried as is: only the encoding's rounding remains.
        assert np.abs(heights[valid] - expected[valid]).max() <= STEP[encoding] / 2 + 1e-4
        nodata = clear & np.isnan(expected)
        # No data is height 0 (the module's documented convention).
        assert np.all(heights[nodata] == 0)
        compared += int(valid.sum())
        holes += int(nodata.sum())
    # The check covered real terrain and real holes.
    assert compared > 50_000
    assert holes > 50


async def test_encodings_are_cached_apart_and_outside_tiles_are_sea_level(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    client = await make_gateway({"dtm": dtm_layer(imageserver_url)})
    tile = centre_tile(16)
    bodies = {}
    for encoding in ("terrain-rgb", "terrarium"):
        url = f"/tiles/dtm/{encoding}/16/{tile.x}/{tile.y}.png"
        first = await client.get(url)
        assert first.headers["X-Cache"] == "MISS"
        bodies[encoding] = await first.read()
        second = await client.get(url)
        assert second.headers["X-Cache"] == "HIT"
        assert await second.read() == bodies[encoding]
    plain = await client.get(f"/tiles/dtm/16/{tile.x}/{tile.y}.png")
    assert plain.headers["X-Cache"] == "MISS"
    assert len({*bodies.values(), await plain.read()}) == 3
    # Far from the data: no upstream call, height 0 in each encoding.
    for encoding in ("terrain-rgb", "terrarium"):
        response = await client.get(f"/tiles/dtm/{encoding}/16/0/0.png")
        assert response.status == 200
        assert np.all(decode(await response.read(), encoding) == 0)
    # @2x: 512 pixels over the same bbox.
    response = await client.get(f"/tiles/dtm/terrarium/16/{tile.x}/{tile.y}@2x.png")
    assert decode(await response.read(), "terrarium").shape == (512, 512)


async def test_elevation_addresses_and_errors(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    client = await make_gateway(
        {
            "dtm": dtm_layer(imageserver_url, formats=["png", "terrarium"]),
            "rgb": {"url": f"{imageserver_url}/rgb/ImageServer", "formats": ["png"]},
        }
    )
    tile = centre_tile(16)
    cases = {
        # The extension never names an encoding.
        f"/tiles/dtm/16/{tile.x}/{tile.y}.terrarium": 400,
        f"/tiles/dtm/terrarium/16/{tile.x}/{tile.y}.jpg": 400,
        # Not offered by the layer.
        f"/tiles/dtm/terrain-rgb/16/{tile.x}/{tile.y}.png": 400,
        f"/tiles/rgb/terrarium/16/{tile.x}/{tile.y}.png": 400,
        f"/tiles/nope/terrarium/16/{tile.x}/{tile.y}.png": 404,
        f"/tiles/dtm/terrarium/25/{tile.x}/{tile.y}.png": 404,
    }
    for url, status in cases.items():
        response = await client.get(url)
        assert response.status == status, url
        assert "error" in await response.json()


async def test_tilejson_for_maplibre_raster_dem(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    client = await make_gateway({"dtm": dtm_layer(imageserver_url)})
    for encoding, name in (("terrain-rgb", "mapbox"), ("terrarium", "terrarium")):
        response = await client.get(f"/tiles/dtm/tilejson.json?format={encoding}")
        assert response.status == 200
        document = await response.json()
        assert document["encoding"] == name
        assert document["tileSize"] == 256
        assert document["tiles"][0].endswith(f"/tiles/dtm/{encoding}/{{z}}/{{x}}/{{y}}.png")
        assert (document["minzoom"], document["maxzoom"]) == (0, 19)
        # The raster's extent in lon/lat (the service info's extent, as the gateway reads it).
        assert document["bounds"] == pytest.approx(dtm_bounds(), abs=1e-6)
    plain = await (await client.get("/tiles/dtm/tilejson.json")).json()
    assert "encoding" not in plain and plain["tiles"][0].endswith(".png")
    retina = await (await client.get("/tiles/dtm/tilejson.json?format=terrarium&scale=2")).json()
    assert retina["tiles"][0].endswith("/terrarium/{z}/{x}/{y}@2x.png")


async def test_elevation_encodings_stay_out_of_wmts_and_ogcapi(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    client = await make_gateway({"dtm": dtm_layer(imageserver_url)})
    text = await (await client.get("/wmts/1.0.0/WMTSCapabilities.xml")).read()
    formats = etree.fromstring(text).findall(".//{http://www.opengis.net/wmts/1.0}Format")
    assert [element.text for element in formats] == ["image/png"]
    tileset = await (await client.get("/ogcapi/collections/dtm/map/tiles/WebMercatorQuad")).json()
    assert tileset["mediaTypes"] == ["image/png"]


async def test_seed_an_elevation_encoding_then_serve_it_from_the_cache(
    make_gateway: MakeGateway,
    imageserver_url: str,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    cache = {"redis_url": redis_url, "prefix": key_prefix}
    layers = {"dtm": dtm_layer(imageserver_url)}
    options = SeedOptions("dtm", (15, 16), format="terrarium", state=tmp_path / "state.json")
    assert await run_seed(gateway_config(layers, cache), options) == 0
    client = await make_gateway(layers, cache)
    tile = centre_tile(16)
    seeded = await client.get(f"/tiles/dtm/terrarium/16/{tile.x}/{tile.y}.png")
    assert seeded.headers["X-Cache"] == "HIT"
    expected, clear = source_at_pixel_centres(16, tile.x, tile.y, 256)
    heights = decode(await seeded.read(), "terrarium")
    valid = clear & ~np.isnan(expected)
    assert valid.sum() > 1000
    assert np.abs(heights[valid] - expected[valid]).max() <= STEP["terrarium"] / 2 + 1e-4
    # Only the encoding asked for was seeded.
    other = await client.get(f"/tiles/dtm/terrain-rgb/16/{tile.x}/{tile.y}.png")
    assert other.headers["X-Cache"] == "MISS"


def test_config_needs_a_map_format_and_reserves_encoding_names() -> None:
    layer = {"url": "http://upstream.test/arcgis/rest/services/dtm/ImageServer"}
    with pytest.raises(ConfigError, match="map format"):
        parse_config({"layers": {"dtm": {**layer, "formats": ["terrarium"]}}})
    with pytest.raises(ConfigError, match="elevation encoding"):
        parse_config(
            {
                "tile_matrix_sets": {
                    "terrarium": {"crs": "EPSG:3857", "extent": [0, 0, 1000, 1000]}
                },
                "layers": {"dtm": {**layer, "formats": ["png", "terrarium"]}},
            }
        )


# -- WebP ----------------------------------------------------------------------------------


async def test_webp_tiles_encoded_from_the_metatile(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    client = await make_gateway(
        {"rgb": {"url": f"{imageserver_url}/rgb/ImageServer", "formats": ["png", "webp"]}}
    )
    tile = WEB_MERCATOR.tile(-78.32, 24.0, 10)
    address = f"10/{tile.x}/{tile.y}"
    webp = await client.get(f"/tiles/rgb/{address}.webp")
    assert webp.status == 200
    assert webp.headers["Content-Type"] == "image/webp"
    png = await client.get(f"/tiles/rgb/{address}.png")
    with Image.open(io.BytesIO(await webp.read())) as image:
        assert image.format == "WEBP" and image.size == (256, 256)
        lossy = np.asarray(image.convert("RGBA"), dtype=np.int16)
    with Image.open(io.BytesIO(await png.read())) as image:
        exact = np.asarray(image.convert("RGBA"), dtype=np.int16)
    # The same picture (lossy WebP at quality 80): transparency kept, colours close.
    assert np.array_equal(lossy[..., 3] > 127, exact[..., 3] > 127)
    opaque = exact[..., 3] == 255
    assert opaque.any()
    assert np.abs(lossy[opaque][:, :3] - exact[opaque][:, :3]).mean() < 4
    # Outside the data: a transparent WebP without an upstream call.
    empty = await client.get("/tiles/rgb/10/0/0.webp")
    with Image.open(io.BytesIO(await empty.read())) as image:
        assert image.format == "WEBP" and image.getextrema()[3] == (0, 0)


async def test_webp_advertised_in_every_document(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    client = await make_gateway(
        {"rgb": {"url": f"{imageserver_url}/rgb/ImageServer", "formats": ["webp", "png"]}}
    )
    text = await (await client.get("/wmts/1.0.0/WMTSCapabilities.xml")).read()
    root = etree.fromstring(text)
    wmts = "{http://www.opengis.net/wmts/1.0}"
    assert [f.text for f in root.iter(f"{wmts}Format")] == ["image/webp", "image/png"]
    templates = [r.get("template") for r in root.iter(f"{wmts}ResourceURL")]
    assert any(t.endswith(".webp") for t in templates)
    tilejson = await (await client.get("/tiles/rgb/tilejson.json")).json()
    assert tilejson["tiles"][0].endswith("/{z}/{x}/{y}.webp")
    tileset = await (await client.get("/ogcapi/collections/rgb/map/tiles/WebMercatorQuad")).json()
    assert tileset["mediaTypes"] == ["image/webp", "image/png"]
    assert any(
        item["href"].endswith("?f=webp") and item["type"] == "image/webp"
        for item in tileset["links"]
        if item["rel"] == "item"
    )
    layers = await (await client.get("/layers.json")).json()
    assert layers["layers"][0]["tiles"].endswith(".webp")
    tile = WEB_MERCATOR.tile(-78.32, 24.0, 8)
    ogc = await client.get(
        f"/ogcapi/collections/rgb/map/tiles/WebMercatorQuad/8/{tile.y}/{tile.x}",
        headers={"Accept": "image/webp"},
    )
    assert ogc.status == 200 and ogc.headers["Content-Type"] == "image/webp"
    kvp = await client.get(
        "/wmts",
        params={
            "SERVICE": "WMTS",
            "REQUEST": "GetTile",
            "VERSION": "1.0.0",
            "LAYER": "rgb",
            "STYLE": "default",
            "FORMAT": "image/webp",
            "TILEMATRIXSET": "WebMercatorQuad",
            "TILEMATRIX": "8",
            "TILEROW": str(tile.y),
            "TILECOL": str(tile.x),
        },
    )
    assert kvp.status == 200 and kvp.headers["Content-Type"] == "image/webp"
