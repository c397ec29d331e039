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
from gateway.proxy.relay import CredentialsLookup, Proxy
from gateway.proxy.routing import Refused
from gateway.services.http import (
    CONFIG,
    NO_STORE,
    PIPELINE,
    cors_headers,
    front_app,
    public_base,
    public_vary,
)
from gateway.sources.http import Credentials, NoCredentials, Sessions, UpstreamRequest

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


class _ConfiguredCredentials:
    """The provider of the configured credential set ``name`` for the upstream at ``url``:
    the tile pipeline's (``TilePipeline.credentials``), which exists once the application
    started; a ``Credentials`` (``gateway.sources.http``) that hands each call on to it."""

    def __init__(self, app: web.Application, name: str, url: str) -> None:
        self._app = app
        self._name = name
        # A trailing slash: the server root is what comes before "/rest/services/".
        self._url = url.rstrip("/") + "/"

    def _provider(self) -> Credentials:
        providers = self._app[PIPELINE].credentials
        assert providers is not None  # open_pipeline sets them before the app serves
        return providers.for_service(self._name, self._url)

    async def apply(self, request: UpstreamRequest) -> None:
        """Add the set's current token to ``request``."""
        await self._provider().apply(request)

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        """Renew the set's token after ``rejected`` was refused; whether to retry."""
        return await self._provider().refresh(rejected)


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

    A service naming ``credentials`` gets its tokens from the configured credential set of
    that name (``gateway.credentials``: the providers the tile layers use, so a layer and a
    proxied service of one ArcGIS Server share one token); ``credentials(name)``, when given,
    provides them instead. A service without ``credentials`` sends no token
    (``NoCredentials``). Raises ``LookupError`` naming a credential set that ``credentials``
    does not know.
    """
    proxy_config = config.proxy
    assert proxy_config is not None
    # aiohttp adds HEAD to a GET route.
    app = front_app(
        config,
        [web.route(method, "/{tail:.*}", _handle) for method in ("GET", "POST")],
        render_arcgis_error,
        METHODS,
        streams=True,
    )
    providers: dict[str, Credentials] = {}
    for service in proxy_config.services:
        name = service.credentials
        try:
            if name is None:
                providers[service.path] = NoCredentials()
            elif credentials is None:
                providers[service.path] = _ConfiguredCredentials(app, name, str(service.url))
            else:
                providers[service.path] = credentials(name)
        except LookupError:
            raise LookupError(
                f"proxy.services[path={service.path!r}]: no credential set {name!r}"
            ) from None
    server = config.server
    state = Sessions(server.upstream_connections, "tile-gateway/0.1")
    app[PROXY] = Proxy(proxy_config, providers, state, server.upstream_timeout)
    app.on_response_prepare.append(_cors_before_sending)
    app.cleanup_ctx.append(_resources)
    return app


async def _cors_before_sending(request: web.Request, response: web.StreamResponse) -> None:
    """The front's CORS headers, set as the headers are about to be sent: the middleware adds
    them only once the handler has returned, too late for a streamed answer (an image, the
    ``href`` of ``exportImage?f=json``), which a page on another origin could then not show."""
    response.headers.update(cors_headers(request.config_dict[CONFIG].server.cors_allow_origin))


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
