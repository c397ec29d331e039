"""XYZ tiles, under ``/tiles``: ``/<layer>/<z>/<x>/<y>[@2x].<png|jpg|webp>`` (WebMercatorQuad),
``/<layer>/<TileMatrixSet>/<z>/<x>/<y>[@2x].<png|jpg|webp>`` (any set of the layer) and the
elevation tiles ``/<layer>/<terrain-rgb|terrarium>/<z>/<x>/<y>[@2x].png`` (WebMercatorQuad, the
scheme of MapLibre's ``raster-dem``; the layout of the AWS Terrain Tiles, ``terrarium/{z}/{x}/
{y}.png``).

``z/x/y`` is TileMatrix/TileCol/TileRow with the row counted from the top (the Google/OSM
scheme that Leaflet, OpenLayers and MapLibre use). ``@2x`` gives twice the pixels over the
same bbox for high-density screens. ``?style=<name>&time=<ISO 8601>`` choose one of the
layer's variants (``LayerConfig.styles``, ``LayerConfig.time``). Errors are the gateway's JSON.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import ELEVATION_FORMATS
from gateway.errors import (
    InvalidTileAddress,
    TileOutOfRange,
    UnknownLayer,
    UnknownTileMatrixSet,
    UnsupportedFormat,
    UpstreamError,
    VariantRefused,
)
from gateway.grids import RETINA, WEB_MERCATOR_QUAD
from gateway.services.http import (
    PIPELINE,
    json_error,
    serve_tile,
    upstream_error,
)

_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
_ADDRESS = "a tile address is /tiles/<layer>[/<TileMatrixSet>]/<z>/<x>/<y>[@2x].<png|jpg|webp>"


async def get_tile(request: web.Request) -> web.Response:
    """Answer one XYZ tile; errors are JSON (404 unknown layer, TileMatrixSet or tile, 400 bad
    extension or coordinates, a style or time the layer does not offer, 502/504 upstream
    failure, 503 with ``Retry-After`` when the upstream is busy)."""
    pipeline = request.app[PIPELINE]
    info = request.match_info
    layer, tms = info["layer"], info.get("tms", WEB_MERCATOR_QUAD)
    row, dot, given_ext = info["name"].rpartition(".")
    if not dot:
        row, given_ext = info["name"], ""
    retina = row.endswith("@2x")
    if retina:
        row = row.removesuffix("@2x")
    # An elevation encoding is named by the path, its tiles being PNG files; the extension
    # alone never names one.
    ext = _EXTENSIONS.get(given_ext.lower(), "" if given_ext in ELEVATION_FORMATS else given_ext)
    if tms in ELEVATION_FORMATS:
        if ext != "png":
            return json_error(
                400, f"a {tms} tile address is /tiles/<layer>/{tms}/<z>/<x>/<y>[@2x].png"
            )
        tms, ext = WEB_MERCATOR_QUAD, tms
    # Most tile URLs carry no query: they skip parsing one.
    query = request.query if request.query_string else None
    try:
        tile = pipeline.resolve(
            layer,
            tms,
            info["z"],
            row,
            info["x"],
            ext,
            2 if retina else 1,
            style=None if query is None else query.get("style"),
            time=None if query is None else query.get("time"),
        )
    except (UnknownLayer, UnknownTileMatrixSet, TileOutOfRange) as exc:
        return json_error(404, str(exc))
    except UnsupportedFormat as exc:
        if exc.asked in _EXTENSIONS.values() or exc.asked in ELEVATION_FORMATS:
            return json_error(400, str(exc))
        if not given_ext:
            return json_error(400, _ADDRESS)
        return json_error(400, f"unknown tile extension {given_ext!r}; use png, jpg or webp")
    except InvalidTileAddress:
        return json_error(400, _ADDRESS)
    except VariantRefused as exc:
        return json_error(
            400, f"layer {layer!r}: {exc}", parameter=exc.part.lower(), offered=list(exc.offered)
        )
    if retina and tms.endswith(RETINA):
        return json_error(400, f"{tms} already has 512-pixel tiles: ask without @2x")
    try:
        return await serve_tile(request, tile)
    except UpstreamError as exc:
        return upstream_error(layer, exc)


def routes() -> list[web.RouteDef]:
    """The XYZ route table, relative to ``/tiles``."""
    return [
        web.get("/{layer}/{z}/{x}/{name}", get_tile),
        web.get("/{layer}/{tms}/{z}/{x}/{name}", get_tile),
    ]
