"""Who may use the gateway (README, "Access control"): inbound authentication by API key or
JWT, rate limits, CORS origins and Referer checks, per route group.

The route groups are ``tiles`` (the tile fronts /tiles, /wmts, /ogcapi), ``proxy`` (the
ArcGIS reverse proxy) and ``admin``; the root (viewer, /layers.json, /healthz, /readyz) is
always open. ``Access.of(config)`` builds one ``Gate`` per configured group; a front's
middleware asks its gate to ``admit`` each request and answers a ``Refusal`` in its own error
format. This room knows requests, configuration and its libraries (``limits``, PyJWT), and
nothing of tiles, caches or upstreams (an import-linter contract).

- ``keys``: API keys, configured as SHA-256 digests, compared in constant time.
- ``tokens``: JWT bearer tokens against a JWKS fetched with aiohttp, cached and rotated.
- ``rates``: per-client moving-window limits in Redis (across replicas) or memory.
- ``gate``: the decision for one group, and its CORS headers.
- ``logs``: access log lines without API keys or tokens.
"""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import web

from gateway.access.gate import (
    EXPOSED_HEADERS,
    Admission,
    Gate,
    Refusal,
    Resource,
    admission_of,
    client_address,
)
from gateway.access.keys import ApiKeys
from gateway.access.logs import access_logger, redactor, secret_params
from gateway.access.rates import RateLimits, limiter_storage
from gateway.access.tokens import JwtVerifier
from gateway.config import GatewayConfig, ResourceAccess

__all__ = [
    "EXPOSED_HEADERS",
    "Access",
    "Admission",
    "Gate",
    "Refusal",
    "access_logger",
    "admission_of",
    "client_address",
    "redactor",
    "secret_params",
]


class Access:
    """The gates of ``config``'s route groups, sharing one key table, JWT verifier and rate
    limiter; ``start``/``close`` bracket the app's life (the JWKS session, Redis pool)."""

    def __init__(self, config: GatewayConfig) -> None:
        access = config.access
        self._verifier = (
            JwtVerifier(access.jwt, config.server.upstream_timeout)
            if access.jwt is not None
            else None
        )
        redis_url = config.cache.redis_url if config.cache.effective_backend == "redis" else None
        storage, pool = limiter_storage(redis_url, config.cache.prefix, config.cache.timeout)
        self._rates = RateLimits(
            {group: g.rate_limit for group, g in access.groups.items() if g.rate_limit},
            storage,
            pool,
        )
        keys = ApiKeys.of(access)
        resources: dict[str, Resource] = {
            "tiles": _layer_rule(config),
            "proxy": _service_rule(config),
            "admin": lambda request: None,
        }
        self.gates = {
            group: Gate(
                group,
                settings,
                access,
                access.client_hops(config.server),
                config.server.cors_allow_origin,
                keys,
                self._verifier,
                self._rates,
                resources[group],
            )
            for group, settings in access.groups.items()
        }

    def gate(self, group: str) -> Gate | None:
        """The gate of ``group``, ``None`` when the group is not configured (open)."""
        return self.gates.get(group)

    async def start(self) -> None:
        """Open the JWKS session."""
        if self._verifier is not None:
            await self._verifier.start()

    async def close(self) -> None:
        """Close the JWKS session and the rate limits' Redis pool."""
        if self._verifier is not None:
            await self._verifier.close()
        await self._rates.close()


def _layer_rule(config: GatewayConfig) -> Resource:
    """The restriction of the layer a tile front's request names: the ``layer`` of its path,
    or the WMTS KVP ``LAYER`` parameter (names case-insensitive, OGC 06-121r3 section
    11.5.2)."""
    rules = {name: layer.access for name, layer in config.layers.items() if layer.access}

    def rule(request: web.Request) -> ResourceAccess | None:
        if not rules:
            return None
        layer = request.match_info.get("layer")
        if layer is None:
            layer = next(
                (value for name, value in request.query.items() if name.lower() == "layer"), None
            )
        return rules.get(layer) if layer is not None else None

    return rule


def _service_rule(config: GatewayConfig) -> Resource:
    """The restriction of the proxied service a request's path is under: the first service,
    longest ``path`` first, whose path segments begin the percent-decoded segments after the
    prefix (the proxy's own routing, ``gateway.proxy.routing``)."""
    proxy = config.proxy
    if proxy is None:
        return lambda request: None
    services = sorted(
        ((tuple(s.path.split("/")) if s.path else (), s.access) for s in proxy.services),
        key=lambda item: -len(item[0]),
    )

    def rule(request: web.Request) -> ResourceAccess | None:
        path = request.raw_path.partition("?")[0]
        segments = tuple(unquote(part) for part in path.removeprefix(proxy.prefix + "/").split("/"))
        for mount, access in services:
            if segments[: len(mount)] == mount:
                return access
        return None

    return rule
