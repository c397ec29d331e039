"""Fronts as aiohttp sub-applications: the app keys they read, public URLs, their error
formats (routing misses and unexpected errors included) and CORS on every answer."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from cachetools import LRUCache

from gateway import metrics
from gateway.access import EXPOSED_HEADERS, Gate
from gateway.config import GatewayConfig, ServerConfig
from gateway.errors import UpstreamBusy, UpstreamError
from gateway.logs import EXCHANGE, EXCHANGES, Exchange, printable, request_id
from gateway.tiles import TilePipeline

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", GatewayConfig)
PIPELINE = web.AppKey("pipeline", TilePipeline)
GATE = web.AppKey("gate", Gate)
"""A front's access check (``gateway.access``), when its route group is configured."""
FRONT = web.AppKey("front", str)
"""A front's name in metrics: tiles, wmts, ogcapi, admin, proxy (the root has none: root)."""
NO_STORE = {"Cache-Control": "no-store"}
# Methods every front answers, and so lists in its preflights.
READ_METHODS = "GET, HEAD, OPTIONS"
_READS = frozenset(("GET", "HEAD"))
# Kubernetes probes name the pod's address as Host: they are answered whatever the host.
_PROBES = frozenset(("/healthz", "/readyz"))
_HOST_REFUSED = "the Host header names a host this gateway does not serve (server.allowed_hosts)"
RenderError = Callable[[web.Request, int, str], web.Response]
"""A front's error format: ``(request, status, message) -> response``."""

# What a public base URL is made of, checked before it is written into a document: a host
# (RFC 3986 section 3.2.2: reg-name, IPv4, or a bracketed IP literal) with an optional port
# (section 3.2.3), an http(s) scheme, and a path prefix of segments (section 3.3).
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)(?::[0-9]*)?"
)
_SCHEME = re.compile(r"https?", re.IGNORECASE)
_PREFIX = re.compile(r"(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})*)*")


class BadRequestHeader(Exception):
    """A request header the answer depends on has a value that cannot be used; every front
    answers 400 in its own format (RFC 9112 section 3.2: a Host with an invalid value is a
    400)."""


def _named_host(request: web.Request, server: ServerConfig, host: str) -> str:
    """The host (``name[:port]``) a client asked for: with ``trust_proxy`` the first
    ``X-Forwarded-Host`` value, else (or without one) ``host``, the request's own."""
    if server.trust_proxy:
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
    return host


def public_base(request: web.Request) -> str:
    """The gateway's public base URL, without a trailing slash, for absolute URLs in documents.

    ``server.public_url`` when configured; else, with ``server.trust_proxy``, the
    ``X-Forwarded-Proto``/``X-Forwarded-Host``/``X-Forwarded-Prefix`` headers (first value of
    each); else the request's own scheme and Host.

    Raises ``BadRequestHeader`` when what would be used is not a URL's part: a Host (or
    X-Forwarded-Host) that is not ``host[:port]`` (RFC 3986 section 3.2: no spaces, no bytes
    outside ASCII, no ``/``), an X-Forwarded-Proto other than http/https, an
    X-Forwarded-Prefix that is not a path.
    """
    server = request.app[CONFIG].server
    if server.public_url is not None:
        return str(server.public_url).rstrip("/")
    scheme, host, prefix = request.scheme, _named_host(request, server, request.host), ""
    if server.trust_proxy:
        headers = request.headers
        scheme = headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        prefix = headers.get("X-Forwarded-Prefix", "").split(",")[0].strip().rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        if not _SCHEME.fullmatch(scheme):
            raise BadRequestHeader("X-Forwarded-Proto must be http or https")
        if not _PREFIX.fullmatch(prefix):
            raise BadRequestHeader("X-Forwarded-Prefix must be a URL path")
    if not _HOST.fullmatch(host):
        raise BadRequestHeader("the Host (or X-Forwarded-Host) header must be host[:port]")
    return f"{scheme}://{host}{prefix}"


