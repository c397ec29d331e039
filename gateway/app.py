"""The application factory: ``create_app(config) -> aiohttp.web.Application``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.purge import Purger
from gateway.resources import load_service_info, open_pipeline
from gateway.services import admin, ogcapi, tilejson, viewer, wmts, xyz
from gateway.services.common import CONFIG, PIPELINE, PURGER, cors_middleware


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The tile pipeline and the purge watcher, for the app's lifetime."""
    config = app[CONFIG]
    async with open_pipeline(config) as pipeline:
        app[PIPELINE] = pipeline
        if pipeline.cache.l1 is not None:
            app[xyz.HIT_ANSWERS] = xyz.HitAnswers(pipeline.cache.l1)
        await load_service_info(list(pipeline.layers.values()), config.server.startup_timeout)
        purger = app[PURGER] = Purger(pipeline)
        await purger.start()
        purger.start_watching(config.cache.purge_poll)
        try:
            yield
        finally:
            await purger.stop_watching()


def create_app(config: GatewayConfig) -> web.Application:
    """The gateway for ``config``; upstream sessions and the cache open when the app starts."""
    app = web.Application(middlewares=[cors_middleware(config.server.cors_allow_origin)])
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    for service in (xyz, tilejson, wmts, ogcapi, admin, viewer):
        app.add_routes(service.routes())
    return app
