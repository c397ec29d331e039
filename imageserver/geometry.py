"""ArcGIS geometry parameters (``geometry``, ``pixelSize``) of identify, getSamples and
computeStatisticsHistograms, converted to GeoJSON-like mappings for rasterio.

ArcGIS REST "Geometry objects": a point is ``{"x", "y"}``, a multipoint ``{"points"}``, a
polygon ``{"rings"}``, a polyline ``{"paths"}``, an envelope ``{"xmin", "ymin", "xmax", "ymax"}``,
each with an optional ``spatialReference``. Points and envelopes may also be given in the
simple syntax ``x,y`` / ``xmin,ymin,xmax,ymax``. The JSON keys decide the kind;
``geometryType`` only types the simple syntax. Envelope corners may come in either order
(esri-leaflet sends ``xmin,ymax,xmax,ymin``); they are normalised.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from rasterio.crs import CRS

from imageserver.spatialref import spatial_reference_from_json


@dataclass(frozen=True)
class Geometry:
    """A parsed geometry.

    Attributes:
        kind: ``point``, ``multipoint``, ``polyline``, ``polygon`` or ``envelope``.
        geojson: the GeoJSON geometry (an envelope becomes its rectangle ``Polygon``).
        crs: its ``spatialReference``, or ``None`` for "the service's".
    """

    kind: str
    geojson: dict[str, Any]
    crs: CRS | None


def parse_geometry(value: str, geometry_type: str | None) -> Geometry:
    """Parse a ``geometry`` parameter.

    Args:
        value: JSON geometry or the simple ``x,y`` / ``xmin,ymin,xmax,ymax`` syntax.
        geometry_type: ``esriGeometryPoint`` etc., or ``None``.

    Raises:
        ValueError: not a geometry, non-finite coordinates, or an empty envelope.
    """
    text = value.strip()
    if not text.startswith("{"):
        numbers = _numbers(text.split(","))
        if len(numbers) == 2 and geometry_type in (None, "esriGeometryPoint"):
            return Geometry("point", {"type": "Point", "coordinates": numbers}, None)
        if len(numbers) == 4 and geometry_type in (None, "esriGeometryEnvelope"):
            return Geometry("envelope", _envelope(numbers), None)
        raise ValueError("expected x,y for a point or xmin,ymin,xmax,ymax for an envelope")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError("invalid geometry JSON") from exc
    if not isinstance(document, dict):
        raise ValueError("invalid geometry JSON")
    crs = None
    if isinstance(document.get("spatialReference"), dict):
        crs = spatial_reference_from_json(document["spatialReference"])
    try:
        if "x" in document:
            point = _numbers([document["x"], document["y"]])
            return Geometry("point", {"type": "Point", "coordinates": point}, crs)
        if "points" in document:
            points = [_numbers(p[:2]) for p in document["points"]]
            return Geometry("multipoint", {"type": "MultiPoint", "coordinates": points}, crs)
        if "rings" in document:
            rings = [[_numbers(p[:2]) for p in ring] for ring in document["rings"]]
            return Geometry("polygon", {"type": "Polygon", "coordinates": rings}, crs)
        if "paths" in document:
            paths = [[_numbers(p[:2]) for p in path] for path in document["paths"]]
            return Geometry("polyline", {"type": "MultiLineString", "coordinates": paths}, crs)
        if "xmin" in document:
            corners = _numbers([document[k] for k in ("xmin", "ymin", "xmax", "ymax")])
            return Geometry("envelope", _envelope(corners), crs)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError("malformed geometry JSON") from exc
    raise ValueError("expected a point, multipoint, polyline, polygon or envelope")


def parse_pixel_size(value: str) -> tuple[float, float, CRS | None]:
    """Parse ``pixelSize``: ``{"x", "y", "spatialReference"}`` or ``x,y``.

    Raises:
        ValueError: malformed, or not positive.
    """
    geometry = parse_geometry(value, "esriGeometryPoint")
    if geometry.kind != "point":
        raise ValueError("expected x,y or a point JSON")
    x, y = geometry.geojson["coordinates"]
    if x <= 0 or y <= 0:
        raise ValueError("pixel sizes must be positive")
    return x, y, geometry.crs


def centroid(geometry: Geometry) -> tuple[float, float]:
    """The point identify reads for ``geometry``: the point itself, the centroid of a
    polygon's outer ring or envelope, the mean of multipoint or polyline vertices (ArcGIS
    REST "Identify (Image Service)": the value "at the centroid of the specified location")."""
    coordinates = geometry.geojson["coordinates"]
    if geometry.kind == "point":
        return coordinates[0], coordinates[1]
    if geometry.kind in ("polygon", "envelope"):
        return _ring_centroid(coordinates[0])
    vertices = (
        coordinates
        if geometry.kind == "multipoint"
        else [vertex for path in coordinates for vertex in path]
    )
    if not vertices:
        raise ValueError("the geometry has no vertices")
    return (
        math.fsum(v[0] for v in vertices) / len(vertices),
        math.fsum(v[1] for v in vertices) / len(vertices),
    )


def _ring_centroid(ring: list[list[float]]) -> tuple[float, float]:
    if not ring:
        raise ValueError("the polygon has no vertices")
    area = cx = cy = 0.0
    for (x0, y0), (x1, y1) in zip(ring, [*ring[1:], ring[0]], strict=True):
        cross = x0 * y1 - x1 * y0
        area += cross
        cx += (x0 + x1) * cross
        cy += (y0 + y1) * cross
    if area == 0:
        return ring[0][0], ring[0][1]
    return cx / (3 * area), cy / (3 * area)


def _numbers(values: list[Any]) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError("coordinates must be numbers") from None
    if not all(math.isfinite(n) for n in numbers):
        raise ValueError("coordinates must be finite numbers")
    return numbers


def _envelope(corners: list[float]) -> dict[str, Any]:
    x0, y0, x1, y1 = corners
    xmin, xmax, ymin, ymax = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    if xmin == xmax or ymin == ymax:
        raise ValueError("the envelope is empty")
    ring = [[xmin, ymin], [xmin, ymax], [xmax, ymax], [xmax, ymin], [xmin, ymin]]
    return {"type": "Polygon", "coordinates": [ring]}
