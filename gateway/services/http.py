"""One HTTP layer for every protocol front: what two fronts share lives here.

- Each front is an aiohttp sub-application (``front_app``) with its own middleware: CORS on
  every answer, preflights, and routing misses and unexpected errors rendered in the front's
  own error format (JSON, OWS ExceptionReport...).
- Public URLs (``public_base``), content negotiation (``negotiate``, RFC 9110 section 12.5.1),
  a bounded document cache whose documents are gzip-compressed once for clients that accept
  it (``DocumentCache``, ``document_response``).
- Tile answers (``tile_response``): ETag, Last-Modified, Cache-Control, ``X-Cache``, and
  conditional requests (``If-None-Match``, else ``If-Modified-Since``: RFC 9110 section
  13.2.2); tiles are never compressed. ``ReadyAnswers`` answers repeated hits of a request
  target from headers prepared on the tile's in-process cache entry.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, cast

from aiohttp import web
from aiohttp.typedefs import Handler
from cachetools import LRUCache

from gateway.config import GatewayConfig
from gateway.errors import UpstreamError
from gateway.tiles import TilePipeline, TileRequest, TileResult

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", GatewayConfig)
PIPELINE = web.AppKey("pipeline", TilePipeline)
NO_STORE = {"Cache-Control": "no-store"}
# Methods every front answers, and so lists in its preflights.
READ_METHODS = "GET, HEAD, OPTIONS"
# Documents change only with the configuration: a short freshness lets a redeployment show.
DOCUMENT_CACHE_CONTROL = "public, max-age=60"
# Smaller documents gain too little from gzip to pay for its header and the CPU.
_GZIP_MIN_BYTES = 256

RenderError = Callable[[web.Request, int, str], web.Response]
"""A front's error format: ``(request, status, message) -> response``."""


def public_base(request: web.Request) -> str:
    """The gateway's public base URL, without a trailing slash, for absolute URLs in documents.

    ``server.public_url`` when configured; else, with ``server.trust_proxy``, the
    ``X-Forwarded-Proto``/``X-Forwarded-Host``/``X-Forwarded-Prefix`` headers (first value of
    each); else the request's own scheme and Host.
    """
    server = request.app[CONFIG].server
    if server.public_url is not None:
        return str(server.public_url).rstrip("/")
    scheme, host, prefix = request.scheme, request.host, ""
    if server.trust_proxy:
        headers = request.headers
        scheme = headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
        prefix = headers.get("X-Forwarded-Prefix", "").split(",")[0].strip().rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
    return f"{scheme}://{host}{prefix}"


def varies_with_proxy(request: web.Request) -> bool:
    """Whether absolute URLs in a document depend on ``X-Forwarded-*`` request headers."""
    server = request.app[CONFIG].server
    return server.trust_proxy and server.public_url is None


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """``{"error": {"code": status, "message": ..., **extra}}`` with ``Cache-Control: no-store``.

    The gateway's own error format for ``/tiles``, ``/ogcapi`` and the admin routes
    (architecture.md, "Errors, each in its client's own language").
    """
    return web.json_response(
        {"error": {"code": status, "message": message, **extra}}, status=status, headers=NO_STORE
    )


def render_json_error(request: web.Request, status: int, message: str) -> web.Response:
    """``json_error`` as a front's ``RenderError``."""
    return json_error(status, message)


def upstream_error(layer: str, exc: UpstreamError) -> web.Response:
    """The JSON answer to a failed upstream: its status (502/504), the layer, and the
    upstream's own code and message, never its URL or a token."""
    return json_error(
        exc.status,
        f"the upstream of layer {layer!r} failed: {exc.message}",
        layer=layer,
        upstream={"code": exc.code, "message": exc.message},
    )