def public_vary(request: web.Request) -> tuple[str, ...]:
    """The request headers ``public_base`` reads, for the ``Vary`` of a document holding
    absolute URLs (RFC 9110 section 12.5.5): none with ``server.public_url``, else ``Host``,
    and with ``trust_proxy`` the ``X-Forwarded-*`` headers too. Without it a shared cache would
    hand one client's URLs (whatever ``Host`` it sent) to every other."""
    server = request.app[CONFIG].server
    if server.public_url is not None:
        return ()
    if server.trust_proxy:
        return ("Host", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Prefix")
    return ("Host",)


class HostCheck:
    """Whether a request names a host of ``server.allowed_hosts`` (see ``ServerConfig``).

    A pattern without a port admits the host on any port; with one, on that port only.
    ``*.example.org`` admits every name ending in ``.example.org`` (not ``example.org``
    itself). Names compare case-insensitively, a trailing dot ignored (RFC 9110 section
    4.2.3; RFC 1034 section 3.1). Results are kept per ``Host`` value, in a bounded LRU: a
    client cycling through names cannot grow it.
    """

    def __init__(self, server: ServerConfig) -> None:
        self._server = server
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        self._with_port: set[tuple[str, str]] = set()
        for pattern in server.allowed_hosts or ():
            name, port = _split_host(pattern)
            if port:
                self._with_port.add((name, port))
            elif name.startswith("*."):
                self._suffixes.append(name[1:])
            else:
                self._names.add(name)
        self._seen: LRUCache[str, bool] = LRUCache(maxsize=1024)

    def __call__(self, request: web.Request) -> bool:
        """Whether the host ``request`` names (``X-Forwarded-Host`` with ``trust_proxy``) is
        allowed."""
        # The header itself: without one, aiohttp's request.host would look up this machine's
        # name (socket.getfqdn), a blocking call a client could ask for on every request.
        host = _named_host(request, self._server, request.headers.get("Host", ""))
        allowed = self._seen.get(host)
        if allowed is None:
            allowed = self._seen[host] = self._allows(host)
        return allowed

    def _allows(self, host: str) -> bool:
        name, port = _split_host(host.lower())
        name = name.removesuffix(".")
        if name in self._names or (name, port) in self._with_port:
            return True
        return any(name.endswith(suffix) for suffix in self._suffixes)


def _split_host(host: str) -> tuple[str, str]:
    """``(name, port)`` of ``name[:port]`` or ``[ipv6][:port]``; the port ``""`` when absent."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest.removeprefix(":")
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return name, port
    return host, ""


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """``{"error": {"code": status, "message": ..., **extra}}`` with ``Cache-Control: no-store``.

    The gateway's own error format for ``/tiles``, ``/ogcapi`` and the admin routes
    (architecture.md, "Errors, each in its client's own language").
    """
    return web.json_response(
        {"error": {"code": status, "message": message, **extra}}, status=status, headers=NO_STORE
    )


def render_json_error(request: web.Request, status: int, message: str) -> web.Response:
    """``json_error`` as a front's ``RenderError``."""
    return json_error(status, message)


def upstream_error(layer: str, exc: UpstreamError) -> web.Response:
    """The JSON answer to a failed upstream: its status (502/504), the layer, and the
    upstream's own code and message, never its URL or a token.

    A busy upstream (``UpstreamBusy``) is a 503 with ``Retry-After`` in seconds (RFC 9110
    sections 15.6.4 and 10.2.3)."""
    busy = isinstance(exc, UpstreamBusy)
    response = json_error(
        exc.status,
        f"the upstream of layer {layer!r} {'is busy' if busy else 'failed'}: {exc.message}",
        layer=layer,
        upstream={"code": exc.code, "message": exc.message},
    )
    if busy:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def cors_headers(allow_origin: str) -> dict[str, str]:
    """The CORS headers of every answer: ``Access-Control-Allow-Origin`` and the headers
    scripts may read."""
    return {
        "Access-Control-Allow-Origin": allow_origin,
        "Access-Control-Expose-Headers": EXPOSED_HEADERS,
    }


def _cors_middleware(
    server: ServerConfig,
    methods: str,
    render: RenderError,
    *,
    root: Callable[[web.Request], web.Response | None] | None = None,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Middleware: a request naming a host outside ``server.allowed_hosts`` answered 400
    (health probes excepted), CORS headers on every answer (errors too), preflights for
    ``methods``, and HTTP errors (routing misses among them), a bad request header
    (``BadRequestHeader``) or body (``RequestPayloadError``, e.g. a gzip body that does not
    inflate: 400) and unexpected exceptions rendered with ``render``; the latter are logged
    with their traceback (the path escaped: ``logs.printable``) and answered 500 without
    details.

    On the root (``root`` given: the ready answers' lookup), a GET or HEAD of an allowed host
    that a front takes is first offered to ``root``, whose finished answers skip the front's
    layers; anything else the front takes passes through untouched: it has its own middleware,
    which refuses a host in its own format.

    A front with a ``GATE`` has each request admitted by it first (preflights excepted), on
    the root too before a ready answer, and answers its refusals with ``render``; the gate's
    CORS headers replace the server's."""
    cors = cors_headers(server.cors_allow_origin)
    host_allowed = HostCheck(server) if server.allowed_hosts is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if root is not None and len(request.match_info.apps) > 1:
            if request.method in _READS and (host_allowed is None or host_allowed(request)):
                gate = request.match_info.apps[-1].get(GATE)
                if gate is not None:
                    admission = await gate.admit(request)
                    if admission.refusal is not None:
                        # The front answers it, in its own format.
                        return await handler(request)
                    request = admission.request
                ready = root(request)
                if ready is not None:
                    if gate is not None:
                        gate.cors(request, ready)
                    return ready
            return await handler(request)
        gate = request.app.get(GATE)
        if host_allowed is not None and request.path not in _PROBES and not host_allowed(request):
            response: web.StreamResponse = render(request, 400, _HOST_REFUSED)
        elif request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": methods,
                    "Access-Control-Allow-Headers": request.headers.get(
                        "Access-Control-Request-Headers", ""
                    ),
                    "Access-Control-Max-Age": "86400",
                },
            )
        else:
            response = await _admitted(request, handler, render, gate, cors)
        if gate is None:
            response.headers.update(cors)
        else:
            gate.cors(request, response)
        return response

    return middleware


async def _admitted(
    request: web.Request,
    handler: Handler,
    render: RenderError,
    gate: Gate | None,
    cors: dict[str, str],
) -> web.StreamResponse:
    """The handler's answer to ``request`` once ``gate`` admits it, else the refusal; HTTP
    errors, a bad request header (``BadRequestHeader``) or body (``RequestPayloadError``: 400)
    and unexpected exceptions (logged with their traceback, the path escaped) rendered with
    ``render``."""
    if gate is not None:
        admission = await gate.admit(request)
        if admission.refusal is not None:
            refused = render(request, admission.refusal.status, admission.refusal.message)
            refused.headers.update(admission.refusal.headers)
            return refused
        request = admission.request
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            if gate is None:
                exc.headers.update(cors)
            else:
                gate.cors(request, exc)
            raise
        rendered = render(request, exc.status, exc.reason)
        if "Allow" in exc.headers:
            # A 405 says which methods the resource has (RFC 9110 section 15.5.6).
            rendered.headers["Allow"] = exc.headers["Allow"]
        return rendered
    except BadRequestHeader as exc:
        return render(request, 400, str(exc))
    except web.RequestPayloadError:
        # The body as sent cannot be read: its Content-Encoding, its chunks...
        return render(request, 400, "the request body cannot be read as sent")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, printable(request.path, 1000))
        return render(request, 500, "internal error")


