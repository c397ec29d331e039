"""exportImage against real rasters: pixel values, georeferencing, formats, nodata, errors."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from aiohttp.test_utils import TestClient
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds

from tests.imageserver.conftest import data_path
from tests.imageserver.helpers import (
    decode_png,
    export,
    export_error,
    export_path,
    match_rates,
    native_grid,
    pixel_centres,
    read_tiff,
    sample_source,
)

WEB_MERCATOR = CRS.from_epsg(3857)
WGS84 = CRS.from_epsg(4326)
# XYZ tile z=3 x=4 y=2 (Scandinavia, the Baltic and central Europe) in EPSG:3857 metres.
TILE_3_4_2 = (0.0, 5009377.085697312, 5009377.085697312, 10018754.171394624)


def bbox_param(bbox: tuple[float, ...]) -> str:
    return ",".join(repr(v) for v in bbox)


def lonlat_to_pixel(lon: float, lat: float, bbox: tuple[float, ...], size: int) -> tuple[int, int]:
    """(row, col) of the output pixel of a square Web Mercator image containing lon/lat."""
    (x,), (y,) = rasterio.warp.transform(WGS84, WEB_MERCATOR, [lon], [lat])
    xmin, ymin, xmax, ymax = bbox
    return int((ymax - y) / (ymax - ymin) * size), int((x - xmin) / (xmax - xmin) * size)


def xyz_bbox(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """EPSG:3857 bbox of an XYZ tile (docs/arcgis-rest.md §2.2)."""
    half = 20037508.342789244
    span = 2 * half / 2**z
    xmin, ymax = -half + x * span, half - y * span
    return xmin, ymax - span, xmin + span, ymax


async def test_bluemarble_web_mercator_tile_matches_source(
    client: TestClient, blue_marble_tif: Path
) -> None:
    # z=6 is finer than the source (0.022 vs 0.067 degrees per pixel), so nearest neighbour
    # reads full-resolution pixels and not overview averages.
    size, bbox = 256, xyz_bbox(6, 35, 20)
    content_type, body = await export(
        client,
        "bluemarble",
        bbox=bbox_param(bbox),
        bboxSR=3857,
        imageSR=3857,
        size=f"{size},{size}",
        format="png32",
        interpolation="RSP_NearestNeighbor",
    )
    assert content_type == "image/png"
    pixels = decode_png(body)
    assert pixels.shape == (size, size, 4)
    assert (pixels[..., 3] == 255).all()
    # Every output pixel centre, projected back to lon/lat, lands on the source pixel that
    # rasterio reads from the (independently georeferenced) Blue Marble GeoTIFF.
    xs, ys = pixel_centres(bbox, size, size)
    actual = np.moveaxis(pixels[..., :3], -1, 0)
    source = blue_marble_tif
    exact, near = match_rates(actual, source, WEB_MERCATOR, xs, ys, [0, 1, 2])
    assert exact > 0.95
    assert near > 0.999


async def test_bluemarble_tile_shows_the_right_place(client: TestClient) -> None:
    size = 256
    assert xyz_bbox(3, 4, 2) == pytest.approx(TILE_3_4_2)
    _, body = await export(
        client,
        "bluemarble",
        bbox=bbox_param(TILE_3_4_2),
        bboxSR=3857,
        imageSR=3857,
        size=f"{size},{size}",
        format="png32",
    )
    pixels = decode_png(body).astype(int)
    # The Baltic Sea and the Mediterranean are blue; Sweden's and Russia's forests are green.
    for lon, lat in ((19.5, 56.0), (5.0, 42.0), (2.0, 55.0)):
        r, g, b, _ = pixels[lonlat_to_pixel(lon, lat, TILE_3_4_2, size)]
        assert b > r + 10, (lon, lat)
    for lon, lat in ((15.0, 61.0), (40.0, 60.0)):
        r, g, b, _ = pixels[lonlat_to_pixel(lon, lat, TILE_3_4_2, size)]
        assert g > b, (lon, lat)


async def test_bluemarble_bilinear_default_is_close_to_source(
    client: TestClient, blue_marble_tif: Path
) -> None:
    size = 128
    _, body = await export(
        client,
        "bluemarble",
        bbox=bbox_param(TILE_3_4_2),
        bboxSR=102100,
        imageSR=102100,
        size=f"{size},{size}",
        format="png",
    )
    actual = np.moveaxis(decode_png(body)[..., :3], -1, 0).astype(int)
    xs, ys = pixel_centres(TILE_3_4_2, size, size)
    path = blue_marble_tif

    def mean_difference(shift: tuple[int, int]) -> float:
        expected = sample_source(path, WEB_MERCATOR, xs, ys, [0, 1, 2], shift)
        return float(np.abs(actual - expected).mean())

    # Output pixels span ~2.6 source pixels, so bilinear output is smoother than the source
    # under its centres, but it must fit that better than the source moved by 3 pixels.
    aligned = mean_difference((0, 0))
    assert aligned < 6
    for shift in ((3, 0), (-3, 0), (0, 3), (0, -3)):
        assert aligned < mean_difference(shift), shift


@pytest.mark.parametrize("sr", [4326, 3857])
async def test_projected_raster_in_other_srs_matches_source(client: TestClient, sr: int) -> None:
    path = data_path("RGB.byte.tif")
    crs = CRS.from_epsg(sr)
    with rasterio.open(path) as dataset:
        left, bottom, right, top = dataset.bounds
    # 40 km in the middle of the scene at 200 px: finer than the 300 m source pixels, so
    # nearest neighbour picks full-resolution pixels.
    x, y = (left + right) / 2, (bottom + top) / 2
    inner = (x - 20_000, y - 20_000, x + 20_000, y + 20_000)
    bbox = transform_bounds(CRS.from_epsg(32618), crs, *inner)
    size = (200, 200)
    _, body = await export(
        client,
        "rgb",
        bbox=bbox_param(bbox),
        bboxSR=sr,
        imageSR=sr,
        size="200,200",
        format="png32",
        interpolation="RSP_NearestNeighbor",
        adjustAspectRatio="false",
    )
    pixels = decode_png(body)
    xs, ys = pixel_centres(bbox, *size)
    # The footprint is inside the raster, which has a few nodata (transparent) pixels.
    assert (pixels[..., 3] == 255).mean() > 0.99
    actual = np.moveaxis(pixels[..., :3], -1, 0)
    exact, near = match_rates(actual, path, crs, xs, ys, [0, 1, 2])
    assert exact > 0.9
    assert near > 0.99


async def test_band_ids_select_and_reorder_bands(client: TestClient) -> None:
    path = data_path("m_4709963_se_14_1_20100629.tif")
    _, body = await export(client, "naip", bandIds="3,0,1", format="png32", **native_grid(path))
    pixels = decode_png(body)
    with rasterio.open(path) as dataset:
        source = dataset.read([4, 1, 2])
    row, col = 400, 500  # a known inner point of the native grid
    assert tuple(pixels[row, col, :3]) == tuple(source[:, row, col])
    assert (np.moveaxis(pixels[..., :3], -1, 0) == source).all()


async def test_band_ids_in_tiff_keep_all_requested_bands(client: TestClient) -> None:
    path = data_path("m_4709963_se_14_1_20100629.tif")
    _, body = await export(client, "naip", bandIds="3,2,1,0", format="tiff", **native_grid(path))
    data, _, profile = read_tiff(body)
    with rasterio.open(path) as dataset:
        assert (data == dataset.read([4, 3, 2, 1])).all()
        assert profile["crs"] == dataset.crs
        assert profile["transform"].almost_equals(dataset.transform)
    with MemoryFile(body) as memfile, memfile.open() as output:
        assert ColorInterp.alpha not in output.colorinterp  # four data bands, no alpha


async def test_single_band_draws_grey(client: TestClient) -> None:
    path = data_path("m_4709963_se_14_1_20100629.tif")
    _, body = await export(client, "naip", bandIds="3", format="png32", **native_grid(path))
    pixels = decode_png(body)
    with rasterio.open(path) as dataset:
        nir = dataset.read(4)
    assert (pixels[..., 0] == nir).all()
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


async def test_nodata_holes_and_outside_are_transparent(client: TestClient) -> None:
    path = data_path("dtm.tif")
    with rasterio.open(path) as dataset:
        source = dataset.read(1)
        left, bottom, right, top = dataset.bounds
        width, height = dataset.width, dataset.height
    # Extend the native grid by `width` pixels to the west: the left half lies outside.
    bbox = (left - (right - left), bottom, right, top)
    _, body = await export(
        client,
        "dtm",
        bbox=bbox_param(bbox),
        size=f"{2 * width},{height}",
        format="png",
        interpolation="RSP_NearestNeighbor",
    )
    alpha = decode_png(body)[..., 3]
    assert (alpha[:, :width] == 0).all()
    assert ((alpha[:, width:] == 255) == (source != -9999)).all()
    assert (source == -9999).sum() > 100  # the raster really has holes


async def test_jpgpng_is_jpeg_when_opaque_and_png_when_not(client: TestClient) -> None:
    inside, body = await export(client, "bluemarble", bbox="0,0,10,10", size="64,64")
    assert inside == "image/jpeg"
    assert body[:2] == b"\xff\xd8"
    partial, body = await export(client, "rgb", size="64,64")
    assert partial == "image/png"
    alpha = decode_png(body)[..., 3]
    assert 0 < (alpha == 0).mean() < 0.5  # the collar of the rotated Landsat footprint


async def test_jpg_fills_transparent_pixels_black(client: TestClient) -> None:
    content_type, body = await export(
        client, "dtm", format="jpg", size="100,100", bbox="321000,4297500,322064,4298018"
    )
    assert content_type == "image/jpeg"
    pixels = decode_png(body, "RGB").astype(int)
    assert pixels[:, :30].max() < 16  # west of the raster: black (JPEG noise aside)


async def test_png8_and_png24(client: TestClient) -> None:
    _, body8 = await export(client, "rgb", format="png8", size="80,80")
    with Image.open(io.BytesIO(body8)) as image:
        assert image.mode == "P"
        transparent = image.info["transparency"]
        indexes = np.asarray(image)
    assert (indexes == transparent).any() and (indexes != transparent).any()
    _, body24 = await export(client, "rgb", format="png24", size="80,80")
    with Image.open(io.BytesIO(body24)) as image:
        assert image.mode == "RGB"


async def test_paletted_raster_draws_its_colour_table(client: TestClient) -> None:
    path = data_path("earth_day_UHD.tif")
    with rasterio.open(path) as dataset:
        window = rasterio.windows.Window(2000, 400, 120, 90)
        left, top = dataset.transform @ (2000, 400)
        right, bottom = dataset.transform @ (2000 + 120, 400 + 90)
        bounds = (left, bottom, right, top)
        indexes = dataset.read(1, window=window)
        colormap = dataset.colormap(1)
    _, body = await export(
        client,
        "earth",
        bbox=bbox_param(bounds),
        size="120,90",
        format="png32",
        interpolation="RSP_NearestNeighbor",
    )
    pixels = decode_png(body)
    expected = np.array([colormap[i][:3] for i in indexes.ravel()]).reshape(90, 120, 3)
    assert (pixels[..., :3] == expected).all()


async def test_tiff_float32_keeps_values_and_nodata(client: TestClient) -> None:
    path = data_path("dtm.tif")
    content_type, body = await export(
        client, "dtm", format="tiff", pixelType="F32", **native_grid(path)
    )
    assert content_type == "image/tiff"
    data, mask, profile = read_tiff(body)
    with rasterio.open(path) as dataset:
        source = dataset.read(1)
    assert profile["dtype"] == "float32"
    assert profile["nodata"] == -9999
    assert np.array_equal(data[0], source)
    assert ((mask == 0) == (source == -9999)).all()


async def test_tiff_u8_casts_and_masks_unrepresentable_nodata(client: TestClient) -> None:
    path = data_path("dtm.tif")
    _, body = await export(client, "dtm", format="tiff", pixelType="U8", **native_grid(path))
    data, mask, profile = read_tiff(body)
    with rasterio.open(path) as dataset:
        source = dataset.read(1)
    valid = source != -9999
    assert profile["dtype"] == "uint8"
    assert profile["nodata"] is None  # -9999 does not fit in U8: an internal mask instead
    assert ((mask > 0) == valid).all()
    assert (data[0][valid] == np.trunc(np.clip(source[valid], 0, 255))).all()


async def test_pixel_type_truncates_out_of_range(client: TestClient) -> None:
    path = data_path("mosaic_cog1.tif")
    _, body = await export(
        client, "landsat", format="tiff", pixelType="U8", bandIds="0", **native_grid(path)
    )
    data, _, _ = read_tiff(body)
    with rasterio.open(path) as dataset:
        source = dataset.read(1)
    assert (data[0] == np.clip(source, 0, 255)).all()
    assert (data[0][source > 255] == 255).all()


async def test_request_nodata_makes_matching_pixels_transparent(client: TestClient) -> None:
    path = data_path("m_4709963_se_14_1_20100629.tif")
    with rasterio.open(path) as dataset:
        red = dataset.read(1)
    value = int(red[300, 300])
    _, body = await export(
        client, "naip", bandIds="0", noData=value, format="png", **native_grid(path)
    )
    alpha = decode_png(body)[..., 3]
    assert ((alpha == 0) == ((red == value) | (red == 0))).all()


async def test_nodata_interpretation_match_all_vs_any(client: TestClient) -> None:
    path = data_path("m_4709963_se_14_1_20100629.tif")
    with rasterio.open(path) as dataset:
        rgb = dataset.read([1, 2, 3])
    value = int(rgb[0, 300, 300])
    matches = rgb == value
    outside = (rgb == 0).all(axis=0)
    for interpretation, hit in (
        ("esriNoDataMatchAny", matches.any(axis=0)),
        ("esriNoDataMatchAll", matches.all(axis=0)),
    ):
        _, body = await export(
            client,
            "naip",
            bandIds="0,1,2",
            noData=value,
            format="png",
            noDataInterpretation=interpretation,
            **native_grid(path),
        )
        alpha = decode_png(body)[..., 3]
        assert ((alpha == 0) == (hit | outside)).all(), interpretation


async def test_f_json_href_serves_the_image(client: TestClient) -> None:
    params = {"bbox": "-10,40,10,50", "size": "200,100", "format": "png", "f": "json"}
    response = await client.get(export_path("bluemarble"), params=params)
    document = json.loads(await response.text())
    assert document["width"] == 200 and document["height"] == 100
    assert document["extent"]["spatialReference"] == {"wkid": 4326, "latestWkid": 4326}
    href = document["href"]
    path = href.removeprefix(str(client.make_url("")))
    assert path.startswith("/arcgis/rest/directories/arcgisoutput/bluemarble_ImageServer/_ags_")
    assert path.endswith(".png")
    fetched = await client.get(path)
    assert fetched.status == 200
    assert fetched.content_type == "image/png"
    _, direct = await export(client, "bluemarble", **{k: v for k, v in params.items() if k != "f"})
    assert await fetched.read() == direct
    missing = await client.get(path.replace("_ags_", "_ags_0"))
    assert missing.status == 404


async def test_adjust_aspect_ratio_grows_bbox_around_centre(client: TestClient) -> None:
    async def extent(**params: str) -> list[float]:
        response = await client.get(export_path("bluemarble"), params={"f": "pjson", **params})
        document = json.loads(await response.text())
        return [document["extent"][k] for k in ("xmin", "ymin", "xmax", "ymax")]

    assert await extent(bbox="0,0,10,10", size="200,100") == [-5, 0, 15, 10]
    assert await extent(bbox="0,0,10,10", size="100,200") == [0, -5, 10, 15]
    stretched = await extent(bbox="0,0,10,10", size="200,100", adjustAspectRatio="false")
    assert stretched == [0, 0, 10, 10]


async def test_post_form_with_params_split_between_query_and_body(client: TestClient) -> None:
    response = await client.post(
        export_path("bluemarble") + "/?F=image",
        data={
            "BBOX": "0,0,10,10",
            "bboxsr": "4326",
            "Size": "32,32",
            "format": "png",
            "transparent": "true",
            "time": "",
            "dpi": "96",
        },
    )
    assert response.status == 200
    assert response.content_type == "image/png"
    assert decode_png(await response.read()).shape == (32, 32, 4)


@pytest.mark.parametrize(
    "sr", ["102100", "102113", "900913", '{"wkid":102100}', '{"latestWkid":3857}']
)
async def test_web_mercator_aliases_render_identically(client: TestClient, sr: str) -> None:
    common = {"bbox": bbox_param(TILE_3_4_2), "size": "64,64", "format": "png"}
    _, reference = await export(client, "bluemarble", bboxSR=3857, imageSR=3857, **common)
    _, aliased = await export(client, "bluemarble", bboxSR=sr, imageSR=sr, **common)
    assert aliased == reference


async def test_wkt_spatial_reference_and_bbox_reprojection(client: TestClient) -> None:
    # bbox in lon/lat, image in Web Mercator: the output extent is the projected bbox.
    wkt = json.dumps({"wkt": WGS84.to_wkt()})
    response = await client.get(
        export_path("bluemarble"),
        params={
            "bbox": "0,40,10,50",
            "bboxSR": wkt,
            "imageSR": "3857",
            "size": "100,100",
            "adjustAspectRatio": "false",
            "f": "json",
        },
    )
    extent = json.loads(await response.text())["extent"]
    expected = transform_bounds(WGS84, WEB_MERCATOR, 0, 40, 10, 50, densify_pts=21)
    actual = [extent[k] for k in ("xmin", "ymin", "xmax", "ymax")]
    assert actual == pytest.approx(list(expected))
    assert extent["spatialReference"] == {"wkid": 102100, "latestWkid": 3857}


async def test_interpolation_tolerates_leading_plus_or_space(client: TestClient) -> None:
    common = {"bbox": "0,40,1,41", "size": "50,50", "format": "png"}
    _, nearest = await export(client, "bluemarble", interpolation="RSP_NearestNeighbor", **common)
    _, plus = await export(client, "bluemarble", interpolation="+RSP_NearestNeighbor", **common)
    _, space = await export(client, "bluemarble", interpolation=" RSP_NearestNeighbor", **common)
    _, bilinear = await export(client, "bluemarble", **common)
    assert plus == space == nearest
    assert bilinear != nearest


async def test_defaults_render_the_whole_service(client: TestClient) -> None:
    response = await client.get(export_path("bluemarble"), params={"f": "json"})
    document = json.loads(await response.text())
    assert (document["width"], document["height"]) == (400, 400)
    # Full extent (360 x 180 degrees) grown to the square 400 x 400 size.
    extent = [document["extent"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
    assert extent == [-180, -180, 180, 180]


# rasterio silences this warning around its temporary in-memory datasets with
# warnings.catch_warnings, which is not thread-safe, so concurrent warps may leak it.
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
async def test_concurrent_requests_render_consistently(client: TestClient) -> None:
    boxes = [f"{x},{y},{x + 20},{y + 20}" for x in range(-60, 60, 20) for y in (-20, 20)]

    async def render(bbox: str) -> bytes:
        return (await export(client, "shadedrelief", bbox=bbox, size="128,128", format="png"))[1]

    concurrent = await asyncio.gather(*(render(b) for b in boxes))
    sequential = [await render(b) for b in boxes]
    assert concurrent == sequential
    assert len(set(sequential)) == len(boxes)


async def test_largest_allowed_size_is_accepted(client: TestClient) -> None:
    _, body = await export(client, "etopo", size="15000,1", format="png")
    assert decode_png(body).shape == (1, 15000, 4)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("size", "15001,100"),
        ("size", "100,4101"),
        ("size", "0,100"),
        ("size", "-5,100"),
        ("size", "100"),
        ("size", "a,b"),
        ("bbox", "1,2,3"),
        ("bbox", "abc"),
        ("bbox", "5,0,5,10"),
        ("bbox", "0,10,10,10"),
        ("bbox", "0,0,inf,10"),
        ("bboxSR", "999999"),
        ("bboxSR", "web"),
        ("imageSR", '{"wkid": "x"}'),
        ("imageSR", '{"wkt": "NOT WKT"}'),
        ("format", "webp"),
        ("format", "lerc"),
        ("pixelType", "U12"),
        ("pixelType", "C64"),
        ("bandIds", "0,3"),
        ("bandIds", "-1"),
        ("bandIds", "a"),
        ("noData", "x"),
        ("noData", "1,2"),
        ("noDataInterpretation", "esriNoDataMatchSome"),
        ("interpolation", "RSP_Lanczos"),
        ("compressionQuality", "101"),
        ("adjustAspectRatio", "maybe"),
        ("f", "kmz"),
    ],
)
async def test_bad_parameters_are_arcgis_errors(client: TestClient, param: str, value: str) -> None:
    error = await export_error(
        client, "rgb", **{"bbox": "200000,2700000,210000,2710000", param: value}
    )
    assert error["code"] == 400
    assert error["message"]
    assert len(error["details"]) == 1
    assert param in error["details"][0]


async def test_every_bad_parameter_is_reported(client: TestClient) -> None:
    error = await export_error(client, "rgb", size="0,0", bbox="x", format="gif")
    assert error["code"] == 400
    assert len(error["details"]) == 3


async def test_bbox_that_cannot_be_projected_is_an_error(client: TestClient) -> None:
    # Latitudes beyond 90 degrees do not exist, so the bbox has no Web Mercator equivalent.
    error = await export_error(client, "bluemarble", bbox="0,91,10,95", bboxSR=4326, imageSR=3857)
    assert error["code"] == 400


async def test_error_json_honours_pjson_and_callback(client: TestClient) -> None:
    response = await client.get(
        export_path("rgb"), params={"size": "0,0", "f": "pjson", "callback": "cb"}
    )
    text = await response.text()
    assert response.status == 200
    assert text.startswith("cb(") and json.loads(text[3:-2])["error"]["code"] == 400


async def test_request_outside_the_raster_is_fully_transparent(client: TestClient) -> None:
    content_type, body = await export(client, "rgb", bbox="0,0,1000,1000", size="10,10")
    assert content_type == "image/png"
    assert (decode_png(body)[..., 3] == 0).all()


async def test_bbox_with_swapped_corners_gives_the_ordered_bbox_pixels(client: TestClient) -> None:
    # esri-leaflet's imageMapLayer sends xmin,ymax,xmax,ymin; ArcGIS draws the same image.
    xmin, ymin, xmax, ymax = 200000.0, 2700000.0, 230000.0, 2720000.0
    common = {"size": "120,80", "format": "png32", "bboxSR": 32618, "imageSR": 32618}
    _, ordered = await export(client, "rgb", bbox=bbox_param((xmin, ymin, xmax, ymax)), **common)
    for corners in ((xmin, ymax, xmax, ymin), (xmax, ymin, xmin, ymax), (xmax, ymax, xmin, ymin)):
        _, swapped = await export(client, "rgb", bbox=bbox_param(corners), **common)
        assert np.array_equal(decode_png(swapped), decode_png(ordered)), corners
    assert decode_png(ordered)[..., 3].any()
