"""Tiles of every TileMatrixSet: what exportImage is asked, shared cache entries, empty tiles."""

from __future__ import annotations

import io

import morecantile
import pytest
from PIL import Image
from pyproj import CRS

from gateway.config import ConfigError, parse_config
from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream

UTM32 = {
    "crs": "EPSG:25832",
    "extent": [280000.0, 5200000.0, 920000.0, 6100000.0],
    "tile_size": 256,
    "minzoom": 0,
    "maxzoom": 12,
}


def layer(url: str, **extra: object) -> dict[str, object]:
    """A layer with metatiles off: one tile, one exportImage call (test_metatiles.py has more)."""
    return {"url": url, "formats": ["png", "jpg"], "meta_size": [1, 1], **extra}


def sent_bbox(upstream: FakeUpstream, index: int = -1) -> list[float]:
    return [float(v) for v in upstream.queries[index]["bbox"].split(",")]


@pytest.mark.parametrize(
    ("tms", "wkid", "z", "x", "y"),
    [
        ("WGS1984Quad", "4326", 2, 5, 1),
        ("WorldCRS84Quad", "4326", 3, 9, 2),
        ("WebMercatorQuad", "3857", 4, 8, 5),
    ],
)
async def test_bbox_is_sent_in_the_sets_crs_in_x_y_order(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    tms: str,
    wkid: str,
    z: int,
    x: int,
    y: int,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.get(f"/tiles/fake/{tms}/{z}/{x}/{y}.png")
    assert response.status == 200
    query = fake_upstream.queries[-1]
    assert query["bboxSR"] == query["imageSR"] == wkid
    assert query["size"] == "256,256"
    bounds = morecantile.tms.get(tms).xy_bounds(morecantile.Tile(x, y, z))
    expected = [bounds.left, bounds.bottom, bounds.right, bounds.top]
    assert sent_bbox(fake_upstream) == pytest.approx(expected, rel=1e-12, abs=1e-9)
    if tms != "WebMercatorQuad":  # lon/lat order for ArcGIS, whatever the CRS's axis order
        west, south, east, north = sent_bbox(fake_upstream)
        assert east - west == pytest.approx(180 / 2**z) and north - south == pytest.approx(
            180 / 2**z
        )
        assert -180 <= west < east <= 180 and -90 <= south < north <= 90


async def test_retina_sets_share_the_cache_of_their_base_at_twice_the_pixels(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    first = await client.get("/tiles/fake/WGS1984Quad_2x/3/4/1.png")
    assert first.headers["X-Cache"] == "MISS"
    assert Image.open(io.BytesIO(await first.read())).size == (512, 512)
    assert fake_upstream.queries[-1]["size"] == "512,512"
    assert (await client.get("/tiles/fake/WGS1984Quad/3/4/1@2x.png")).headers["X-Cache"] == "HIT"
    # The short XYZ form is WebMercatorQuad; its @2x tile is WebMercatorQuad_2x.
    assert (await client.get("/tiles/fake/2/1/1@2x.jpg")).headers["X-Cache"] == "MISS"
    assert (await client.get("/tiles/fake/WebMercatorQuad_2x/2/1/1.jpg")).headers[
        "X-Cache"
    ] == "HIT"
    assert len(fake_upstream.queries) == 2
    assert (await client.get("/tiles/fake/WebMercatorQuad_2x/2/1/1@2x.jpg")).status == 400


async def test_tiles_outside_the_data_extent_cost_no_upstream_call(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    # Around Essen: a few tiles at z=8 in WebMercatorQuad, one row/column pair in WGS1984Quad.
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, bounds=[6.9, 51.4, 7.1, 51.5], background="#102030")}
    )
    inside = await client.get("/tiles/fake/8/132/85.png")
    assert inside.status == 200 and inside.headers["X-Cache"] == "MISS"
    assert len(fake_upstream.queries) == 1

    etags = set()
    for path in ("/tiles/fake/8/10/10.png", "/tiles/fake/3/0/0.png", "/tiles/fake/8/10/10.png"):
        outside = await client.get(path)
        assert outside.status == 200
        assert outside.headers["Cache-Control"].startswith("public, max-age=")
        image = Image.open(io.BytesIO(await outside.read()))
        assert image.size == (256, 256)
        assert image.convert("RGBA").getextrema()[3] == (0, 0)  # fully transparent
        etags.add(outside.headers["ETag"])
    assert len(etags) == 1

    jpeg = await client.get("/tiles/fake/WGS1984Quad_2x/4/2/2.jpg")
    image = Image.open(io.BytesIO(await jpeg.read()))
    assert image.format == "JPEG" and image.size == (512, 512)
    assert image.getpixel((100, 100)) == pytest.approx((16, 32, 48), abs=2)
    assert len(fake_upstream.queries) == 1


