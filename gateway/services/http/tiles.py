"""Tile answers for every front: headers, conditional requests, and ready answers to repeated
hits prepared on the tile's in-process cache entry."""

from __future__ import annotations

import math
import time
from email.utils import formatdate
from functools import lru_cache
from typing import cast

from aiohttp import web

from gateway.logs import EXCHANGES, Exchange
from gateway.services.http.fronts import PIPELINE
from gateway.tiles import TilePipeline, TileRequest, TileResult

Variant = tuple[tuple[str, str], ...]
"""The headers a front adds to a tile answer, as sorted pairs (``()`` for none)."""


class _Ready:
    """What is prepared on one L1 entry: its layer, the end of its freshness (epoch seconds)
    and the finished headers of its 200 answer for each variant a front asked for."""

    __slots__ = ("fresh_until", "layer", "variants")

    def __init__(self, layer: str, fresh_until: float) -> None:
        self.layer = layer
        self.fresh_until = fresh_until
        self.variants: dict[Variant, dict[str, str]] = {}


def _not_modified(request: web.Request, etag: str, modified: int) -> bool:
    """Whether a conditional GET/HEAD may be answered 304 (RFC 9110 section 13.2.2): the
    ``If-None-Match`` tags (weak comparison) if there are any, else ``If-Modified-Since``
    against ``modified`` (epoch seconds, as sent in ``Last-Modified``)."""
    tags = request.if_none_match
    if tags is not None:
        value = etag.strip('"')
        return any(tag.value == "*" or tag.value == value for tag in tags)
    since = request.if_modified_since
    return since is not None and modified <= since.timestamp()


def tile_response(
    request: web.Request,
    result: TileResult,
    cache_control: str,
    extra: dict[str, str] | None = None,
) -> web.Response:
    """The HTTP answer for a tile: 200 with the bytes and ``Content-Type``, ``ETag``,
    ``Last-Modified`` (the upstream's time, else when the tile was made), ``Cache-Control``,
    ``X-Cache`` and a front's ``extra`` headers; 304 without a body when a conditional request
    matches."""
    entry = result.entry
    # Last-Modified has whole seconds: rounding up (as aiohttp's setter does) keeps
    # If-Modified-Since comparisons true to what the client was sent.
    modified = math.ceil(entry.upstream_time or entry.created)
    headers = {
        "Cache-Control": cache_control,
        "ETag": entry.etag,
        "Last-Modified": _http_date(modified),
        "X-Cache": result.cache_status,
    }
    if extra:
        headers.update(extra)
    if _not_modified(request, entry.etag, modified):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = entry.content_type
    return web.Response(body=entry.data, headers=headers)


@lru_cache(maxsize=4096)
def _http_date(timestamp: int) -> str:
    # The tiles of one metatile share their time; formatting it is a hit's costliest header.
    return formatdate(timestamp, usegmt=True)


async def serve_tile(
    request: web.Request,
    tile: TileRequest,
    *,
    by_accept: bool = False,
    extra: dict[str, str] | None = None,
) -> web.Response:
    """The answer for a resolved tile: from the request app's pipeline (``tile_response``,
    with the front's ``extra`` headers), its hits prepared in the app's ``READY`` for next
    time (``by_accept``: the answer depends on the request's ``Accept``).

    Raises ``UpstreamError`` (each front answers it in its own format).
    """
    pipeline = request.app[PIPELINE]
    _note_layer(request, tile.layer)
    result = await pipeline.get_tile(tile)
    layer = pipeline.layers[tile.layer]
    response = tile_response(request, result, layer.cache_control, extra)
    if pipeline.prepares:
        request.app[READY].remember(
            request,
            response,
            result,
            tile.layer,
            pipeline.key(tile),
            result.entry.created + layer.config.ttl,
            by_accept=by_accept,
            extra=extra,
        )
    return response


def _note_layer(request: web.Request, layer: str) -> None:
    """Name the tile's layer in the request's log lines and metrics (``logs.Exchange``)."""
    exchange: Exchange | None = request.get(EXCHANGES)
    if exchange is not None:
        exchange.layer = layer