def _cors_middleware(
    allow_origin: str, methods: str, render: RenderError, *, root: bool = False
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Middleware: CORS headers on every answer (errors too), preflights for ``methods``, and
    HTTP errors (routing misses among them) and unexpected exceptions rendered with ``render``;
    the latter are logged with their traceback and answered 500 without details. With
    ``root``, requests a sub-application serves pass through untouched: it has its own."""
    cors = {
        "Access-Control-Allow-Origin": allow_origin,
        "Access-Control-Expose-Headers": "ETag, X-Cache, Content-Length",
    }

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if root and len(request.match_info.apps) > 1:
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": methods,
                    "Access-Control-Allow-Headers": request.headers.get(
                        "Access-Control-Request-Headers", ""
                    ),
                    "Access-Control-Max-Age": "86400",
                },
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    exc.headers.update(cors)
                    raise
                response = render(request, exc.status, exc.reason)
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.path)
                response = render(request, 500, "internal error")
        response.headers.update(cors)
        return response

    return middleware


def front_app(
    config: GatewayConfig,
    routes: Iterable[web.RouteDef],
    render: RenderError,
    methods: str = READ_METHODS,
) -> web.Application:
    """A protocol front as a sub-application: ``routes`` (relative to the prefix it is mounted
    at; ``""`` is the prefix itself), errors in the format of ``render``, preflights allowing
    ``methods``."""
    app = web.Application(
        middlewares=[_cors_middleware(config.server.cors_allow_origin, methods, render)]
    )
    app[CONFIG] = config
    app.add_routes(routes)
    return app


def root_app(config: GatewayConfig, routes: Iterable[web.RouteDef]) -> web.Application:
    """The application the fronts are mounted on: its own ``routes`` and every path no front
    takes answer with JSON errors; requests a front takes are left to it."""
    app = web.Application(
        middlewares=[
            _cors_middleware(
                config.server.cors_allow_origin, READ_METHODS, render_json_error, root=True
            )
        ]
    )
    app[CONFIG] = config
    app.add_routes(routes)
    return app


# -- content negotiation and documents ------------------------------------------------------


@lru_cache(maxsize=256)
def negotiate(accept: str, offered: tuple[str, ...]) -> str | None:
    """The media type of ``offered`` that ``accept`` (an HTTP ``Accept`` value) rates highest.

    Each offered type takes the quality of the most specific range matching it
    (``type/subtype`` > ``type/*`` > ``*/*``, RFC 9110 section 12.5.1); ties go to the earlier
    offer. ``None`` when every offered type has quality 0. Cached: clients repeat one header.
    """
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media_range, *parameters = part.split(";")
        ranges.append((media_range.strip().lower(), _quality(parameters)))
    best, best_quality = None, 0.0
    for media_type in offered:
        wildcard = media_type.split("/")[0] + "/*"
        specificity, quality = -1, 0.0
        for media_range, weight in ranges:
            rank = {media_type: 2, wildcard: 1, "*/*": 0}.get(media_range, -1)
            if rank > specificity:
                specificity, quality = rank, weight
        if quality > best_quality:
            best, best_quality = media_type, quality
    return best


def _quality(parameters: Iterable[str]) -> float:
    """The ``q`` weight among a media range's (or coding's) parameters; 1 when absent and when
    malformed (as if the client had sent none)."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 1.0
    return 1.0


@lru_cache(maxsize=64)
def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (RFC 9110 section 12.5.3): ``gzip``
    (or ``x-gzip``, or ``*``) with a weight above 0."""
    weights: dict[str, float] = {}
    for part in accept_encoding.split(","):
        coding, *parameters = part.split(";")
        weights[coding.strip().lower()] = _quality(parameters)
    for coding in ("gzip", "x-gzip"):
        if coding in weights:
            return weights[coding] > 0
    return weights.get("*", 0) > 0


def encode_json(document: Any) -> bytes:
    """``document`` as compact UTF-8 JSON."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Document:
    """An encoded document: ``body`` as is and, when worth it, ``gzipped`` (else ``None``)."""

    body: bytes
    gzipped: bytes | None

    @classmethod
    def of(cls, body: bytes) -> Document:
        """``body`` and, for documents of 256 bytes and more, its gzip encoding (made once)."""
        if len(body) < _GZIP_MIN_BYTES:
            return cls(body, None)
        return cls(body, gzip.compress(body, compresslevel=6, mtime=0))


class DocumentCache:
    """Encoded documents by key, the least recently used dropped beyond ``size`` entries.

    Keys start with the public base URL, which a client chooses through ``Host`` (or the
    ``X-Forwarded-*`` headers with ``trust_proxy``): the bound keeps a client that cycles
    through host names from growing the process's memory.
    """

    def __init__(self, size: int = 256) -> None:
        self._entries: LRUCache[Hashable, Document] = LRUCache(maxsize=size)

    def get(self, key: Hashable, build: Callable[[], bytes]) -> Document:
        """The document under ``key``, built with ``build()`` on the first request for it."""
        document = self._entries.get(key)
        if document is None:
            document = self._entries[key] = Document.of(build())
        return document

    def __len__(self) -> int:
        return len(self._entries)


def document_response(
    request: web.Request,
    document: Document,
    content_type: str,
    cache_control: str = DOCUMENT_CACHE_CONTROL,
    vary: tuple[str, ...] = (),
) -> web.Response:
    """A 200 answer with ``document``: gzip-compressed when the client accepts it (and the
    document has a compressed form; ``Vary: Accept-Encoding`` then), with ``cache_control``
    and ``Vary`` naming the request headers in ``vary`` the document depends on."""
    headers = {"Cache-Control": cache_control}
    body = document.body
    if document.gzipped is not None:
        vary = (*vary, "Accept-Encoding")
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = document.gzipped
            headers["Content-Encoding"] = "gzip"
    if vary:
        headers["Vary"] = ", ".join(vary)
    return web.Response(body=body, content_type=content_type, headers=headers)


# -- tiles --------------------------------------------------------------------------------------


class _Ready(NamedTuple):
    headers: dict[str, str]
    fresh_until: float  # epoch seconds


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


