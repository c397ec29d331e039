"""The application factory: ``create_app(config) -> aiohttp.web.Application``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.cache.store import TileCache
from gateway.config import GatewayConfig
from gateway.services import admin, viewer, xyz
from gateway.services.common import CONFIG, PIPELINE, cors_middleware
from gateway.tiles import TilePipeline, build_layers, origin_of

UPSTREAM_SESSIONS = web.AppKey("upstream_sessions", dict[str, aiohttp.ClientSession])


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """One keep-alive session per upstream origin and the tile cache, for the app's lifetime."""
    config = app[CONFIG]
    origins = {origin_of(layer.service_url) for layer in config.layers.values()}
    sessions = {
        origin: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, limit_per_host=100),
            headers={"User-Agent": "tile-gateway/0.1"},
        )
        for origin in origins
    }
    cache = TileCache(config.cache)
    app[UPSTREAM_SESSIONS] = sessions
    app[PIPELINE] = TilePipeline(build_layers(config, sessions), cache, config.cache.prefix)
    try:
        yield
    finally:
        await cache.close()
        for session in sessions.values():
            await session.close()


def create_app(config: GatewayConfig) -> web.Application:
    """The gateway for ``config``; upstream sessions and the cache open when the app starts."""
    app = web.Application(middlewares=[cors_middleware(config.server.cors_allow_origin)])
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    app.add_routes(xyz.routes() + admin.routes() + viewer.routes())
    return app
