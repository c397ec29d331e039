"""renderingRule on exportImage and identify, rasterFunctionInfos, and the default stretch of
non-8-bit data: every function's pixels checked against numpy computations from rasterio reads
of the fixtures, on the rasters' own grids (nearest neighbour, so no resampling interferes)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import rasterio
from aiohttp.test_utils import TestClient

from imageserver.app import create_app
from imageserver.config import ImageServerConfig, ServiceSpec
from tests.imageserver.conftest import AiohttpClient, data_path
from tests.imageserver.helpers import SERVICES, decode_png, export, export_error, native_grid

LANDSAT = "mosaic_cog1.tif"  # 3 x uint16, nodata 0
NAIP = "m_4709963_se_14_1_20100629.tif"  # 4 x uint8 (R, G, B, NIR), nodata 0
DTM = "dtm.tif"  # float32, nodata -9999
EARTH = "earth_day_UHD.tif"  # paletted uint8


def rule(function: str, **arguments: Any) -> str:
    return json.dumps({"rasterFunction": function, "rasterFunctionArguments": arguments})


async def export_tiff(
    client: TestClient, service: str, file: str, rendering_rule: str, **params: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """exportImage as GeoTIFF on the raster's own grid with ``renderingRule``: the pixels
    ``(bands, h, w)``, the validity ``(h, w)`` bool (mask or nodata) and the profile."""
    _, body = await export(
        client,
        service,
        format="tiff",
        renderingRule=rendering_rule,
        **native_grid(data_path(file)),
        **params,
    )
    with rasterio.MemoryFile(body) as memfile, memfile.open() as dataset:
        return dataset.read(), dataset.dataset_mask() > 0, dict(dataset.profile)


def source(file: str) -> tuple[np.ndarray, np.ndarray]:
    """All bands of a fixture ``(bands, h, w)`` as float64, and its validity ``(h, w)``."""
    with rasterio.open(data_path(file)) as dataset:
        return dataset.read().astype(np.float64), dataset.dataset_mask() > 0


def statistics_sample(file: str) -> list[np.ndarray]:
    """Each band's valid values in the decimated read (longest side 512, from the overviews)
    the ImageServer takes its dataset statistics from, computed independently here."""
    with rasterio.open(data_path(file)) as dataset:
        factor = max(1.0, max(dataset.width, dataset.height) / 512)
        shape = (
            dataset.count,
            max(1, round(dataset.height / factor)),
            max(1, round(dataset.width / factor)),
        )
        sample = dataset.read(out_shape=shape, masked=True)
    return [band.compressed().astype(np.float64) for band in sample]


def linear(data: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The 0-255 linear stretch of ``data`` between per-band ``low`` and ``high``."""
    low, high = low.reshape(-1, 1, 1), high.reshape(-1, 1, 1)
    return np.rint(np.clip((data - low) / (high - low), 0, 1) * 255)


def assert_close(actual: np.ndarray, expected: np.ndarray, where: np.ndarray) -> None:
    """Within 1 (rounding) on every pixel of ``where``; ``where`` covers most of the image."""
    diff = np.abs(actual.astype(np.float64) - expected)[:, where]
    assert diff.max() <= 1, diff.max()
    assert where.mean() > 0.3


# ---------------------------------------------------------------------------------------------
# Service info


async def test_service_info_offers_raster_functions_by_band_count(client: TestClient) -> None:
    async def infos(name: str) -> dict[str, Any]:
        response = await client.get(f"{SERVICES}/{name}/ImageServer", params={"f": "json"})
        return await response.json(content_type=None)

    naip, dtm, earth = await infos("naip"), await infos("dtm"), await infos("earth")
    assert naip["allowRasterFunction"] is True
    naip_names = [i["name"] for i in naip["rasterFunctionInfos"]]
    dtm_names = [i["name"] for i in dtm["rasterFunctionInfos"]]
    assert {"None", "Stretch_MinMax", "NDVI", "False_Color"} <= set(naip_names)
    assert "Hillshade" not in naip_names
    assert {"None", "Stretch_PercentClip", "Hillshade"} <= set(dtm_names)
    assert "NDVI" not in dtm_names
    assert [i["name"] for i in earth["rasterFunctionInfos"]] == ["None"]  # paletted
    assert all(set(i) == {"name", "description", "help"} for i in naip["rasterFunctionInfos"])


