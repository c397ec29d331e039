"""The ArcGIS REST reverse proxy: ``/arcgis/rest/services/...`` (``proxy.prefix``) forwarded to
the configured upstreams only, with the gateway's credentials, answers scrubbed and cacheable
reads cached (README, "Reverse proxy").

``proxy_app(config, credentials)`` is the front, a sub-application mounted at the prefix like
the other fronts (``services.http.front_app``), answering errors in ArcGIS error JSON
(arcgis-rest.md section 3) with the HTTP status as the ``code``. ``routing`` holds the
allow-list, ``relay`` the forwarding, ``scrub`` the rewriting of answers and ``reads`` the
cache keys of cacheable reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.proxy.relay import CredentialsLookup, Proxy, ProxyState
from gateway.proxy.routing import Refused
from gateway.services.http import CONFIG, NO_STORE, PIPELINE, front_app, public_base, public_vary
from gateway.sources.http import Credentials, NoCredentials

PROXY = web.AppKey("proxy", Proxy)
# GET and HEAD for reads, POST for forms (esri-leaflet and arcgis-rest-js POST long requests).
METHODS = "GET, HEAD, POST, OPTIONS"


def arcgis_error(status: int, message: str) -> web.Response:
    """``{"error": {"code": status, "message": message, "details": []}}`` under HTTP ``status``
    (arcgis-rest.md section 3), not to be stored by caches."""
    return web.json_response(
        {"error": {"code": status, "message": message, "details": []}},
        status=status,
        headers=NO_STORE,
    )


def render_arcgis_error(request: web.Request, status: int, message: str) -> web.Response:
    """``arcgis_error`` as a front's ``RenderError``."""
    return arcgis_error(status, message)


def _no_credential_sets(name: str) -> Credentials:
    raise LookupError(name)


async def _handle(request: web.Request) -> web.StreamResponse:
    try:
        response = await request.app[PROXY].handle(request, public_base(request))
    except Refused as exc:
        return arcgis_error(exc.status, exc.message)
    vary = public_vary(request)
    if vary and not response.prepared:
        response.headers["Vary"] = ", ".join(vary)
    return response


def proxy_app(
    config: GatewayConfig, credentials: CredentialsLookup | None = None
) -> web.Application:
    """The proxy front of ``config`` (which has a ``proxy`` section).

    ``credentials(name)`` is the provider of the credential set ``name``; a service without
    ``credentials`` sends no token (``NoCredentials``). Raises ``LookupError`` naming a
    credential set that ``credentials`` does not know.
    """
    proxy_config = config.proxy
    assert proxy_config is not None
    lookup = credentials or _no_credential_sets
    providers: dict[str, Credentials] = {}
    for service in proxy_config.services:
        name = service.credentials
        try:
            providers[service.path] = NoCredentials() if name is None else lookup(name)
        except LookupError:
            raise LookupError(
                f"proxy.services[path={service.path!r}]: no credential set {name!r}"
            ) from None
    server = config.server
    state = ProxyState(agent="tile-gateway/0.1", connections=server.upstream_connections)
    # aiohttp adds HEAD to a GET route.
    app = front_app(
        config,
        [web.route(method, "/{tail:.*}", _handle) for method in ("GET", "POST")],
        render_arcgis_error,
        METHODS,
    )
    app[PROXY] = Proxy(proxy_config, providers, state, server.upstream_timeout)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The tile cache (set on the front by the root app's start-up) for cacheable reads, and
    the upstream sessions closed at the end."""
    proxy = app[PROXY]
    pipeline = app.get(PIPELINE)
    if pipeline is not None:
        proxy.attach_cache(pipeline.cache, pipeline.keys, app[CONFIG].cache.lock_lease)
    try:
        yield
    finally:
        await proxy.detach_cache()
        await proxy.state.close()
