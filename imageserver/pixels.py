"""Pixel queries of an image service: identify, getSamples, computeStatisticsHistograms and
keyProperties, computed from the service raster with rasterio.

Everything here blocks (GDAL reads); the app runs it in its thread pool. Answers have the JSON
shapes of the ArcGIS REST pages "Identify (Image Service)", "Get Samples", "Compute Statistics
and Histograms" (with the "Histogram" object) and "Key Properties". This server publishes raster
datasets, not mosaic datasets, so there are no catalog items: ``objectId`` is 0, ``rasterId``
is 1 and ``catalogItems`` is ``null``, as ArcGIS answers for a raster-dataset service.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.warp import transform, transform_geom
from rasterio.windows import Window

from imageserver.geometry import Geometry
from imageserver.raster import RasterSource
from imageserver.spatialref import spatial_reference_json

NO_DATA = "NoData"
HISTOGRAM_SIZE = 256

Point = tuple[float, float]


def sample_points(geometry: Geometry) -> list[tuple[float, float]]:
    """The ``(x, y)`` points getSamples reads, in ``geometry.crs``: a point's, or a
    multipoint's each.

    Raises:
        ValueError: a polyline, polygon or envelope (sampling along lines or areas is not
            implemented by this server).
    """
    if geometry.kind == "point":
        x, y, *_ = geometry.geojson["coordinates"]
        return [(x, y)]
    if geometry.kind == "multipoint":
        return [(p[0], p[1]) for p in geometry.geojson["coordinates"]]
    raise ValueError("this server samples points and multipoints only")


def to_source_points(source: RasterSource, points: Sequence[Point], crs: CRS | None) -> list[Point]:
    """``points`` given in ``crs`` (``None``: the service SR) projected to the raster's CRS."""
    if crs is None or crs == source.crs or not points:
        return list(points)
    xs, ys = transform(crs, source.crs, [p[0] for p in points], [p[1] for p in points])
    return list(zip(xs, ys, strict=True))


def read_points(source: RasterSource, points: Sequence[Point]) -> list[tuple[float, ...] | None]:
    """Band values under each point (raster CRS), ``None`` outside the raster, on the
    raster's nodata/mask, or on a NaN."""
    bounds = source.bounds
    inside = [
        bounds.left <= x < bounds.right and bounds.bottom < y <= bounds.top for x, y in points
    ]
    values: list[tuple[float, ...] | None] = [None] * len(points)
    wanted = [p for p, ok in zip(points, inside, strict=True) if ok]
    if not wanted:
        return values
    with source.dataset() as dataset:
        samples = list(dataset.sample(wanted, masked=True))
    found = iter(samples)
    for index, ok in enumerate(inside):
        if not ok:
            continue
        sample = next(found)
        if np.ma.is_masked(sample) and sample.mask.all():
            continue
        data = np.ma.getdata(sample)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            continue
        values[index] = tuple(data.tolist())
    return values


def format_value(values: tuple[float, ...] | None, dtype: str) -> str:
    """An identify/getSamples ``value``: band values joined by ``", "``, or ``"NoData"``.

    Integers print without a decimal point; float32 values with the shortest text that
    reads back as the same float32 (``1234.5677``, not ``1234.5677490234375``).
    """
    if values is None:
        return NO_DATA
    kind = np.dtype(dtype).kind
    if kind in "iu":
        return ", ".join(str(int(v)) for v in values)
    scalar = np.float32 if dtype == "float32" else np.float64
    return ", ".join(str(scalar(v)) for v in values)


def identify(source: RasterSource, geometry: Geometry, point: Point) -> dict[str, Any]:
    """The identify answer for ``point`` (the geometry's centroid, in ``geometry.crs``).

    ``location`` is the point in the service's spatial reference.
    """
    ((x, y),) = to_source_points(source, [point], geometry.crs)
    (values,) = read_points(source, [(x, y)])
    return {
        "objectId": 0,
        "name": "Pixel",
        "value": format_value(values, source.dtype),
        "location": {"x": x, "y": y, "spatialReference": spatial_reference_json(source.crs)},
        "properties": None,
        "catalogItems": None,
        "catalogItemVisibilities": [],
    }


def samples(source: RasterSource, geometry: Geometry) -> dict[str, Any]:
    """The getSamples answer for a point or multipoint: one sample per point, ``value`` as in
    identify, ``location`` in the service's spatial reference, ``resolution`` the native cell
    size.

    Raises:
        ValueError: a polyline, polygon or envelope (sampling along lines or areas is not
            implemented by this server).
    """
    located = to_source_points(source, sample_points(geometry), geometry.crs)
    spatial_reference = spatial_reference_json(source.crs)
    return {
        "samples": [
            {
                "location": {"x": x, "y": y, "spatialReference": spatial_reference},
                "locationId": index,
                "value": format_value(values, source.dtype),
                "rasterId": 1,
                "resolution": source.resolution[0],
            }
            for index, ((x, y), values) in enumerate(
                zip(located, read_points(source, located), strict=True)
            )
        ]
    }