async def test_configured_template_is_listed_and_usable(aiohttp_client: AiohttpClient) -> None:
    spec = ServiceSpec(
        name="dem",
        path=data_path(DTM),
        raster_functions={
            "Steep_Sun": {
                "rasterFunction": "Hillshade",
                "rasterFunctionArguments": {"Azimuth": 90, "Altitude": 20, "ZFactor": 3},
            }
        },
    )
    client = await aiohttp_client(
        create_app(ImageServerConfig(services={"dem": spec}, builtin=False))
    )
    info = await (await client.get(f"{SERVICES}/dem/ImageServer", params={"f": "json"})).json()
    assert "Steep_Sun" in [i["name"] for i in info["rasterFunctionInfos"]]
    named, _, _ = await export_tiff(client, "dem", DTM, '{"rasterFunction": "Steep_Sun"}')
    explicit, _, _ = await export_tiff(
        client, "dem", DTM, rule("Hillshade", Azimuth=90, Altitude=20, ZFactor=3)
    )
    assert np.array_equal(named, explicit)


async def test_none_template_is_the_plain_export(client: TestClient) -> None:
    grid = native_grid(data_path(LANDSAT))
    _, plain = await export(client, "landsat", format="png32", **grid)
    for none in ('{"rasterFunction": "None"}', '{"rasterFunction": "none"}'):
        _, named = await export(client, "landsat", format="png32", renderingRule=none, **grid)
        assert np.array_equal(decode_png(named), decode_png(plain))
    _, clipped = await export(
        client,
        "landsat",
        format="png32",
        renderingRule='{"rasterFunction": "Stretch_PercentClip"}',
        **grid,
    )
    assert np.array_equal(decode_png(clipped), decode_png(plain))  # the default is that stretch


# ---------------------------------------------------------------------------------------------
# Default rendering of non-8-bit data


async def test_sixteen_bit_scene_draws_with_the_default_percent_clip(client: TestClient) -> None:
    _, body = await export(client, "landsat", format="png32", **native_grid(data_path(LANDSAT)))
    pixels = decode_png(body)
    data, valid = source(LANDSAT)
    sample = statistics_sample(LANDSAT)
    low = np.array([np.percentile(band, 0.5) for band in sample])
    high = np.array([np.percentile(band, 99.5) for band in sample])
    rgb = np.moveaxis(pixels[..., :3], -1, 0)
    assert ((pixels[..., 3] == 255) == valid).all()
    assert_close(rgb, linear(data, low, high), valid)
    # A photograph, not a night sky: mid-grey on average with real contrast (the old
    # min-max stretch over 6,000-41,000 gave a mean near 25).
    values = rgb[:, valid]
    assert 35 < values.mean() < 160
    assert values.std() > 25


async def test_tiff_and_pixel_type_are_not_stretched_by_default(client: TestClient) -> None:
    data, _ = source(LANDSAT)
    _, body = await export(client, "landsat", format="tiff", **native_grid(data_path(LANDSAT)))
    with rasterio.MemoryFile(body) as memfile, memfile.open() as dataset:
        assert np.array_equal(dataset.read(), data.astype(np.uint16))


# ---------------------------------------------------------------------------------------------
# Stretch


@pytest.mark.parametrize(
    ("arguments", "bounds"),
    [
        ({"StretchType": 5}, lambda s: (s.min(), s.max())),
        (
            {"StretchType": 3, "NumberOfStandardDeviations": 1.5},
            lambda s: (s.mean() - 1.5 * s.std(), s.mean() + 1.5 * s.std()),
        ),
        (
            {"StretchType": 6, "MinPercent": 1, "MaxPercent": 2},
            lambda s: (np.percentile(s, 1), np.percentile(s, 98)),
        ),
    ],
    ids=["MinMax", "StandardDeviation", "PercentClip"],
)
async def test_stretch_types_use_the_dataset_statistics(
    client: TestClient, arguments: dict[str, Any], bounds: Any
) -> None:
    data, valid = source(LANDSAT)
    limits = [bounds(band) for band in statistics_sample(LANDSAT)]
    low, high = (np.array(side) for side in zip(*limits, strict=True))
    pixels, mask, profile = await export_tiff(
        client, "landsat", LANDSAT, rule("Stretch", **arguments)
    )
    assert profile["dtype"] == "uint8" and profile["count"] == 3
    assert (mask == valid).all()
    assert_close(pixels, linear(data, low, high), valid)


