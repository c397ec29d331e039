"""One HTTP layer for every protocol front: what two fronts share lives here.

- ``fronts``: each front is an aiohttp sub-application (``front_app``) with its own
  middleware: CORS on every answer, preflights, and routing misses and unexpected errors
  rendered in the front's own error format (JSON, OWS ExceptionReport...); public URLs
  (``public_base``, and ``public_vary``: the headers it reads) and ``server.allowed_hosts``.
- ``documents``: content negotiation (``negotiate``, RFC 9110 section 12.5.1), a bounded
  document cache whose documents are gzip-compressed once for clients that accept it
  (``DocumentCache``, ``document_response``).
- ``tiles``: tile answers (``tile_response``, ``serve_tile``): ETag, Last-Modified,
  Cache-Control, ``X-Cache``, and conditional requests (``If-None-Match``, else
  ``If-Modified-Since``: RFC 9110 section 13.2.2); tiles are never compressed.
  ``ReadyAnswers`` answers repeated hits of a request target from headers prepared on the
  tile's in-process cache entry.
"""

from gateway.services.http.documents import (
    DOCUMENT_CACHE_CONTROL,
    Document,
    DocumentCache,
    accepts_gzip,
    document_response,
    encode_json,
    negotiate,
)
from gateway.services.http.fronts import (
    CONFIG,
    FRONT,
    GATE,
    NO_STORE,
    PIPELINE,
    READ_METHODS,
    RenderError,
    cors_headers,
    front_app,
    json_error,
    public_base,
    public_vary,
    render_json_error,
    root_app,
    upstream_error,
)
from gateway.services.http.tiles import READY, ReadyAnswers, serve_tile, tile_response

__all__ = [
    "CONFIG",
    "DOCUMENT_CACHE_CONTROL",
    "FRONT",
    "GATE",
    "NO_STORE",
    "PIPELINE",
    "READY",
    "READ_METHODS",
    "Document",
    "DocumentCache",
    "ReadyAnswers",
    "RenderError",
    "accepts_gzip",
    "cors_headers",
    "document_response",
    "encode_json",
    "front_app",
    "json_error",
    "negotiate",
    "public_base",
    "public_vary",
    "render_json_error",
    "root_app",
    "serve_tile",
    "tile_response",
    "upstream_error",
]
