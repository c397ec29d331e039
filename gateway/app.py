"""The application factory: ``create_app(config) -> aiohttp.web.Application``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.cache.store import TileCache
from gateway.config import GatewayConfig
from gateway.grids import GridRegistry
from gateway.purge import Purger
from gateway.services import admin, ogcapi, tilejson, viewer, wmts, xyz
from gateway.services.common import CONFIG, PIPELINE, PURGER, cors_middleware
from gateway.sources.imageserver import UpstreamError
from gateway.tiles import Layer, TilePipeline, build_layers, origin_of

log = logging.getLogger(__name__)

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
    grids = GridRegistry(config.tile_matrix_sets)
    layers = build_layers(config, sessions, grids)
    app[UPSTREAM_SESSIONS] = sessions
    app[PIPELINE] = TilePipeline(layers, cache, config.cache.prefix, grids, config.cache.lock_lease)
    await asyncio.gather(
        *(_load_service_info(layer, config.server.startup_timeout) for layer in layers.values())
    )
    purger = app[PURGER] = Purger(app[PIPELINE])
    await purger.start()
    watcher = asyncio.create_task(purger.watch(config.cache.purge_poll))
    try:
        yield
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await app[PIPELINE].close()
        await cache.close()
        for session in sessions.values():
            await session.close()


async def _load_service_info(layer: Layer, timeout: float) -> None:
    """The layer's data extent from its upstream; without it the gateway still starts, and
    serves every tile of the matrix (none is known to be empty)."""
    try:
        await asyncio.wait_for(layer.load_service_info(), timeout)
    except (UpstreamError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, UpstreamError) else f"no answer in {timeout:g} s"
        log.warning(
            "layer %s: data extent unknown, the upstream did not answer: %s", layer.name, reason
        )


def create_app(config: GatewayConfig) -> web.Application:
    """The gateway for ``config``; upstream sessions and the cache open when the app starts."""
    app = web.Application(middlewares=[cors_middleware(config.server.cors_allow_origin)])
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    for service in (xyz, tilejson, wmts, ogcapi, admin, viewer):
        app.add_routes(service.routes())
    return app
