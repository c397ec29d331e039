"""identify, getSamples, computeStatisticsHistograms and keyProperties against values read
from the rasters directly with rasterio (the ArcGIS API for Python calls all four)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import rasterio
from aiohttp.test_utils import TestClient
from rasterio.crs import CRS
from rasterio.warp import transform

from tests.imageserver.conftest import data_path
from tests.imageserver.helpers import SERVICES

UTM18 = CRS.from_epsg(32618)
WGS84 = CRS.from_epsg(4326)
# A pixel of RGB.byte.tif well inside its valid data, and one in its nodata collar.
RGB_INSIDE = (220000.0, 2720000.0)
RGB_COLLAR = (102100.0, 2826800.0)


async def operation(client: TestClient, service: str, name: str, **params: Any) -> Any:
    query = {
        "f": "json",
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()},
    }
    response = await client.post(f"{SERVICES}/{service}/ImageServer/{name}", data=query)
    assert response.status == 200
    return json.loads(await response.text())


def raster_values(file: str, x: float, y: float) -> list[float]:
    with rasterio.open(data_path(file)) as dataset:
        row, col = dataset.index(x, y)
        return dataset.read(window=((row, row + 1), (col, col + 1)))[:, 0, 0].tolist()


async def test_identify_reads_the_pixel_under_a_point(client: TestClient) -> None:
    x, y = RGB_INSIDE
    expected = raster_values("RGB.byte.tif", x, y)
    assert all(expected)
    answer = await operation(
        client, "rgb", "identify", geometry={"x": x, "y": y}, geometryType="esriGeometryPoint"
    )
    assert answer["objectId"] == 0
    assert answer["name"] == "Pixel"
    assert answer["value"] == ", ".join(str(int(v)) for v in expected)
    assert answer["location"] == {
        "x": x,
        "y": y,
        "spatialReference": {"wkid": 32618, "latestWkid": 32618},
    }
    assert answer["catalogItems"] is None


async def test_identify_projects_a_point_given_in_another_spatial_reference(
    client: TestClient,
) -> None:
    (lon,), (lat,) = transform(UTM18, WGS84, [RGB_INSIDE[0]], [RGB_INSIDE[1]])
    answer = await operation(
        client, "rgb", "identify", geometry={"x": lon, "y": lat, "spatialReference": {"wkid": 4326}}
    )
    expected = raster_values("RGB.byte.tif", *RGB_INSIDE)
    assert answer["value"] == ", ".join(str(int(v)) for v in expected)
    assert answer["location"]["x"] == pytest.approx(RGB_INSIDE[0], abs=0.01)


async def test_identify_simple_syntax_and_nodata(client: TestClient) -> None:
    collar = await operation(client, "rgb", "identify", geometry=f"{RGB_COLLAR[0]},{RGB_COLLAR[1]}")
    assert raster_values("RGB.byte.tif", *RGB_COLLAR) == [0, 0, 0]
    assert collar["value"] == "NoData"
    outside = await operation(client, "rgb", "identify", geometry="0,0")
    assert outside["value"] == "NoData"


async def test_identify_of_float_raster_and_polygon_centroid(client: TestClient) -> None:
    # A square around (321700, 4297800): its centroid is that point.
    x, y = 321701.0, 4297801.0
    ring = [
        [x - 20, y - 20],
        [x - 20, y + 20],
        [x + 20, y + 20],
        [x + 20, y - 20],
        [x - 20, y - 20],
    ]
    answer = await operation(
        client, "dtm", "identify", geometry={"rings": [ring]}, geometryType="esriGeometryPolygon"
    )
    (expected,) = raster_values("dtm.tif", x, y)
    assert expected != -9999
    assert np.float32(answer["value"]) == np.float32(expected)


async def test_get_samples_of_a_multipoint(client: TestClient) -> None:
    points = [list(RGB_INSIDE), list(RGB_COLLAR), [230000.5, 2650000.5]]
    answer = await operation(
        client,
        "rgb",
        "getSamples",
        geometry={"points": points},
        geometryType="esriGeometryMultipoint",
    )
    samples = answer["samples"]
    assert [s["locationId"] for s in samples] == [0, 1, 2]
    assert [(s["location"]["x"], s["location"]["y"]) for s in samples] == [tuple(p) for p in points]
    for sample, (x, y) in zip(samples, points, strict=True):
        values = raster_values("RGB.byte.tif", x, y)
        expected = "NoData" if values == [0, 0, 0] else ", ".join(str(int(v)) for v in values)
        assert sample["value"] == expected
    assert samples[1]["value"] == "NoData"
    assert samples[0]["resolution"] == pytest.approx(300.0379266750948)


async def test_get_samples_refuses_lines(client: TestClient) -> None:
    answer = await operation(client, "rgb", "getSamples", geometry={"paths": [[[0, 0], [1, 1]]]})
    assert answer["error"]["code"] == 400


def envelope_statistics(file: str, bounds: tuple[float, float, float, float]) -> list[dict]:
    """Per band: valid pixels whose centre lies in ``bounds``, straight from the file."""
    xmin, ymin, xmax, ymax = bounds
    with rasterio.open(data_path(file)) as dataset:
        data = dataset.read(masked=True)
        cols, rows = np.meshgrid(np.arange(dataset.width), np.arange(dataset.height))
        xs, ys = rasterio.transform.xy(dataset.transform, rows, cols)
    xs, ys = np.asarray(xs).reshape(rows.shape), np.asarray(ys).reshape(rows.shape)
    inside = (xs >= xmin) & (xs <= xmax) & (ys >= ymin) & (ys <= ymax)
    bands = []
    for band in data:
        values = band.data[inside & ~np.ma.getmaskarray(band)]
        bands.append(
            {
                "values": values,
                "min": float(values.min()),
                "max": float(values.max()),
                "mean": float(values.mean(dtype="float64")),
                "standardDeviation": float(values.std(dtype="float64")),
                "median": float(np.median(values)),
                "count": int(values.size),
            }
        )
    return bands


async def test_statistics_and_histograms_of_an_envelope(client: TestClient) -> None:
    bounds = (150000.0, 2650000.0, 250000.0, 2750000.0)
    xmin, ymin, xmax, ymax = bounds
    answer = await operation(
        client,
        "rgb",
        "computeStatisticsHistograms",
        geometry={"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
        geometryType="esriGeometryEnvelope",
    )
    expected = envelope_statistics("RGB.byte.tif", bounds)
    assert len(answer["statistics"]) == len(answer["histograms"]) == 3
    for stats, histogram, band in zip(
        answer["statistics"], answer["histograms"], expected, strict=True
    ):
        for key in ("min", "max", "count", "median"):
            assert stats[key] == band[key], key
        assert stats["mean"] == pytest.approx(band["mean"], rel=1e-9)
        assert stats["standardDeviation"] == pytest.approx(band["standardDeviation"], rel=1e-9)
        counts = np.bincount(band["values"], minlength=256)
        assert histogram == {"size": 256, "min": -0.5, "max": 255.5, "counts": counts.tolist()}
        assert stats["mode"] == float(counts.argmax())
        assert stats["skipX"] == stats["skipY"] == 1
    # The same envelope with its corners swapped, as esri-leaflet orders them.
    swapped = await operation(
        client,
        "rgb",
        "computeStatisticsHistograms",
        geometry={"xmin": xmin, "ymin": ymax, "xmax": xmax, "ymax": ymin},
        geometryType="esriGeometryEnvelope",
    )
    assert swapped == answer


async def test_statistics_of_a_float_raster_inside_a_triangle(client: TestClient) -> None:
    (ax, ay), (bx, by), (cx, cy) = (
        (321500.0, 4297500.0),
        (322060.0, 4297520.0),
        (321800.0, 4298010.0),
    )
    ring = [[ax, ay], [cx, cy], [bx, by], [ax, ay]]
    answer = await operation(
        client,
        "dtm",
        "computeStatisticsHistograms",
        geometry={"rings": [ring], "spatialReference": {"wkid": 26918}},
        geometryType="esriGeometryPolygon",
    )
    with rasterio.open(data_path("dtm.tif")) as dataset:
        band = dataset.read(1, masked=True)
        cols, rows = np.meshgrid(np.arange(dataset.width), np.arange(dataset.height))
        xs, ys = rasterio.transform.xy(dataset.transform, rows, cols)
    xs, ys = np.asarray(xs).reshape(rows.shape), np.asarray(ys).reshape(rows.shape)

    def side(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)

    sides = [side(ax, ay, bx, by), side(bx, by, cx, cy), side(cx, cy, ax, ay)]
    inside = np.all([s > 0 for s in sides], axis=0) | np.all([s < 0 for s in sides], axis=0)
    values = band.data[inside & ~np.ma.getmaskarray(band)]
    assert 0 < values.size < band.count()
    (stats,) = answer["statistics"]
    assert stats["count"] == values.size
    assert stats["min"] == float(values.min())
    assert stats["max"] == float(values.max())
    assert stats["mean"] == pytest.approx(float(values.mean(dtype="float64")), rel=1e-9)
    (histogram,) = answer["histograms"]
    counts, _ = np.histogram(values, bins=256, range=(float(values.min()), float(values.max())))
    assert histogram["counts"] == counts.tolist()
    assert (histogram["min"], histogram["max"]) == (float(values.min()), float(values.max()))


async def test_statistics_at_a_coarser_pixel_size(client: TestClient) -> None:
    bounds = {"xmin": 150000.0, "ymin": 2650000.0, "xmax": 250000.0, "ymax": 2750000.0}
    answer = await operation(
        client,
        "rgb",
        "computeStatisticsHistograms",
        geometry=bounds,
        geometryType="esriGeometryEnvelope",
        pixelSize={"x": 900.2, "y": 900.2, "spatialReference": {"wkid": 32618}},
    )
    native = envelope_statistics("RGB.byte.tif", tuple(bounds.values()))
    stats = answer["statistics"][0]
    assert (stats["skipX"], stats["skipY"]) == (3, 3)
    assert native[0]["count"] / 12 < stats["count"] < native[0]["count"] / 6


async def test_statistics_need_an_area(client: TestClient) -> None:
    missing = await operation(client, "rgb", "computeStatisticsHistograms")
    assert missing["error"]["code"] == 400
    point = await operation(client, "rgb", "computeStatisticsHistograms", geometry="1,2")
    assert point["error"]["code"] == 400
    outside = await operation(
        client,
        "rgb",
        "computeStatisticsHistograms",
        geometry={"xmin": 0, "ymin": 0, "xmax": 1, "ymax": 1},
    )
    assert outside == {"statistics": [], "histograms": []}


async def test_key_properties(client: TestClient) -> None:
    assert await operation(client, "naip", "keyProperties") == {
        "DataType": "Generic",
        "BandProperties": [{"BandName": f"Band_{i}"} for i in range(1, 5)],
    }
    earth = await operation(client, "earth", "keyProperties")
    assert earth["DataType"] == "Thematic"
