"""TileJSON 3.0.0 for a layer's XYZ tiles: ``GET /tiles/<layer>/tilejson.json`` (served by the
``/tiles`` front with the XYZ tiles it describes).

The document describes the WebMercatorQuad tiles of ``services/xyz.py`` (TileJSON has no other
tiling scheme). Query parameters, both optional:

``format``  ``png``, ``jpg`` (``jpeg`` is accepted too) or ``webp``: the extension in the
            ``tiles`` template; ``terrain-rgb`` or ``terrarium``: the layer's elevation tiles
            (``/tiles/<layer>/<encoding>/{z}/{x}/{y}.png``), with the ``encoding`` (``mapbox``
            or ``terrarium``) and ``tileSize`` (256) that MapLibre's ``raster-dem`` sources read
            from a TileJSON; default the layer's first format.
``scale``   ``1`` or ``2``: with 2 the template asks for ``{y}@2x.<ext>``, 512-pixel tiles over
            the bbox of the 256-pixel ones, for high-density screens. TileJSON has no tile size
            field: a client keeps treating the tiles as 256 CSS pixels (MapLibre ``tileSize: 256``).
``style``   one of the layer's styles, and
``time``    one of its time values: the ``tiles`` template then carries ``?style=&time=`` (the
            style's identifier and the time value as the layer lists it; the default ones are
            left out), so the document describes the tiles of that variant.

The documents are built once per (layer, format, scale, public base URL) and kept in a bounded
``DocumentCache`` (``services.http``), gzip-compressed once for clients that accept it.
"""

from __future__ import annotations

import html
import math
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.config import ELEVATION_FORMATS
from gateway.errors import VariantRefused
from gateway.grids import WEB_MERCATOR_QUAD, Grid
from gateway.services.http import (
    CONFIG,
    PIPELINE,
    DocumentCache,
    json_error,
)
from gateway.terrain import ENCODINGS
from gateway.tiles import Layer

TILEJSON_VERSION = "3.0.0"
_FORMATS = {
    "png": "png",
    "jpg": "jpg",
    "jpeg": "jpg",
    "webp": "webp",
    "terrain-rgb": "terrain-rgb",
    "terrarium": "terrarium",
}
# Digits kept for center lon/lat: 1e-6 degree is about 0.1 m, finer than any tile pixel.
_CENTER_DIGITS = 6


def _mercator_y(lat: float) -> float:
    """Web Mercator northing of latitude ``lat`` (degrees) on the unit sphere."""
    return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def _latitude(y: float) -> float:
    """The latitude (degrees) of unit-sphere Web Mercator northing ``y``."""
    return math.degrees(2 * math.atan(math.exp(y)) - math.pi / 2)


def bounds_and_center(layer: Layer, grid: Grid) -> tuple[list[float], list[float]]:
    """TileJSON ``bounds`` and ``center`` of ``layer`` in ``grid`` (a Web Mercator set).

    ``bounds`` is ``[west, south, east, north]`` in degrees (lon/lat, WGS 84): the layer's data
    extent clipped to the set's area (latitudes within +-85.0511), or the whole area when the
    extent is unknown (the default of TileJSON 3.0.0 section 3.5). ``center`` (section 3.6) is
    ``[lon, lat, zoom]``: the middle of the bounds in Web Mercator, and the deepest TileMatrix
    of the layer's range at which the bounds still fit in one tile (so a client's first view
    shows all the data).
    """
    area = grid.definition.bbox
    west, south, east, north = layer.bounds or (area.left, area.bottom, area.right, area.top)
    west, east = (min(max(v, area.left), area.right) for v in (west, east))
    south, north = (min(max(v, area.bottom), area.top) for v in (south, north))
    low, high = layer.zoom_range(grid)
    y_south, y_north = _mercator_y(south), _mercator_y(north)
    span = max(math.radians(east - west), y_north - y_south)
    zoom = high if span <= 0 else math.floor(math.log2(2 * math.pi / span))
    center = [
        # "+ 0.0" turns a rounded -0.0 into 0.0, which JSON would otherwise show as "-0.0".
        round((west + east) / 2, _CENTER_DIGITS) + 0.0,
        round(_latitude((y_south + y_north) / 2), _CENTER_DIGITS) + 0.0,
        min(max(zoom, low), high),
    ]
    return [west, south, east, north], center