async def test_stretch_dra_takes_statistics_from_the_requested_extent(client: TestClient) -> None:
    data, valid = source(LANDSAT)
    # A sub-window: the statistics must be this window's, not the dataset's.
    rows, cols = slice(100, 400), slice(200, 600)
    with rasterio.open(data_path(LANDSAT)) as dataset:
        transform = dataset.transform
    left, top = transform @ (cols.start, rows.start)
    right, bottom = transform @ (cols.stop, rows.stop)
    window, window_valid = data[:, rows, cols], valid[rows, cols]
    low = np.array([band[window_valid].min() for band in window])
    high = np.array([band[window_valid].max() for band in window])
    _, body = await export(
        client,
        "landsat",
        format="tiff",
        bbox=f"{left},{bottom},{right},{top}",
        size=f"{cols.stop - cols.start},{rows.stop - rows.start}",
        interpolation="RSP_NearestNeighbor",
        renderingRule=rule("Stretch", StretchType=5, DRA=True, UseGamma=True, Gamma=[2, 2, 2]),
    )
    with rasterio.MemoryFile(body) as memfile, memfile.open() as dataset:
        pixels = dataset.read()
    expected = np.rint(
        np.clip((window - low.reshape(3, 1, 1)) / (high - low).reshape(3, 1, 1), 0, 1) ** 0.5 * 255
    )
    assert_close(pixels, expected, window_valid)
    dataset_stretch = linear(
        window,
        *(
            np.array(s)
            for s in zip(*[(b.min(), b.max()) for b in statistics_sample(LANDSAT)], strict=True)
        ),
    )
    assert np.abs(pixels[:, window_valid] - dataset_stretch[:, window_valid]).max() > 20


async def test_stretch_with_given_statistics_and_output_range(client: TestClient) -> None:
    data, valid = source(LANDSAT)
    statistics = [[7000, 15000, 0, 0], [7500, 14000, 0, 0], [8000, 16000, 0, 0]]
    pixels, _, _ = await export_tiff(
        client,
        "landsat",
        LANDSAT,
        rule("Stretch", StretchType=5, Statistics=statistics, Min=10, Max=200),
    )
    low = np.array([s[0] for s in statistics], float).reshape(3, 1, 1)
    high = np.array([s[1] for s in statistics], float).reshape(3, 1, 1)
    expected = np.rint(10 + np.clip((data - low) / (high - low), 0, 1) * 190)
    assert_close(pixels, expected, valid)


# ---------------------------------------------------------------------------------------------
# Hillshade