class ReadyAnswers:
    """Ready answers to repeated tile hits, for every tile front: the tile key of each request
    target seen, and on the tile's in-process cache entry (``TilePipeline.prepare``) the
    finished headers of its answer (CORS included) and the end of the entry's freshness
    (epoch seconds).

    The root application's middleware asks ``answer`` before a front's own layers run: a hit
    of a target seen before is then a dict lookup, an L1 lookup and a ``web.Response`` of
    prebuilt headers, instead of the front's middleware, parsing, resolving and keying the
    tile again (bench/README.md, figure a). The target is the raw path and query, plus the
    ``Accept`` header where a front's answer depends on it. The headers live on the L1 entry,
    so whatever drops or replaces the entry (expiry, eviction, purges, a refresh) drops them
    too; past freshness, or for a conditional request, the request takes the full path.
    ``max_targets`` bounds the target table (oldest forgotten first). The pipeline is attached
    when the application starts (``attach``).
    """

    def __init__(self, cors: dict[str, str], max_targets: int = 100_000) -> None:
        self._cors = cors
        self._pipeline: TilePipeline | None = None
        self._targets: dict[str, tuple[str, Variant]] = {}
        # Raw paths whose answers depend on Accept: their targets carry it.
        self._by_accept: set[str] = set()
        self._max_targets = max_targets

    def attach(self, pipeline: TilePipeline) -> None:
        """Serve from ``pipeline``'s in-process cache from now on."""
        self._pipeline = pipeline

    def answer(self, request: web.Request) -> web.Response | None:
        """The 200 answer to ``request`` from a prepared entry, or ``None``."""
        path = request.raw_path
        if path in self._by_accept:
            path = f"{path}\n{request.headers.get('Accept', '')}"
        found = self._targets.get(path)
        if found is None or self._pipeline is None:
            return None
        headers = request.headers
        if "If-None-Match" in headers or "If-Modified-Since" in headers:
            return None
        key, variant = found
        prepared = self._pipeline.prepared(key)
        if prepared is None:
            return None
        entry, ready = prepared
        ready = cast(_Ready, ready)
        answer_headers = ready.variants.get(variant)
        if answer_headers is None or time.time() >= ready.fresh_until:
            return None
        _note_layer(request, ready.layer)
        return web.Response(body=entry.data, headers=answer_headers)

    def remember(
        self,
        request: web.Request,
        response: web.Response,
        result: TileResult,
        layer: str,
        key: str,
        fresh_until: float,
        *,
        by_accept: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Prepare the answers of later hits of the request's target from ``response`` (the
        200 answer of ``result``, a fresh tile of ``layer`` under ``key``, fresh until
        ``fresh_until``); ``extra`` are headers only this front adds. Nothing is kept unless
        ``result`` is a 200 non-stale answer whose entry is in L1 (not, e.g., an empty tile
        outside the data)."""
        pipeline = self._pipeline
        if pipeline is None or response.status != 200 or result.cache_status == "STALE":
            return
        prepared = pipeline.prepared(key)
        if prepared is None:
            ready = _Ready(layer, fresh_until)
            if not pipeline.prepare(key, result.entry, ready):
                return
        else:
            ready = cast(_Ready, prepared[1])
        variant: Variant = tuple(sorted(extra.items())) if extra else ()
        if variant not in ready.variants:
            # The response already carries the front's extra headers (tile_response adds them);
            # the root answers it without the front's middleware, which adds CORS.
            ready.variants[variant] = {**response.headers, **self._cors, "X-Cache": "HIT"}
        target = request.raw_path
        if by_accept:
            self._by_accept.add(target)
            target = f"{target}\n{request.headers.get('Accept', '')}"
        if self._targets.get(target) != (key, variant):
            if len(self._targets) >= self._max_targets:
                del self._targets[next(iter(self._targets))]
            self._targets[target] = (key, variant)


READY = web.AppKey("ready", ReadyAnswers)
"""The ready answers every tile front remembers into, on each application."""
