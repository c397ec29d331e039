"""Upstream credentials: the providers that get, renew and attach the tokens of secured
ArcGIS services (``credentials:`` of the configuration), one per credentials name and
ArcGIS Server, shared by every layer of that server naming them.

This room knows ArcGIS token services and the ``gateway.sources.http.Credentials`` hook it
plugs into; it knows nothing of tiles, caches or fronts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from gateway.config import (
    CredentialsConfig,
    OAuth2Credentials,
    PortalCredentials,
    ServerCredentials,
    StaticCredentials,
)
from gateway.credentials.providers import (
    OAuth2Token,
    PortalToken,
    RenewedToken,
    ServerToken,
    StaticToken,
)
from gateway.credentials.service import TokenService, server_root

__all__ = ["CredentialProviders", "RenewedToken", "StaticToken"]

Provider = StaticToken | RenewedToken


class CredentialProviders:
    """The providers of the configured ``credentials`` (name -> settings), made on first
    use: one per credentials name and ArcGIS Server root, since a server's token is good on
    that server only (arcgis-rest.md section 4.7).

    Token services are reached through ``session_for(url)`` (the upstream pool's session of
    the URL's origin), each request within ``timeout`` seconds. ``close`` ends renewals still
    running.
    """

    def __init__(
        self,
        credentials: Mapping[str, CredentialsConfig],
        session_for: Callable[[str], aiohttp.ClientSession],
        timeout: float,
    ) -> None:
        self._credentials = credentials
        self._session_for = session_for
        self._timeout = timeout
        self._providers: dict[tuple[str, str], Provider] = {}

    def for_service(self, name: str, service_url: str) -> Provider:
        """The provider of credentials ``name`` for the service at ``service_url`` (an
        ImageServer URL). Raises ``KeyError`` for a name not configured."""
        config = self._credentials[name]
        root = server_root(service_url)
        provider = self._providers.get((name, root))
        if provider is None:
            provider = self._providers[(name, root)] = self._make(name, config, root)
        return provider

    def _make(self, name: str, config: CredentialsConfig, root: str) -> Provider:
        if isinstance(config, StaticCredentials):
            return StaticToken(name, config)
        service = TokenService(f"credentials {name!r}", self._session_for, self._timeout)
        # PortalCredentials is a ServerCredentials: it is asked first.
        if isinstance(config, PortalCredentials):
            return PortalToken(name, config, root, service)
        if isinstance(config, ServerCredentials):
            return ServerToken(name, config, root, service)
        assert isinstance(config, OAuth2Credentials)
        return OAuth2Token(name, config, root, service)

    async def close(self) -> None:
        """Cancel the renewals still running."""
        for provider in self._providers.values():
            await provider.close()