def hillshade(
    elevation: np.ndarray,
    valid: np.ndarray,
    cell: float,
    azimuth: float = 315,
    altitude: float = 45,
    z: float = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Esri's "How Hillshade works" with Horn's slope, on the interior cells; a cell is valid
    when its 3x3 window is."""
    e = np.pad(elevation, 1)
    ok = np.pad(valid, 1)
    rows, cols = elevation.shape

    def at(dr: int, dc: int) -> np.ndarray:
        return e[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]

    dzdx = ((at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))) / (
        8 * cell
    )
    dzdy = ((at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))) / (
        8 * cell
    )
    slope = np.arctan(z * np.sqrt(dzdx**2 + dzdy**2))
    aspect = np.arctan2(dzdy, -dzdx) % (2 * np.pi)
    zenith = np.deg2rad(90 - altitude)
    sun = np.deg2rad((450 - azimuth) % 360)
    shade = 255 * (
        np.cos(zenith) * np.cos(slope) + np.sin(zenith) * np.sin(slope) * np.cos(sun - aspect)
    )
    window_ok = np.ones_like(valid)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            window_ok &= ok[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
    return np.rint(np.clip(shade, 0, None)), window_ok


@pytest.mark.parametrize(
    "arguments", [{}, {"Azimuth": 45, "Altitude": 30, "ZFactor": 2.5}], ids=["default", "custom"]
)
async def test_hillshade_matches_the_esri_formula(
    client: TestClient, arguments: dict[str, float]
) -> None:
    data, valid = source(DTM)
    with rasterio.open(data_path(DTM)) as dataset:
        cell = dataset.res[0]
        assert math.isclose(dataset.res[0], dataset.res[1])  # square cells
    expected, expected_valid = hillshade(
        data[0],
        valid,
        cell,
        arguments.get("Azimuth", 315),
        arguments.get("Altitude", 45),
        arguments.get("ZFactor", 1),
    )
    pixels, mask, profile = await export_tiff(client, "dtm", DTM, rule("Hillshade", **arguments))
    assert profile["dtype"] == "uint8" and profile["count"] == 1
    assert (mask == expected_valid).all()
    assert_close(pixels, expected[np.newaxis], expected_valid)
    assert pixels[0][expected_valid].std() > 10  # relief, not a flat grey


async def test_hillshade_tile_edges_see_their_neighbours(client: TestClient) -> None:
    # A sub-window inside the raster: its edge pixels are shaded from the pixels beyond it.
    data, valid = source(DTM)
    with rasterio.open(data_path(DTM)) as dataset:
        transform, cell = dataset.transform, dataset.res[0]
    rows, cols = slice(50, 150), slice(60, 200)
    left, top = transform @ (cols.start, rows.start)
    right, bottom = transform @ (cols.stop, rows.stop)
    _, body = await export(
        client,
        "dtm",
        format="tiff",
        bbox=f"{left},{bottom},{right},{top}",
        size=f"{cols.stop - cols.start},{rows.stop - rows.start}",
        interpolation="RSP_NearestNeighbor",
        renderingRule='{"rasterFunction": "Hillshade"}',
    )
    with rasterio.MemoryFile(body) as memfile, memfile.open() as dataset:
        pixels, mask = dataset.read(), dataset.dataset_mask() > 0
    expected, expected_valid = hillshade(data[0], valid, cell)
    assert (mask == expected_valid[rows, cols]).all()
    assert mask[0].any() and mask[:, 0].any()  # the window's first row and column are data
    assert_close(pixels, expected[np.newaxis, rows, cols], expected_valid[rows, cols])


# ---------------------------------------------------------------------------------------------
# NDVI, BandArithmetic, ExtractBand, Colormap


def ndvi(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    red, nir = data[0], data[3]
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        return (nir - red) / total, valid & (total != 0)


async def test_ndvi_scaled_and_scientific(client: TestClient) -> None:
    data, valid = source(NAIP)
    index, index_valid = ndvi(data, valid)
    scaled, mask, profile = await export_tiff(
        client, "naip", NAIP, rule("NDVI", VisibleBandID=0, InfraredBandID=3)
    )
    assert profile["dtype"] == "uint8" and profile["count"] == 1
    assert (mask == index_valid).all()
    assert_close(scaled, np.rint(index * 100 + 100)[np.newaxis], index_valid)
    scientific, _, profile = await export_tiff(
        client, "naip", NAIP, rule("NDVI", VisibleBandID=0, InfraredBandID=3, Scientific=True)
    )
    assert profile["dtype"] == "float32"
    assert np.allclose(scientific[0][index_valid], index[index_valid], atol=1e-6)
    # The service's NDVI template names the NAIP bands (red 0, near infrared 3).
    named, _, _ = await export_tiff(client, "naip", NAIP, '{"rasterFunction": "NDVI"}')
    assert np.array_equal(named, scaled)


async def test_band_arithmetic_expression_and_predefined_method(client: TestClient) -> None:
    data, valid = source(NAIP)
    b1, b2, b4 = data[0], data[1], data[3]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (b4 - b1) / (b4 + b1) * 2 + b2 / 10 - -3
    expected_valid = valid & np.isfinite(expected)
    pixels, mask, profile = await export_tiff(
        client,
        "naip",
        NAIP,
        rule("BandArithmetic", Method=0, BandIndexes="(B4 - B1) / (B4 + B1) * 2 + b2 / 10 - -3"),
    )
    assert profile["dtype"] == "float32"
    assert (mask == expected_valid).all()
    assert np.allclose(pixels[0][expected_valid], expected[expected_valid], rtol=1e-6)
    method_ndvi, _, _ = await export_tiff(
        client, "naip", NAIP, rule("BandArithmetic", Method=1, BandIndexes="4 1")
    )
    index, index_valid = ndvi(data, valid)
    assert np.allclose(method_ndvi[0][index_valid], index[index_valid], atol=1e-6)


async def test_output_pixel_type_casts_the_function_output(client: TestClient) -> None:
    data, valid = source(NAIP)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = data[3] / data[0]
    expected_valid = valid & np.isfinite(ratio)
    document = json.loads(rule("BandArithmetic", Method=0, BandIndexes="B4 / B1 * 10"))
    document["outputPixelType"] = "U8"
    pixels, mask, profile = await export_tiff(client, "naip", NAIP, json.dumps(document))
    assert profile["dtype"] == "uint8"
    assert (mask == expected_valid).all()
    # Cast as pixelType casts: clipped to 0-255, decimals truncated.
    expected = np.trunc(np.clip(ratio * 10, 0, 255))
    assert (pixels[0][expected_valid] == expected[expected_valid]).all()


async def test_extract_band_by_ids_and_names(client: TestClient) -> None:
    data, _ = source(NAIP)
    pixels, _, profile = await export_tiff(
        client, "naip", NAIP, rule("ExtractBand", BandIDs=[3, 0, 1])
    )
    assert profile["dtype"] == "uint8" and profile["count"] == 3
    assert np.array_equal(pixels, data[[3, 0, 1]])
    named, _, _ = await export_tiff(client, "naip", NAIP, rule("ExtractBand", BandNames=["Band_4"]))
    assert np.array_equal(named[0], data[3])


async def test_colormap_on_palette_indexes(client: TestClient) -> None:
    colormap = [[value, value, 255 - value, (7 * value) % 256] for value in range(0, 256, 2)]
    path = data_path(EARTH)
    with rasterio.open(path) as dataset:
        window = rasterio.windows.Window(1800, 300, 200, 150)
        indexes = dataset.read(1, window=window)
        left, top = dataset.transform @ (1800, 300)
        right, bottom = dataset.transform @ (2000, 450)
    bounds = (left, bottom, right, top)
    _, body = await export(
        client,
        "earth",
        format="png32",
        bbox=",".join(repr(v) for v in bounds),
        size="200,150",
        interpolation="RSP_NearestNeighbor",
        renderingRule=rule("Colormap", Colormap=colormap),
    )
    pixels = decode_png(body)
    mapped = indexes % 2 == 0
    assert ((pixels[..., 3] == 255) == mapped).all()
    table = {row[0]: row[1:] for row in colormap}
    expected = np.array([table.get(int(v), [0, 0, 0]) for v in indexes.ravel()]).reshape(
        150, 200, 3
    )
    assert (pixels[..., :3][mapped] == expected[mapped]).all()
    assert 0.2 < mapped.mean() < 0.8


async def test_stretch_over_ndvi_takes_the_extent_statistics(client: TestClient) -> None:
    data, valid = source(NAIP)
    index, index_valid = ndvi(data, valid)
    nested = json.dumps(
        {
            "rasterFunction": "Stretch",
            "rasterFunctionArguments": {
                "StretchType": 5,
                "Raster": {
                    "rasterFunction": "NDVI",
                    "rasterFunctionArguments": {
                        "VisibleBandID": 0,
                        "InfraredBandID": 3,
                        "Scientific": True,
                    },
                },
            },
        }
    )
    pixels, _, _ = await export_tiff(client, "naip", NAIP, nested)
    values = index[index_valid]
    expected = linear(index[np.newaxis], np.array([values.min()]), np.array([values.max()]))
    assert_close(pixels, expected, index_valid)


# ---------------------------------------------------------------------------------------------
# Identify


async def test_identify_answers_the_function_output(client: TestClient) -> None:
    data, valid = source(NAIP)
    index, index_valid = ndvi(data, valid)
    with rasterio.open(data_path(NAIP)) as dataset:
        transform = dataset.transform
    row, col = 400, 500
    assert index_valid[row, col]
    x, y = transform @ (col + 0.5, row + 0.5)
    query = {
        "f": "json",
        "geometry": json.dumps({"x": x, "y": y}),
        "renderingRule": rule("NDVI", VisibleBandID=0, InfraredBandID=3),
    }
    response = await client.get(f"{SERVICES}/naip/ImageServer/identify", params=query)
    answer = await response.json(content_type=None)
    assert abs(int(answer["value"]) - (index[row, col] * 100 + 100)) <= 1
    query["renderingRule"] = rule("BandArithmetic", Method=0, BandIndexes="B4 - B1")
    response = await client.get(f"{SERVICES}/naip/ImageServer/identify", params=query)
    answer = await response.json(content_type=None)
    assert float(answer["value"]) == data[3, row, col] - data[0, row, col]
    plain = await client.get(
        f"{SERVICES}/naip/ImageServer/identify", params={"f": "json", "geometry": query["geometry"]}
    )
    assert (await plain.json(content_type=None))["value"] == ", ".join(
        str(int(v)) for v in data[:, row, col]
    )


async def test_identify_hillshade(client: TestClient) -> None:
    data, valid = source(DTM)
    with rasterio.open(data_path(DTM)) as dataset:
        transform, cell = dataset.transform, dataset.res[0]
    expected, expected_valid = hillshade(data[0], valid, cell)
    row, col = 120, 140
    assert expected_valid[row, col]
    x, y = transform @ (col + 0.5, row + 0.5)
    response = await client.get(
        f"{SERVICES}/dtm/ImageServer/identify",
        params={
            "f": "json",
            "geometry": json.dumps({"x": x, "y": y}),
            "renderingRule": '{"rasterFunction": "Hillshade"}',
        },
    )
    answer = await response.json(content_type=None)
    assert abs(int(answer["value"]) - expected[row, col]) <= 1


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("service", "rendering_rule", "named"),
    [
        ("naip", '{"rasterFunction": "Nope"}', "Nope"),
        ("naip", "{not json", "not JSON"),
        ("landsat", rule("Stretch", StretchType=4), "Stretch"),
        ("landsat", rule("Stretch", StretchType=5, Gamma="x", UseGamma=True), "Stretch"),
        ("dtm", rule("Hillshade", Altitude=120), "Hillshade"),
        ("naip", rule("NDVI", VisibleBandID=0, InfraredBandID=7), "NDVI"),
        (
            "naip",
            rule("BandArithmetic", Method=0, BandIndexes="__import__('os')"),
            "BandArithmetic",
        ),
        ("naip", rule("BandArithmetic", Method=0, BandIndexes="B9 + 1"), "BandArithmetic"),
        ("naip", rule("ExtractBand", BandNames=["Infrared"]), "ExtractBand"),
        ("naip", json.dumps({"rasterFunction": "NDVI", "outputPixelType": "U7"}), "NDVI"),
        ("earth", rule("Colormap", ColormapName="Random"), "Colormap"),
        ("dtm", '{"rasterFunction": "NDVI"}', "NDVI"),  # one band: no infrared band 1
    ],
)
async def test_bad_rendering_rule_is_an_arcgis_error(
    client: TestClient, service: str, rendering_rule: str, named: str
) -> None:
    error = await export_error(client, service, renderingRule=rendering_rule)
    assert error["code"] == 400
    assert any(named in detail for detail in error["details"]), error


async def test_unknown_function_on_identify_is_an_error(client: TestClient) -> None:
    response = await client.get(
        f"{SERVICES}/naip/ImageServer/identify",
        params={
            "f": "json",
            "geometry": '{"x": 0, "y": 0}',
            "renderingRule": '{"rasterFunction": "Nope"}',
        },
    )
    assert response.status == 200
    error = (await response.json(content_type=None))["error"]
    assert error["code"] == 400 and "Nope" in error["details"][0]
