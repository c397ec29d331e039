"""CORS for browser clients (esri-leaflet, the ArcGIS JS API) of the reference server.

ArcGIS Server allows every origin unless its ``allowedOrigins`` security setting lists some;
an allowed origin is echoed back in ``Access-Control-Allow-Origin`` (not ``*``: ArcGIS echoes
the ``Origin``, see WorldWindEarth/explorer issue #127) with ``Vary: Origin``. Requests
without ``Origin`` are not cross-origin and get no CORS headers; a disallowed origin gets none
either, so the browser refuses to share the answer. Preflights (``OPTIONS`` with
``Access-Control-Request-Method``) on any served path are answered 200 with the methods the
routes take (GET, POST) and the request headers asked for (``X-Esri-Authorization`` for one).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from imageserver.config import SecurityConfig

# Browsers cache a preflight at most this long (Chromium caps it at 2 h anyway).
_PREFLIGHT_MAX_AGE = 7200


def cors_middleware(config: SecurityConfig) -> Middleware:
    """A middleware adding CORS headers per ``config.allowed_origins`` and answering
    preflights."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        allowed = bool(origin) and config.origin_allowed(origin)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            routed = request.match_info.http_exception
            if routed is not None and not isinstance(routed, web.HTTPMethodNotAllowed):
                raise routed
            response = web.Response(status=200)
            if allowed:
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
                requested = request.headers.get("Access-Control-Request-Headers")
                if requested:
                    response.headers["Access-Control-Allow-Headers"] = requested
                response.headers["Access-Control-Max-Age"] = str(_PREFLIGHT_MAX_AGE)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                # Error pages must be readable too (a 404 on a wrong service name, say).
                if not allowed:
                    raise
                exc.headers["Access-Control-Allow-Origin"] = origin
                exc.headers["Vary"] = "Origin"
                raise
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return middleware