async def test_custom_tile_matrix_set_from_the_config(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, aiohttp_client: object
) -> None:
    from gateway.app import create_app

    config = parse_config(
        {
            "tile_matrix_sets": {"UTM32N": UTM32},
            "layers": {
                "fake": layer(fake_upstream.url, tile_matrix_sets=["UTM32N", "UTM32N_2x"]),
            },
        }
    )
    client = await aiohttp_client(create_app(config))  # type: ignore[operator]
    response = await client.get("/tiles/fake/UTM32N/3/2/5.png")
    assert response.status == 200, await response.text()
    query = fake_upstream.queries[-1]
    assert query["bboxSR"] == query["imageSR"] == "25832"
    custom = morecantile.TileMatrixSet.custom(
        UTM32["extent"], CRS.from_epsg(25832), minzoom=0, maxzoom=12, id="UTM32N"
    )
    bounds = custom.xy_bounds(morecantile.Tile(2, 5, 3))
    assert sent_bbox(fake_upstream) == pytest.approx(
        [bounds.left, bounds.bottom, bounds.right, bounds.top], rel=1e-12
    )
    assert (await client.get("/tiles/fake/UTM32N/3/2/5@2x.png")).headers["X-Cache"] == "MISS"
    assert (await client.get("/tiles/fake/UTM32N_2x/3/2/5.png")).headers["X-Cache"] == "HIT"
    assert (await client.get("/tiles/fake/UTM32N/3/8/5.png")).status == 404  # TileCol 8 of 8
    assert (await client.get("/tiles/fake/UTM32N/13/0/0.png")).status == 404
    assert (await client.get("/tiles/fake/WebMercatorQuad/1/0/0.png")).status == 404  # not served


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tile_matrix_sets": {"X": {**UTM32, "crs": "EPSG:0"}}}, "tile_matrix_sets.X.crs:"),
        ({"tile_matrix_sets": {"X": {**UTM32, "crs": "+proj=utm"}}}, "tile_matrix_sets.X.crs:"),
        ({"tile_matrix_sets": {"X": {**UTM32, "extent": [1, 1, 0, 2]}}}, "tile_matrix_sets.X:"),
        ({"tile_matrix_sets": {"WGS1984Quad": UTM32}}, "tile_matrix_sets: 'WGS1984Quad'"),
        (
            {"layers": {"a": {"url": "http://h/s/ImageServer", "tile_matrix_sets": ["Nope"]}}},
            "layers.a.tile_matrix_sets: unknown TileMatrixSet 'Nope'",
        ),
        (
            {"layers": {"a": {"url": "http://h/s/ImageServer", "bounds": [10, 0, 5, 1]}}},
            "layers.a: bounds",
        ),
        (
            {"layers": {"a": {"url": "http://h/s/ImageServer", "background": "red"}}},
            "layers.a.background:",
        ),
    ],
)
def test_invalid_tile_matrix_set_settings(data: dict[str, object], message: str) -> None:
    data = {"layers": {"a": {"url": "http://h/s/ImageServer"}}, **data}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "gw.yaml")
    assert str(caught.value).startswith(f"gw.yaml: {message}"), str(caught.value)


async def test_layer_extent_comes_from_the_upstream_service_info(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    # RGB.byte.tif covers about 78.96-76.57 W, 23.56-25.55 N (Landsat over the Bahamas).
    client = await make_gateway({"rgb": layer(f"{imageserver_url}/rgb/ImageServer")})
    far = await client.get("/tiles/rgb/9/10/10.png")
    assert far.status == 200 and far.headers["X-Cache"] == "HIT"  # empty tile, no upstream
    near = await client.get("/tiles/rgb/9/144/219.png")
    assert near.status == 200 and near.headers["X-Cache"] == "MISS"
    alpha = Image.open(io.BytesIO(await near.read())).convert("RGBA").getextrema()[3]
    assert alpha[1] == 255  # real data in it
