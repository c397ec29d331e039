"""Pixel values of a layer at a point: the upstream's ``identify``, relayed as plain JSON.

``GET /tiles/<layer>/point?lon=<degrees>&lat=<degrees>`` (WGS 84, longitude first) asks the
layer's ImageServer ``identify`` (ArcGIS REST "Identify (Image Service)") with the point in
EPSG:4326 and the layer's ``renderingRule``/``mosaicRule`` export parameters, and
answers ``{"layer", "lon", "lat", "values": [...], "location": {...}}``: one number per band
of the service, ``null`` where the upstream says ``NoData`` (every band when the whole pixel
is NoData and the band count is known from the service info, else ``values`` is ``null``).

Answers are not cached by the gateway: a point query is one small upstream call, and caching
every coordinate a client may send would only fill the cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway import metrics
from gateway.tiles.layer import Layer

# The export parameters that identify takes too (ArcGIS REST "Identify (Image Service)").
IDENTIFY_PARAMETERS = ("renderingRule", "mosaicRule", "time")
NO_DATA = "nodata"


class InvalidPoint(ValueError):
    """``lon``/``lat`` missing, not numbers, or outside -180..180 / -90..90 degrees; ``str()``
    says which."""


def parse_point(query: Mapping[str, str]) -> tuple[float, float]:
    """``(lon, lat)`` in degrees (EPSG:4326, longitude first) from the ``lon`` and ``lat``
    query parameters. Raises ``InvalidPoint``."""
    values = []
    for name, limit in (("lon", 180.0), ("lat", 90.0)):
        text = query.get(name)
        if text is None or not text.strip():
            raise InvalidPoint(f"{name} is required: /tiles/<layer>/point?lon=<deg>&lat=<deg>")
        try:
            value = float(text)
        except ValueError:
            raise InvalidPoint(f"{name} must be a number of degrees, not {text!r}") from None
        if not math.isfinite(value) or abs(value) > limit:
            raise InvalidPoint(f"{name} must be within -{limit:g} and {limit:g} degrees")
        values.append(value)
    return values[0], values[1]


def _band_value(text: str) -> int | float | None:
    """One band of an identify ``value``: an int or float, ``None`` for NoData or NaN."""
    text = text.strip()
    if text.lower() == NO_DATA:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def band_values(value: Any, band_count: int | None) -> list[int | float | None] | None:
    """The band values of an identify ``value`` (``"12, 34, 56"``, ``"NoData"``): numbers,
    ``None`` for NoData; a whole-pixel ``NoData`` gives ``band_count`` ``None``\\ s, or
    ``None`` when the band count is unknown."""
    if not isinstance(value, str):
        return None
    if value.strip().lower() == NO_DATA:
        return None if band_count is None else [None] * band_count
    return [_band_value(part) for part in value.split(",")]


async def pixel_values(layer: Layer, lon: float, lat: float, variant: str = "") -> dict[str, Any]:
    """The point answer of ``layer`` at ``lon``, ``lat`` (module docstring) for ``variant`` (a
    token of ``LayerVariants.choose``; the default when empty): its ``renderingRule``,
    ``mosaicRule`` and ``time`` go to identify.

    Raises ``UpstreamError`` (502/504) when identify fails.
    """
    params = layer.variants.params(variant)
    fixed = {name: params[name] for name in IDENTIFY_PARAMETERS if name in params}
    with metrics.upstream_call(layer.name, "identify"):
        answer = await layer.client.identify(lon, lat, fixed)
    return {
        "layer": layer.name,
        "lon": lon,
        "lat": lat,
        "values": band_values(answer.get("value"), layer.band_count),
        "location": answer.get("location"),
    }