def source_pixel_size(
    source: RasterSource, pixel_size: tuple[float, float, CRS | None] | None, at: Point
) -> tuple[float, float]:
    """``pixelSize`` in raster CRS units (the native cell size when not given), converted
    around the point ``at`` (raster CRS) when it comes in another spatial reference."""
    if pixel_size is None:
        return source.resolution
    width, height, crs = pixel_size
    if crs is None or crs == source.crs:
        return width, height
    (px,), (py,) = transform(source.crs, crs, [at[0]], [at[1]])
    xs, ys = transform(crs, source.crs, [px, px + width, px], [py, py, py + height])
    return math.hypot(xs[1] - xs[0], ys[1] - ys[0]), math.hypot(xs[2] - xs[0], ys[2] - ys[0])


def statistics_histograms(
    source: RasterSource, geometry: Geometry, pixel_size: tuple[float, float]
) -> dict[str, Any]:
    """computeStatisticsHistograms over the pixels whose centres fall in ``geometry`` (an
    envelope or polygon), read at ``pixel_size`` (raster CRS units, at least native).

    Returns ``{"statistics": [...], "histograms": [...]}`` with one entry per band: statistics
    ``min, max, mean, standardDeviation`` (population), ``median``, ``mode``, ``count`` and
    the read's ``skipX``/``skipY``; histograms of ``size`` 256 bins between ``min`` and
    ``max``: for 8-bit data one bin per value (``-0.5 .. 255.5`` for U8), else the data's own
    range, ``mode`` then being the centre of the fullest bin. Both lists are empty when no
    valid pixel falls inside.

    Raises:
        ValueError: the geometry is not an envelope or polygon.
    """
    if geometry.kind not in ("envelope", "polygon"):
        raise ValueError("the geometry must be an envelope or a polygon")
    shape = geometry.geojson
    if geometry.crs is not None and geometry.crs != source.crs:
        shape = transform_geom(geometry.crs, source.crs, shape)
    skip_x = max(1, math.floor(pixel_size[0] / source.resolution[0] + 1e-9))
    skip_y = max(1, math.floor(pixel_size[1] / source.resolution[1] + 1e-9))
    empty: dict[str, Any] = {"statistics": [], "histograms": []}
    with source.dataset() as dataset:
        window = _window(dataset.transform, dataset.width, dataset.height, shape)
        if window is None:
            return empty
        out_shape = (math.ceil(window.height / skip_y), math.ceil(window.width / skip_x))
        data = dataset.read(
            window=window,
            out_shape=(dataset.count, *out_shape),
            masked=True,
            resampling=Resampling.nearest,
        )
        # Not dataset.window_transform: it warns on affine 3.1+ (see raster.grid_transform).
        read_transform = (
            dataset.transform
            @ Affine.translation(window.col_off, window.row_off)
            @ Affine.scale(window.width / out_shape[1], window.height / out_shape[0])
        )
    outside = geometry_mask([shape], out_shape, read_transform)
    statistics, histograms = [], []
    for band in data:
        valid = ~(np.ma.getmaskarray(band) | outside)
        values = np.ma.getdata(band)[valid]
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size == 0:
            return empty
        histogram = _histogram(values)
        counts = np.asarray(histogram["counts"])
        width = (histogram["max"] - histogram["min"]) / HISTOGRAM_SIZE
        statistics.append(
            {
                "min": float(values.min()),
                "max": float(values.max()),
                "mean": float(values.mean(dtype="float64")),
                "standardDeviation": float(values.std(dtype="float64")),
                "median": float(np.median(values)),
                "mode": float(histogram["min"] + (int(counts.argmax()) + 0.5) * width),
                "skipX": skip_x,
                "skipY": skip_y,
                "count": int(values.size),
            }
        )
        histograms.append(histogram)
    return {"statistics": statistics, "histograms": histograms}


def key_properties(source: RasterSource) -> dict[str, Any]:
    """keyProperties: ``DataType`` (``Thematic`` for a paletted raster, else ``Generic``, as
    the service's ``serviceDataType``) and ``BandProperties`` naming each band as
    ``bandNames`` does."""
    return {
        "DataType": "Thematic" if source.palette is not None else "Generic",
        "BandProperties": [{"BandName": f"Band_{i + 1}"} for i in range(source.count)],
    }


def _histogram(values: np.ndarray) -> dict[str, Any]:
    if values.dtype.itemsize == 1 and values.dtype.kind in "iu":
        lowest = int(np.iinfo(values.dtype).min)
        counts = np.bincount(values.astype(np.int64) - lowest, minlength=HISTOGRAM_SIZE)
        low, high = lowest - 0.5, lowest + HISTOGRAM_SIZE - 0.5
    else:
        low, high = float(values.min()), float(values.max())
        if low == high:
            high = low + 1.0
        counts, _ = np.histogram(values, bins=HISTOGRAM_SIZE, range=(low, high))
    return {"size": HISTOGRAM_SIZE, "min": low, "max": high, "counts": counts.tolist()}


def _window(
    raster_transform: Affine, width: int, height: int, shape: dict[str, Any]
) -> Window | None:
    """The raster window covering the bounds of ``shape`` (raster CRS), or ``None``."""
    xs, ys = [], []
    for ring in shape["coordinates"]:
        for x, y in ring:
            xs.append(x)
            ys.append(y)
    inverse = ~raster_transform
    cols, rows = zip(
        *(inverse @ corner for corner in ((min(xs), max(ys)), (max(xs), min(ys)))), strict=True
    )
    col0, col1 = max(0, math.floor(min(cols))), min(width, math.ceil(max(cols)))
    row0, row1 = max(0, math.floor(min(rows))), min(height, math.ceil(max(rows)))
    if col0 >= col1 or row0 >= row1:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)
