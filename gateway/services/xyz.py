"""XYZ tiles: ``GET /tiles/<layer>/<z>/<x>/<y>[@2x].<png|jpg>`` (WebMercatorQuad) and
``GET /tiles/<layer>/<TileMatrixSet>/<z>/<x>/<y>[@2x].<png|jpg>`` (any set of the layer).

``z/x/y`` is TileMatrix/TileCol/TileRow with the row counted from the top (the Google/OSM
scheme that Leaflet, OpenLayers and MapLibre use). ``@2x`` gives twice the pixels over the
same bbox for high-density screens.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from functools import lru_cache
from typing import NamedTuple, cast

from aiohttp import web

from gateway.cache.codec import TileEntry
from gateway.cache.l1 import MemoryTier
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


@lru_cache(maxsize=4096)
def _http_date(timestamp: float) -> str:
    # The tiles of one metatile share their creation time; formatting it is a hit's costliest
    # header.
    return formatdate(timestamp, usegmt=True)


def _headers(entry: TileEntry, cache_status: str, cache_control: str) -> dict[str, str]:
    return {
        "Content-Type": entry.content_type,
        "ETag": entry.etag,
        "Cache-Control": cache_control,
        "X-Cache": cache_status,
        "Last-Modified": _http_date(entry.upstream_time or entry.created),
    }


def tile_response(request: web.Request, result: TileResult, cache_control: str) -> web.Response:
    """The HTTP answer for a tile: 200 with the bytes, or 304 when ``If-None-Match`` matches."""
    entry = result.entry
    headers = _headers(entry, result.cache_status, cache_control)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and _matches(if_none_match, entry.etag):
        del headers["Content-Type"]
        return web.Response(status=304, headers=headers)
    return web.Response(body=entry.data, headers=headers)


class _Ready(NamedTuple):
    headers: dict[str, str]
    fresh_until: float  # epoch seconds


class HitAnswers:
    """Ready answers to repeated XYZ hits: the tile key of each request path seen, and on the
    L1 entry of that key (``MemoryTier.prepare``) the answer's headers and the end of the
    entry's freshness (epoch seconds).

    A hit of a path seen before is then a dict lookup, an L1 lookup and a ``web.Response`` of
    prebuilt headers, instead of parsing, resolving and keying the tile again: the handler's
    own work is most of a hit's cost (bench/README.md, figure a). The answer lives on the L1
    entry, so whatever drops or replaces the entry (expiry, eviction, purges, a refresh) drops
    it too; past its freshness, or with ``If-None-Match``, the request takes the full path.
    ``max_paths`` bounds the path table (oldest forgotten first).
    """

    def __init__(self, l1: MemoryTier, max_paths: int = 100_000) -> None:
        self._l1 = l1
        self._keys: dict[str, str] = {}
        self._max_paths = max_paths

    def answer(self, request: web.Request) -> web.Response | None:
        """The 200 answer to ``request`` from a prepared entry, or ``None``."""
        key = self._keys.get(request.path)
        if key is None or "If-None-Match" in request.headers:
            return None
        found = self._l1.prepared(key)
        if found is None:
            return None
        entry, prepared = found
        ready = cast(_Ready, prepared)
        if time.time() >= ready.fresh_until:
            return None
        return web.Response(body=entry.data, headers=ready.headers)

    def remember(
        self, request: web.Request, key: str, entry: TileEntry, cache_control: str, ttl: int
    ) -> None:
        """Prepare the answers of later hits of ``request.path``, served by ``entry`` (under
        ``key``) for ``ttl`` seconds after it was made. Nothing is kept when ``entry`` is not
        (or no longer) in L1, e.g. an empty tile outside the data."""
        ready = _Ready(_headers(entry, "HIT", cache_control), entry.created + ttl)
        if not self._l1.prepare(key, entry, ready):
            return
        path = request.path
        if self._keys.get(path) != key:
            if len(self._keys) >= self._max_paths:
                del self._keys[next(iter(self._keys))]
            self._keys[path] = key


HIT_ANSWERS = web.AppKey("hit_answers", HitAnswers)


async def get_tile(request: web.Request) -> web.Response:
    """Answer one XYZ tile; errors are JSON (404 unknown layer, TileMatrixSet or tile, 400 bad
    extension or coordinates, 502/504 upstream failure)."""
    answers = request.app.get(HIT_ANSWERS)
    if answers is not None:
        ready = answers.answer(request)
        if ready is not None:
            return ready
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
    config = pipeline.layers[layer]
    if answers is not None and result.cache_status != "STALE":
        answers.remember(
            request, pipeline.key(tile), result.entry, config.cache_control, config.config.ttl
        )
    return tile_response(request, result, config.cache_control)


def routes() -> list[web.RouteDef]:
    """The XYZ route table."""
    return [
        web.get("/tiles/{layer}/{z}/{x}/{name}", get_tile),
        web.get("/tiles/{layer}/{tms}/{z}/{x}/{name}", get_tile),
    ]
