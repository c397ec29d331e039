"""What every route shares: JSON errors, CORS, and the app keys services read."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config import GatewayConfig
from gateway.purge import Purger
from gateway.sources.imageserver import UpstreamError
from gateway.tiles import TilePipeline

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", GatewayConfig)
PIPELINE = web.AppKey("pipeline", TilePipeline)
PURGER = web.AppKey("purger", Purger)
# The admin API's bearer token, from the environment (never from the config file).
ADMIN_TOKEN_ENV = "TILE_GATEWAY_ADMIN_TOKEN"

NO_STORE = {"Cache-Control": "no-store"}


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


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """``{"error": {"code": status, "message": ..., **extra}}`` with ``Cache-Control: no-store``.

    The gateway's own error format for XYZ, TileJSON and admin routes (architecture.md).
    """
    return web.json_response(
        {"error": {"code": status, "message": message, **extra}}, status=status, headers=NO_STORE
    )


def upstream_error(layer: str, exc: UpstreamError) -> web.Response:
    """The JSON answer to a failed upstream: its status (502/504), the layer, and the
    upstream's own code and message, never its URL or a token."""
    return json_error(
        exc.status,
        f"the upstream of layer {layer!r} failed: {exc.message}",
        layer=layer,
        upstream={"code": exc.code, "message": exc.message},
    )


def cors_middleware(allow_origin: str) -> web.middleware:
    """Middleware: CORS headers on every answer (errors too), preflights, and JSON errors.

    Routing misses (404/405) and unexpected exceptions become JSON errors; the latter are logged
    with their traceback and answered 500 without details.
    """
    cors = {
        "Access-Control-Allow-Origin": allow_origin,
        "Access-Control-Expose-Headers": "ETag, X-Cache, Content-Length",
    }

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
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
                response = json_error(exc.status, exc.reason)
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.path)
                response = json_error(500, "internal error")
        response.headers.update(cors)
        return response

    return middleware
