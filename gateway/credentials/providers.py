"""The credential providers: each adds its token to every upstream request of its layers and
renews it (``gateway.sources.http.Credentials``).

``StaticToken`` sends a fixed token or API key. The others ask a token service for a token
and keep it until shortly before it expires (``refresh_margin``, at most a tenth of its
lifetime ahead), from the server's own ``expires`` (epoch ms) or ``expires_in`` (s):
``ServerToken`` (ArcGIS Server ``generateToken``), ``PortalToken`` (portal / ArcGIS Online
``generateToken``, optionally exchanged for a federated server's token) and ``OAuth2Token``
(client credentials, optionally exchanged). arcgis-rest.md sections 4.2-4.6.

One renewal at a time per provider: every request that needs a token while one is being
fetched waits for that same fetch (and shares its failure), so 200 requests meeting an expired
or rejected token cause one token call. A token is never logged, and never put anywhere but
the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import metrics
from gateway.config import (
    CredentialsBase,
    OAuth2Credentials,
    PortalCredentials,
    ServerCredentials,
    StaticCredentials,
)
from gateway.credentials.secrets import read_secret
from gateway.credentials.service import (
    TokenService,
    generate_token_url,
    oauth2_token_url,
    portal_generate_token_url,
)
from gateway.errors import UpstreamError
from gateway.sources.http import UpstreamRequest

log = logging.getLogger(__name__)

HEADER = "X-Esri-Authorization"
# ArcGIS's short-lived token default (arcgis-rest.md section 4.2), assumed for a token whose
# answer gives no usable lifetime; a 498 before then still renews it.
DEFAULT_LIFETIME = 3600.0
# A token is renewed at 90 % of its lifetime at the earliest, whatever refresh_margin says.
MAX_AHEAD = 0.1


def attach(request: UpstreamRequest, value: str, config: CredentialsBase) -> None:
    """Put the token ``value`` on ``request`` as ``config.send_as`` says, with the configured
    ``Referer`` (a referer-bound token is refused without it, arcgis-rest.md section 4.7)."""
    if config.send_as == "header":
        request.headers[HEADER] = f"Bearer {value}"
    else:
        request.params["token"] = value
    if config.referer is not None:
        request.headers["Referer"] = config.referer


def carried(request: UpstreamRequest) -> str | None:
    """The token ``request`` was sent with (``attach``'s parameter or header), if any."""
    if "token" in request.params:
        return request.params["token"]
    return request.headers.get(HEADER, "").removeprefix("Bearer ") or None


class StaticToken:
    """A fixed token or API key (``StaticCredentials``), read once, sent as it is.

    When the upstream rejects it and it comes from a file, the file is read again: a rotated
    Kubernetes Secret is picked up; whether the token changed says whether to retry.
    """

    def __init__(self, name: str, config: StaticCredentials) -> None:
        self.name = name
        self.owner = f"credentials {name!r}"
        self._config = config
        self._value: str | None = None

    async def apply(self, request: UpstreamRequest) -> None:
        """Add the token; raises ``UpstreamError`` (502) when it cannot be read."""
        if self._value is None:
            self._value = read_secret(self._config.secret, self.owner)
        attach(request, self._value, self._config)

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        """Read a token file again; whether it now holds another token than ``rejected``'s."""
        if self._config.token_file is None:
            return False
        self._value = read_secret(self._config.secret, self.owner)
        return self._value != carried(rejected)

    async def close(self) -> None:
        """Nothing runs in the background."""


@dataclass(frozen=True, slots=True)
class Token:
    """A token ``value`` valid until ``expires_at``, renewed from ``refresh_at`` on (both on
    the provider's monotonic clock, in seconds)."""

    value: str
    expires_at: float
    refresh_at: float


class RenewedToken(ABC):
    """A token from a token service, renewed ahead of its expiry and when rejected, one
    renewal at a time (see the module docstring).

    ``name`` is the credentials' name, ``root`` the ArcGIS Server root the token is for
    (``https://host/arcgis``), ``service`` the HTTP to the token services, ``clock`` a
    monotonic clock in seconds.
    """

    def __init__(
        self,
        name: str,
        config: ServerCredentials | OAuth2Credentials,
        root: str,
        service: TokenService,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.owner = f"credentials {name!r}"
        self.root = root
        self._config = config
        self._service = service
        self._clock = clock
        self._token: Token | None = None
        self._renewal: asyncio.Task[Token] | None = None
        self._services_url: str | None = None

    async def apply(self, request: UpstreamRequest) -> None:
        """Add the current token, waiting for a new one when there is none or it expired;
        past its refresh point a renewal starts in the background and the still valid token
        goes out. Raises ``UpstreamError`` (502) when no token can be had."""
        token = self._token
        now = self._clock()
        if token is None or now >= token.expires_at:
            token = await asyncio.shield(self._renewing())
        elif now >= token.refresh_at:
            self._renewing()
        attach(request, token.value, self._config)

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        """A new token after the upstream refused ``rejected``'s: none is fetched when the
        token was already renewed since that request went out (the others of a burst).
        Raises ``UpstreamError`` (502) when the token service fails."""
        token = self._token
        if token is None or carried(rejected) == token.value:
            await asyncio.shield(self._renewing())
        return True

    async def close(self) -> None:
        """Cancel a renewal still running (at shutdown)."""
        renewal = self._renewal
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await renewal

    def _renewing(self) -> asyncio.Task[Token]:
        """The renewal in flight, started when there is none."""
        if self._renewal is None:
            self._renewal = asyncio.create_task(self._renew())
            self._renewal.add_done_callback(_retrieve)
        return self._renewal

    async def _renew(self) -> Token:
        try:
            value, lifetime = await self._fetch()
        except UpstreamError as exc:
            log.warning("%s: no token for %s: %s", self.owner, self.root, exc.message)
            metrics.token_renewed(self.name, ok=False)
            self._postpone()
            raise
        finally:
            self._renewal = None
        now = self._clock()
        ahead = min(self._config.refresh_margin, lifetime * MAX_AHEAD)
        self._token = Token(value, now + lifetime, now + lifetime - ahead)
        log.info("%s: new token for %s, valid %.0f s", self.owner, self.root, lifetime)
        metrics.token_renewed(self.name, ok=True)
        return self._token

    def _postpone(self) -> None:
        """After a failed renewal ahead of expiry, try again halfway to it: the still valid
        token keeps serving, and a failing token service is not asked on every request."""
        token, now = self._token, self._clock()
        if token is not None and now < token.expires_at:
            self._token = Token(token.value, token.expires_at, (now + token.expires_at) / 2)

    @abstractmethod
    async def _fetch(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds, from the token service."""

    async def _token_services(self) -> str:
        """The server's ``authInfo.tokenServicesUrl``, asked once (then kept)."""
        if self._services_url is None:
            self._services_url = await self._service.discover(self.root)
        return self._services_url

    def _issued(self, answer: dict[str, Any], expiration: int | None) -> tuple[str, float]:
        """Token and lifetime (s) of a generateToken answer ``{"token", "expires" (epoch
        ms)}`` (arcgis-rest.md sections 4.2, 4.3)."""
        expires = answer.get("expires")
        lifetime = None
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            lifetime = expires / 1000 - time.time()
        return self._checked(answer.get("token"), lifetime, expiration)

    def _checked(
        self, value: Any, lifetime: float | None, expiration: int | None
    ) -> tuple[str, float]:
        if not isinstance(value, str) or not value:
            raise UpstreamError(502, None, f"{self.owner}: the token service sent no token")
        if lifetime is None or not math.isfinite(lifetime) or lifetime <= 0:
            # No lifetime, or one already past: a clock far from the server's. Assume the one
            # asked for; a 498 renews the token earlier if need be.
            log.warning(
                "%s: the token service gave no usable expiry (is this clock right?)", self.owner
            )
            lifetime = expiration * 60.0 if expiration else DEFAULT_LIFETIME
        return value, lifetime

    def _binding(self) -> dict[str, str]:
        """``client``/``referer`` of a generateToken form (``expiration`` too when set)."""
        config = self._config
        if isinstance(config, ServerCredentials):
            form = dict(config.binding)
        elif config.referer is not None:
            form = {"client": "referer", "referer": config.referer}
        else:
            form = {"client": "requestip"}
        if config.expiration is not None:
            form["expiration"] = str(config.expiration)
        return form

    async def _exchange(self, portal_token: str, generate_url: str) -> tuple[str, float]:
        """The federated server's token for ``portal_token`` from the portal's generateToken
        at ``generate_url`` (``token`` + ``serverUrl``, arcgis-rest.md section 4.3)."""
        form = {"token": portal_token, "serverUrl": self.root, **self._binding()}
        answer = await self._service.post(generate_url, form, self._config.referer, (portal_token,))
        return self._issued(answer, self._config.expiration)


class ServerToken(RenewedToken):
    """``username``/password at an ArcGIS Server's ``.../tokens/generateToken`` (configured,
    else from the server's ``/rest/info``)."""

    _config: ServerCredentials

    async def _fetch(self) -> tuple[str, float]:
        config = self._config
        url = str(config.url) if config.url else generate_token_url(await self._token_services())
        password = read_secret(config.secret, self.owner)
        form = {"username": config.username, "password": password, **self._binding()}
        answer = await self._service.post(url, form, config.referer, (password,))
        return self._issued(answer, config.expiration)


class PortalToken(ServerToken):
    """``username``/password at a portal's ``/sharing/rest/generateToken``; with
    ``exchange``, that token exchanged there for the federated server's."""

    _config: PortalCredentials

    async def _fetch(self) -> tuple[str, float]:
        portal_token, lifetime = await super()._fetch()
        if not self._config.exchange:
            return portal_token, lifetime
        url = str(self._config.url) if self._config.url else await self._token_services()
        return await self._exchange(portal_token, generate_token_url(url))


class OAuth2Token(RenewedToken):
    """An app's client credentials at a portal's ``/sharing/rest/oauth2/token`` (configured,
    else beside the portal token service the server's ``/rest/info`` names): ``{"access_token",
    "expires_in" (s)}``; with ``exchange``, exchanged for the federated server's token."""

    _config: OAuth2Credentials

    async def _fetch(self) -> tuple[str, float]:
        config = self._config
        url = str(config.url) if config.url else oauth2_token_url(await self._token_services())
        if url is None:
            raise UpstreamError(
                502,
                None,
                f"{self.owner}: the server is not federated with a portal (its token service "
                "is its own); configure the portal's oauth2/token url",
            )
        secret = read_secret(config.secret, self.owner)
        form = {
            "client_id": config.client_id,
            "client_secret": secret,
            "grant_type": "client_credentials",
        }
        if config.expiration is not None:
            form["expiration"] = str(config.expiration)
        answer = await self._service.post(url, form, config.referer, (secret,))
        expires_in = answer.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
            else None
        )
        app_token, lifetime = self._checked(answer.get("access_token"), lifetime, config.expiration)
        if not config.exchange:
            return app_token, lifetime
        generate = portal_generate_token_url(url)
        if generate is None:
            raise UpstreamError(
                502, None, f"{self.owner}: exchange needs a portal's /sharing/ oauth2 url"
            )
        return await self._exchange(app_token, generate)


def _retrieve(task: asyncio.Task[Token]) -> None:
    # A background renewal's failure is logged by _renew; reading it here keeps asyncio from
    # reporting it again as never retrieved.
    if not task.cancelled():
        task.exception()
