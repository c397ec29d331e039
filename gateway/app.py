"""The application factory: ``create_app(config) -> aiohttp.web.Application``.

Each protocol front is a sub-application with its own error format and CORS methods
(``services.http.front_app``), mounted on a root application that serves the viewer and the
health probes:

    /tiles    XYZ tiles and TileJSON            JSON errors
    /wmts     WMTS 1.0.0, KVP and RESTful       OWS ExceptionReports
    /ogcapi   OGC API - Tiles                   JSON errors
    /admin    purge                             JSON errors
    /arcgis/rest/services (``proxy.prefix``, when a ``proxy`` section is configured)
              the ArcGIS REST reverse proxy         ArcGIS error JSON
    <proxy prefix>/<jobs.path> (when a ``jobs`` section is configured: the GP service)
              the GP jobs relay, before the proxy   ArcGIS error JSON
    /         viewer, /layers.json, /healthz, /readyz, /metrics (Prometheus), and every other
              path: JSON errors

Inbound access control (``gateway.access``) is per route group; the root is always open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway import metrics
from gateway.access import Access
from gateway.config import GatewayConfig
from gateway.jobs import RELAY, jobs_app, mount_path
from gateway.proxy import proxy_app
from gateway.published import Publisher
from gateway.purge import Purger
from gateway.services import admin, ogcapi, tilejson, viewer, wmts, xyz
from gateway.services.http import (
    CONFIG,
    FRONT,
    GATE,
    PIPELINE,
    READY,
    ReadyAnswers,
    cors_headers,
    front_app,
    render_json_error,
    root_app,
)
from gateway.sources.http import Credentials
from gateway.tiles import load_service_info, open_pipeline

FRONTS = web.AppKey("fronts", dict)
"""The fronts by the prefix they are mounted at."""
ACCESS = web.AppKey("access", Access)
# The route group (``access.groups``) of each front but the reverse proxy's.
_GROUPS = {"/tiles": "tiles", "/wmts": "tiles", "/ogcapi": "tiles", "/admin": "admin"}


def create_app(
    config: GatewayConfig, credentials: Callable[[str], Credentials] | None = None
) -> web.Application:
    """The gateway for ``config``; upstream sessions and the cache open when the app starts.

    The reverse proxy's services that name a credential set get their tokens from the
    configured providers (``gateway.credentials``), shared with the tile layers;
    ``credentials(name)``, when given, provides them instead (raises ``LookupError`` for an
    unknown name).

    Each front's route group (``tiles``: /tiles, /wmts, /ogcapi; ``proxy``, which the jobs
    front belongs to too; ``admin``) is
    checked by its ``gateway.access`` gate when ``access.groups`` configures it. With
    ``server.tracing.enabled`` every request is traced (``gateway.tracing``). Raises
    ``ValueError`` for an ``access.api_keys_file`` that cannot be read or parsed.
    """
    fronts = {
        "/tiles": front_app(config, [*xyz.routes(), *tilejson.routes()], render_json_error),
        "/wmts": front_app(config, wmts.routes(), wmts.render_error),
        "/ogcapi": front_app(config, ogcapi.routes(), render_json_error),
        "/admin": front_app(config, admin.routes(), render_json_error),
    }
    # The jobs front first: its paths are under the proxy's prefix, and answered by it alone.
    jobs_prefix = mount_path(config) if config.jobs is not None else None
    if jobs_prefix is not None:
        fronts[jobs_prefix] = jobs_app(config, credentials)
    if config.proxy is not None:
        fronts[config.proxy.prefix] = proxy_app(config, credentials)
    access = Access(config)
    ready = ReadyAnswers(cors_headers(config.server.cors_allow_origin))
    routes = [*viewer.routes(), *admin.health_routes(), web.get("/metrics", metrics.handle)]
    if config.server.tracing.enabled:
        # Imported only when on: the gateway runs without the otel extra, and no request pays
        # for tracing while it is off.
        from gateway import tracing

        with tracing.traced(config):
            app = root_app(config, routes, ready.answer)
        app.cleanup_ctx.append(tracing.flushed)
    else:
        app = root_app(config, routes, ready.answer)
    for prefix, front in fronts.items():
        front[READY] = ready
        # The front's name in metric labels.
        front[FRONT] = (
            prefix.strip("/")
            if prefix in _GROUPS
            else ("jobs" if prefix == jobs_prefix else "proxy")
        )
        gate = access.gate(_GROUPS.get(prefix, "proxy"))
        if gate is not None:
            front[GATE] = gate
        app.add_subapp(prefix, front)
    app[READY] = ready
    app[FRONTS] = fronts
    app[ACCESS] = access
    app.cleanup_ctx.append(_access)
    app.cleanup_ctx.append(_resources)
    return app


async def _access(app: web.Application) -> AsyncIterator[None]:
    """The access checks' JWKS session and rate-limit storage, for the app's lifetime."""
    access = app[ACCESS]
    await access.start()
    try:
        yield
    finally:
        await access.close()


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The tile pipeline, the purge watcher and the published layers, for the app's lifetime,
    handed to every front."""
    config = app[CONFIG]
    async with open_pipeline(config) as pipeline:
        await load_service_info(list(pipeline.layers.values()), config.server.startup_timeout)
        purger = Purger(pipeline)
        fronts = app[FRONTS]
        for front in (app, *fronts.values()):
            front[PIPELINE] = pipeline
        app[READY].attach(pipeline)
        fronts["/admin"][admin.PURGER] = purger
        publisher = Publisher(pipeline, config)
        fronts["/admin"][admin.PUBLISHER] = publisher
        if config.jobs is not None:
            relay = fronts[mount_path(config)][RELAY]
            publisher.relay = relay
            relay.on_succeeded = publisher.publish_job
        await purger.start()
        purger.start_watching(config.cache.purge_poll)
        # Published layers are served from the start, and followed like purges.
        await publisher.start(config.cache.purge_poll)
        try:
            yield
        finally:
            # The purge watcher first: it may be inside a sync that must see its cancel.
            await purger.stop_watching()
            await publisher.stop()
