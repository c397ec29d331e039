"""XYZ tiles: ``GET /tiles/<layer>/<z>/<x>/<y>[@2x].<png|jpg>`` (WebMercatorQuad) and
``GET /tiles/<layer>/<TileMatrixSet>/<z>/<x>/<y>[@2x].<png|jpg>`` (any set of the layer).

``z/x/y`` is TileMatrix/TileCol/TileRow with the row counted from the top (the Google/OSM
scheme that Leaflet, OpenLayers and MapLibre use). ``@2x`` gives twice the pixels over the
same bbox for high-density screens.
"""

from __future__ import annotations

import re
from email.utils import formatdate

from aiohttp import web

from gateway.grids import RETINA, WEB_MERCATOR_QUAD, TileOutOfRange
from gateway.services.common import PIPELINE, json_error, upstream_error
from gateway.sources.imageserver import UpstreamError
from gateway.tiles import TileResult, UnknownLayer, UnknownTileMatrixSet, UnsupportedFormat

_TILE_NAME = re.compile(r"(?P<y>\d+)(?P<retina>@2x)?\.(?P<ext>[A-Za-z0-9]+)")
_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}
_ETAG_LIST = re.compile(r'(?:W/)?"[^"]*"|\*')


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 section 13.1.2: weak comparison of ``If-None-Match`` against ``etag``."""
    tags = _ETAG_LIST.findall(if_none_match)
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def tile_response(request: web.Request, result: TileResult, cache_control: str) -> web.Response:
    """The HTTP answer for a tile: 200 with the bytes, or 304 when ``If-None-Match`` matches."""
    entry = result.entry
    headers = {
        "ETag": entry.etag,
        "Cache-Control": cache_control,
        "X-Cache": result.cache_status,
        "Last-Modified": formatdate(entry.upstream_time or entry.created, usegmt=True),
    }
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and _matches(if_none_match, entry.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=entry.data, content_type=entry.content_type, headers=headers)


async def get_tile(request: web.Request) -> web.Response:
    """Answer one XYZ tile; errors are JSON (404 unknown layer, TileMatrixSet or tile, 400 bad
    extension or coordinates, 502/504 upstream failure)."""
    pipeline = request.app[PIPELINE]
    layer = request.match_info["layer"]
    tms = request.match_info.get("tms", WEB_MERCATOR_QUAD)
    if layer not in pipeline.layers:
        return json_error(404, f"unknown layer {layer!r}")
    if tms not in pipeline.layers[layer].grids:
        return json_error(404, f"layer {layer!r} is not served in TileMatrixSet {tms!r}")
    match = _TILE_NAME.fullmatch(request.match_info["name"])
    z_text, x_text = request.match_info["z"], request.match_info["x"]
    if match is None or not z_text.isdigit() or not x_text.isdigit():
        return json_error(
            400, "a tile address is /tiles/<layer>[/<TileMatrixSet>]/<z>/<x>/<y>[@2x].<png|jpg>"
        )
    ext = _EXTENSIONS.get(match["ext"].lower())
    if ext is None:
        return json_error(400, f"unknown tile extension {match['ext']!r}; use png or jpg")
    if match["retina"] and tms.endswith(RETINA):
        return json_error(400, f"{tms} already has 512-pixel tiles: ask without @2x")
    try:
        tile = pipeline.resolve(
            layer,
            tms,
            int(z_text),
            int(x_text),
            int(match["y"]),
            ext,
            2 if match["retina"] else 1,
        )
    except UnsupportedFormat as exc:
        return json_error(400, str(exc))
    except (TileOutOfRange, UnknownLayer, UnknownTileMatrixSet) as exc:
        return json_error(404, str(exc))
    try:
        result = await pipeline.get_tile(tile)
    except UpstreamError as exc:
        return upstream_error(layer, exc)
    return tile_response(request, result, pipeline.layers[layer].cache_control)


def routes() -> list[web.RouteDef]:
    """The XYZ route table."""
    return [
        web.get("/tiles/{layer}/{z}/{x}/{name}", get_tile),
        web.get("/tiles/{layer}/{tms}/{z}/{x}/{name}", get_tile),
    ]