def front_app(
    config: GatewayConfig,
    routes: Iterable[web.RouteDef],
    render: RenderError,
    methods: str = READ_METHODS,
    *,
    streams: bool = False,
) -> web.Application:
    """A protocol front as a sub-application: ``routes`` (relative to the prefix it is mounted
    at; ``""`` is the prefix itself), errors in the format of ``render``, preflights allowing
    ``methods``. A front whose handlers stream answers (prepare them themselves) says so with
    ``streams``, so that those carry their ``X-Request-Id`` too."""
    app = web.Application(middlewares=[_cors_middleware(config.server, methods, render)])
    if streams:
        app.on_response_prepare.append(_request_id_header)
    app[CONFIG] = config
    app.add_routes(routes)
    return app


def _root_middleware(
    server: ServerConfig, ready: Callable[[web.Request], web.Response | None]
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The root's one middleware, outermost: the request's ``logs.Exchange`` with its request
    id (the ``X-Request-Id`` a trusted proxy sent, when it is a safe one: ``logs.request_id``;
    else a new one) for the handler and the log lines, returned as ``X-Request-Id``; then the
    host check, CORS and ready answers of ``_cors_middleware``; each answer counted by front and
    status (``metrics.answered``), and a tile answer by layer, front, status and ``X-Cache`` too
    (``metrics.tile_answered``).

    One layer rather than two, and the header set on the answer here rather than from
    ``on_response_prepare``, because every tile hit passes through it (bench/README, "The hit
    path after issues 9-12"). An answer a handler streams is prepared before it gets here: the
    fronts that stream send it themselves (``front_app(streams=True)``)."""
    fronts = _cors_middleware(server, READ_METHODS, render_json_error, root=ready)
    trust_proxy = server.trust_proxy

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = Exchange(
            request_id(request.headers.get("X-Request-Id") if trust_proxy else None)
        )
        request[EXCHANGES] = exchange
        token = EXCHANGE.set(exchange)
        status, cache = 500, None
        try:
            response = await fronts(request, handler)
            status, cache = response.status, response.headers.get("X-Cache")
            if not response.prepared:
                response.headers["X-Request-Id"] = exchange.request_id
            return response
        except web.HTTPException as exc:
            status, cache = exc.status, exc.headers.get("X-Cache")
            exc.headers["X-Request-Id"] = exchange.request_id
            raise
        finally:
            EXCHANGE.reset(token)
            apps = request.match_info.apps
            front = apps[-1].get(FRONT, "root") if apps else "root"
            metrics.answered(front, status)
            if exchange.layer is not None:
                metrics.tile_answered(exchange.layer, front, status, cache or "NONE")

    return middleware


async def _request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Request-Id`` on an answer a front streams (its ``on_response_prepare``): the root's
    middleware sets it on every other answer, but a streamed one is sent before that."""
    exchange = request.get(EXCHANGES)
    if exchange is not None:
        response.headers["X-Request-Id"] = exchange.request_id


def root_app(
    config: GatewayConfig,
    routes: Iterable[web.RouteDef],
    ready: Callable[[web.Request], web.Response | None],
) -> web.Application:
    """The application the fronts are mounted on: its own ``routes`` and every path no front
    takes answer with JSON errors; a GET or HEAD a front takes is answered by ``ready`` when it
    has a finished answer (see ``tiles.ReadyAnswers``), else left to the front. Every request,
    a front's too, gets its request id and is counted first (``_root_middleware``)."""
    app = web.Application(middlewares=[_root_middleware(config.server, ready)])
    app[CONFIG] = config
    app.add_routes(routes)
    return app