def tilejson(
    layer: Layer,
    grid: Grid,
    base: str,
    ext: str,
    scale: int,
    description: str,
    query: str = "",
) -> dict[str, Any]:
    """The TileJSON 3.0.0 document of ``layer``'s XYZ tiles in ``grid`` (WebMercatorQuad).

    ``base`` is the public base URL (no trailing slash) the absolute ``tiles`` template starts
    with (TileJSON 3.0.0 section 3.2), ``ext`` the tile extension, ``scale`` 1 or 2 (``@2x``),
    ``query`` what the template ends with (``?style=...``, a variant's) or ``""``.
    ``vector_layers`` (section 3.3) is required by the TileJSON JSON schema although the text
    exempts raster tilesets: an empty list satisfies both. Clients may render ``attribution`` as
    HTML (section 3.4), so the configured plain text is escaped. For an elevation format
    (``terrain-rgb``, ``terrarium``) the template is the elevation path and the document adds
    ``encoding`` and ``tileSize``, which MapLibre GL reads from a ``raster-dem`` source's
    TileJSON (its ``loadTileJson`` keeps them; TileJSON 3.0.0 section 3 allows extra keys).
    """
    low, high = layer.zoom_range(grid)
    bounds, center = bounds_and_center(layer, grid)
    retina = "@2x" if scale == 2 else ""
    path = f"{layer.name}/{ext}" if ext in ELEVATION_FORMATS else layer.name
    suffix = "png" if ext in ELEVATION_FORMATS else ext
    document: dict[str, Any] = {
        "tilejson": TILEJSON_VERSION,
        "name": layer.config.title or layer.name,
        "description": description,
        "tiles": [f"{base}/tiles/{path}/{{z}}/{{x}}/{{y}}{retina}.{suffix}{query}"],
        "vector_layers": [],
        "scheme": "xyz",
        "minzoom": low,
        "maxzoom": high,
        "bounds": bounds,
        "center": center,
    }
    if layer.config.attribution:
        document["attribution"] = html.escape(layer.config.attribution)
    if ext in ELEVATION_FORMATS:
        # @2x tiles hold 512 pixels over the bbox of a 256-pixel tile: still tileSize 256.
        document["encoding"] = ENCODINGS[ext]
        document["tileSize"] = grid.tile_size
    return document


class TileJSONService:
    """The TileJSON route and the documents it has built (one instance per application)."""

    def __init__(self) -> None:
        self._documents = DocumentCache()

    async def get(self, request: web.Request) -> web.Response:
        """Answer ``GET /tiles/<layer>/tilejson.json[?format=<format>][&scale=1|2][&style=]
        [&time=]``.

        Errors are JSON (architecture.md): 404 for an unknown layer or one not served in
        WebMercatorQuad (or in none of its levels), 400 for a ``format`` the layer does not
        offer, a ``scale`` other than 1 or 2, or a style or time it does not offer.
        """
        pipeline = request.app[PIPELINE]
        name = request.match_info["layer"]
        layer = pipeline.layers.get(name)
        if layer is None:
            return json_error(404, f"unknown layer {name!r}")
        grid = layer.grids.get(WEB_MERCATOR_QUAD)
        if grid is None:
            return json_error(
                404, f"layer {name!r} is not served in {WEB_MERCATOR_QUAD}, the TileJSON scheme"
            )
        low, high = layer.zoom_range(grid)
        if low > high:
            return json_error(404, f"layer {name!r} serves no TileMatrix of {WEB_MERCATOR_QUAD}")
        asked = request.query.get("format", layer.config.formats[0])
        ext = _FORMATS.get(asked.lower())
        if ext not in layer.config.formats:
            offered = ", ".join(layer.config.formats)
            return json_error(400, f"layer {name!r} offers the formats {offered}, not {asked!r}")
        scale_text = request.query.get("scale", "1")
        if scale_text not in ("1", "2"):
            return json_error(400, f"scale must be 1 or 2, not {scale_text!r}")
        try:
            choice = layer.variants.choose(request.query.get("style"), request.query.get("time"))
        except VariantRefused as exc:
            return json_error(
                400,
                f"layer {name!r}: {exc}",
                parameter=exc.part.lower(),
                offered=list(exc.offered),
            )
        query = _variant_query(layer, choice.style, choice.time) if choice.token else ""
        description = request.app[CONFIG].service.abstract
        # Clients must honour the documents' short freshness (TileJSON 3.0.0 section 5); the
        # tile URLs inside depend on the request's host (json_answer varies with it). A layer
        # published again under its name is another layer: the layers' version is in the key.
        return self._documents.json_answer(
            request,
            (name, ext, scale_text, choice.token, pipeline.layers_version),
            lambda base: tilejson(layer, grid, base, ext, int(scale_text), description, query),
        )


def _variant_query(layer: Layer, style: str, time: str | None) -> str:
    """The query naming a variant in tile URLs: its non-default style and time."""
    variants = layer.variants
    pairs = [("style", style)] if style != variants.default_style else []
    if time is not None and time != variants.default_time:
        pairs.append(("time", time))
    return "?" + urlencode(pairs)


def routes() -> list[web.RouteDef]:
    """The TileJSON route table, relative to ``/tiles`` (a fresh document cache for each
    application)."""
    return [web.get("/{layer}/tilejson.json", TileJSONService().get)]