def tile_response(request: web.Request, result: TileResult, cache_control: str) -> web.Response:
    """The HTTP answer for a tile: 200 with the bytes and ``Content-Type``, ``ETag``,
    ``Last-Modified`` (the upstream's time, else when the tile was made), ``Cache-Control``
    and ``X-Cache``; 304 without a body when a conditional request matches."""
    entry = result.entry
    response = web.Response(
        body=entry.data,
        headers={"Content-Type": entry.content_type, "Cache-Control": cache_control},
    )
    # Last-Modified has whole seconds: rounding up keeps If-Modified-Since comparisons true to
    # what the client was sent.
    modified = math.ceil(entry.upstream_time or entry.created)
    response.etag = entry.etag.strip('"')
    response.last_modified = modified
    response.headers["X-Cache"] = result.cache_status
    if _not_modified(request, entry.etag, modified):
        headers = {k: v for k, v in response.headers.items() if k != "Content-Type"}
        return web.Response(status=304, headers=headers)
    return response


async def serve_tile(
    request: web.Request,
    tile: TileRequest,
    ready: ReadyAnswers,
    *,
    by_accept: bool = False,
    extra: dict[str, str] | None = None,
) -> web.Response:
    """The answer for a resolved tile: from the request app's pipeline (``tile_response``,
    with the front's ``extra`` headers), its hits prepared in ``ready`` for next time.

    Raises ``UpstreamError`` (each front answers it in its own format).
    """
    pipeline = request.app[PIPELINE]
    result = await pipeline.get_tile(tile)
    layer = pipeline.layers[tile.layer]
    response = tile_response(request, result, layer.cache_control)
    if extra:
        response.headers.update(extra)
    ready.remember(
        request,
        response,
        result,
        pipeline.key(tile),
        result.entry.created + layer.config.ttl,
        by_accept=by_accept,
        extra=extra,
    )
    return response


class ReadyAnswers:
    """Ready answers to repeated tile hits: the tile key of each request target seen, and on
    the tile's in-process cache entry (``TilePipeline.prepare``) the answer's headers and the
    end of the entry's freshness (epoch seconds).

    A hit of a target seen before is then a dict lookup, an L1 lookup and a ``web.Response`` of
    prebuilt headers, instead of parsing, resolving and keying the tile again: a front's own
    work is most of a hit's cost (bench/README.md, figure a). The target is the raw path and
    query, plus the ``Accept`` header for a front whose answer depends on it. The headers live
    on the L1 entry, so whatever drops or replaces the entry (expiry, eviction, purges, a
    refresh) drops them too; past freshness, or for a conditional request, the request takes
    the full path. ``max_targets`` bounds the target table (oldest forgotten first).
    """

    def __init__(self, pipeline: TilePipeline, max_targets: int = 100_000) -> None:
        self._pipeline = pipeline
        self._targets: dict[str, tuple[str, dict[str, str] | None]] = {}
        self._max_targets = max_targets

    @staticmethod
    def _target(request: web.Request, by_accept: bool) -> str:
        if by_accept:
            return f"{request.raw_path}\n{request.headers.get('Accept', '')}"
        return request.raw_path

    def answer(self, request: web.Request, by_accept: bool = False) -> web.Response | None:
        """The 200 answer to ``request`` from a prepared entry, or ``None``."""
        found = self._targets.get(self._target(request, by_accept))
        if found is None:
            return None
        headers = request.headers
        if "If-None-Match" in headers or "If-Modified-Since" in headers:
            return None
        key, extra = found
        prepared = self._pipeline.prepared(key)
        if prepared is None:
            return None
        entry, ready = prepared
        ready = cast(_Ready, ready)
        if time.time() >= ready.fresh_until:
            return None
        response = web.Response(body=entry.data, headers=ready.headers)
        if extra:
            response.headers.update(extra)
        return response

    def remember(
        self,
        request: web.Request,
        response: web.Response,
        result: TileResult,
        key: str,
        fresh_until: float,
        *,
        by_accept: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Prepare the answers of later hits of the request's target from ``response`` (the
        200 answer of ``result``, a fresh tile under ``key``, fresh until ``fresh_until``);
        ``extra`` are headers only this front adds. Nothing is kept unless ``result`` is a
        200 non-stale answer whose entry is in L1 (not, e.g., an empty tile outside the data)."""
        if response.status != 200 or result.cache_status == "STALE":
            return
        headers = {k: v for k, v in response.headers.items() if k not in (extra or {})}
        headers["X-Cache"] = "HIT"
        ready = _Ready(headers, fresh_until)
        prepared = self._pipeline.prepared(key)
        if prepared is None and not self._pipeline.prepare(key, result.entry, ready):
            return
        target = self._target(request, by_accept)
        if self._targets.get(target) != (key, extra):
            if len(self._targets) >= self._max_targets:
                del self._targets[next(iter(self._targets))]
            self._targets[target] = (key, extra)
