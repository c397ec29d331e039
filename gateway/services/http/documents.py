"""Documents (capabilities, TileJSON, OGC API JSON): content negotiation, a bounded cache of
encoded documents, and answers gzip-compressed once for clients that accept it."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aiohttp import web
from cachetools import LRUCache

from gateway.services.http.fronts import public_base, public_vary

# Documents change only with the configuration: a short freshness lets a redeployment show.
DOCUMENT_CACHE_CONTROL = "public, max-age=60"
# Smaller documents gain too little from gzip to pay for its header and the CPU.
_GZIP_MIN_BYTES = 256


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


JSON_TYPE = "application/json"


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

    def json_answer(
        self,
        request: web.Request,
        key: tuple[Hashable, ...],
        build: Callable[[str], Any],
        *,
        absolute: bool = True,
    ) -> web.Response:
        """The 200 answer to ``request`` of a JSON document (``document_response``):
        ``build(public base)`` encoded once per base and ``key``. With ``absolute`` false the
        document holds no URL of the gateway (``build`` gets ``""``), so it is one document
        whatever the request's host; else it varies with the headers the base comes from
        (``fronts.public_vary``). Raises ``fronts.BadRequestHeader`` for a base that is no
        URL's."""
        if not absolute:
            document = self.get(key, lambda: encode_json(build("")))
            return document_response(request, document, JSON_TYPE)
        base = public_base(request)
        document = self.get((base, *key), lambda: encode_json(build(base)))
        return document_response(request, document, JSON_TYPE, vary=public_vary(request))

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
