"""Upstream HTTP in one place: one keep-alive ``aiohttp.ClientSession`` per upstream origin,
its pool size and timeouts, and the hook where credentials meet every upstream request.

A ``Credentials`` provider adds its token to each request (``apply``). When ArcGIS rejects the
token — HTTP 498/499, an ArcGIS error JSON with code 498/499 under any HTTP status (ArcGIS
usually answers HTTP 200), or an HTML "Invalid Token" page (resource-proxy issue #301) — the
provider is asked to ``refresh`` once and, if it got a new token, the request is sent once
more (arcgis-rest.md sections 3 and 4). ``NoCredentials`` adds nothing and never retries; the
real providers (static, generateToken, OAuth2) plug in here.

Each upstream service also has a concurrency limit for its exportImage calls (``ExportSlots``),
shared by every layer of the service: an ArcGIS service renders with a few instances (its
``maxInstancesPerNode``), and a crawl of cold tiles must not queue a hundred renders there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.errors import UpstreamBusy, UpstreamError
from gateway.logs import EXCHANGE

log = logging.getLogger(__name__)

# ArcGIS' codes for "token rejected" (498 Invalid Token) and "token required" (499).
TOKEN_CODES = frozenset((498, 499))


@dataclass
class UpstreamRequest:
    """One request to an upstream, as a credential provider may change it: ``url`` (no query),
    ``params`` (query parameters) and ``headers``."""

    url: str
    params: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """What the upstream answered: HTTP ``status``, ``headers`` and the whole ``body``."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type of the body, lower case, without parameters ("" when absent)."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class Credentials(Protocol):
    """A credential provider of one upstream (see the module docstring)."""

    async def apply(self, request: UpstreamRequest) -> None:
        """Add the current credential (a ``token`` parameter or a header) to ``request``."""

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        """Get a new credential after ``rejected`` was refused; whether there is one to retry
        with. Raises ``UpstreamError`` when the token service fails."""


class NoCredentials:
    """The provider of an upstream that needs no credential: adds nothing, never retries."""

    async def apply(self, request: UpstreamRequest) -> None:
        """Nothing to add."""

    async def refresh(self, rejected: UpstreamRequest) -> bool:
        """No credential to renew: the rejection stands."""
        return False


def arcgis_error(body: bytes) -> tuple[int | None, str] | None:
    """``(code, message)`` of an ArcGIS error JSON body, else ``None``.

    The shape is ``{"error": {"code", "message", "details"}}`` (arcgis-rest.md section 3);
    ``details`` that add to the message are appended to it.
    """
    if not body[:64].lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    message = str(error.get("message") or "error without a message")
    details = error.get("details")
    if isinstance(details, list) and details:
        extra = "; ".join(str(item) for item in details if str(item) != message)
        if extra:
            message = f"{message} ({extra})"
    return (code if isinstance(code, int) else None), message


def token_rejected(response: UpstreamResponse) -> bool:
    """Whether ``response`` is ArcGIS refusing the request's token (or asking for one): HTTP
    498/499, an error JSON with code 498/499 (usually under HTTP 200), or a page that is not
    an image and says "Invalid Token"."""
    if response.status in TOKEN_CODES:
        return True
    error = arcgis_error(response.body)
    if error is not None:
        return error[0] in TOKEN_CODES
    return not response.content_type.startswith("image/") and (
        b"invalid token" in response.body[:4096].lower()
    )


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``: one keep-alive session is kept per origin."""
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


@dataclass(frozen=True, slots=True)
class ExportLimit:
    """The concurrency limit of one upstream service's exportImage calls.

    At most ``concurrent`` calls are in flight; a call beyond them waits for a slot, at most
    ``wait`` seconds, with at most ``queued`` calls waiting (``None``: no bound, as for a seed,
    whose workers bound the queue themselves).
    """

    concurrent: int
    queued: int | None = None
    wait: float | None = None


class ExportSlots:
    """The slots of one upstream service's ``ExportLimit``, in this process (processes each
    have their own: N processes send at most N x ``concurrent`` calls).

    Waiting calls get a slot first come, first served (``asyncio.Semaphore``).
    """

    def __init__(self, limit: ExportLimit) -> None:
        self.limit = limit
        self._free = asyncio.Semaphore(limit.concurrent)
        self._waiting = 0
        # The Retry-After of a refused call, in whole seconds: the wait bound, by when every
        # call queued ahead of it has had its slot or its own refusal.
        self._retry_after = max(1, math.ceil(limit.wait or 1))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``.

        Raises ``UpstreamBusy`` (503) at once when every slot is taken and ``queued`` calls
        already wait, or when no slot came free within ``wait`` seconds.
        """
        limit = self.limit
        if self._free.locked():
            if limit.queued is not None and self._waiting >= limit.queued:
                raise UpstreamBusy(
                    f"the limit of {limit.concurrent} exportImage calls in flight and "
                    f"{limit.queued} waiting is reached",
                    self._retry_after,
                )
            self._waiting += 1
            try:
                async with asyncio.timeout(limit.wait):
                    await self._free.acquire()
            except TimeoutError:
                raise UpstreamBusy(
                    f"no exportImage slot came free within {limit.wait:g} s (at most "
                    f"{limit.concurrent} in flight)",
                    self._retry_after,
                ) from None
            finally:
                self._waiting -= 1
        else:
            await self._free.acquire()
        try:
            yield
        finally:
            self._free.release()


class Upstream:
    """GET requests to one upstream origin through its shared ``session``, with
    ``credentials`` applied and one refresh-and-retry when the token is rejected.

    ``timeout`` bounds each request in seconds (all of it: connecting, waiting, reading).
    ``exports`` are the exportImage slots of the service this upstream was made for, which
    its client holds around each exportImage call.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        timeout: float,
        exports: ExportSlots,
    ) -> None:
        self._session = session
        self.credentials = credentials
        self.timeout = timeout
        self.exports = exports
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def get(self, url: str, params: Mapping[str, str]) -> UpstreamResponse:
        """``GET url?params``, the whole body read.

        Raises ``UpstreamError``: 504 when no answer came within the timeout, 502 when the
        upstream cannot be reached (the message names the kind of failure, never the URL).
        """
        request = UpstreamRequest(url, dict(params), _traced())
        await self.credentials.apply(request)
        response = await self._send(request)
        if token_rejected(response):
            retry = UpstreamRequest(url, dict(params), _traced())
            if await self.credentials.refresh(request):
                await self.credentials.apply(retry)
                response = await self._send(retry)
        return response

    async def _send(self, request: UpstreamRequest) -> UpstreamResponse:
        try:
            async with self._session.get(
                request.url, params=request.params, headers=request.headers, timeout=self._timeout
            ) as response:
                body = await response.read()
                return UpstreamResponse(response.status, response.headers, body)
        except TimeoutError:
            raise UpstreamError(504, None, f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            # The exception text names the host; the client only learns the kind of failure.
            log.warning("upstream request to %s failed: %s", URL(request.url).origin(), exc)
            raise UpstreamError(502, None, f"unreachable ({type(exc).__name__})") from None


def _traced() -> dict[str, str]:
    """The headers of every upstream request: the ``X-Request-Id`` of the request being
    answered (``logs.EXCHANGE``), when there is one, so that upstream logs match ours."""
    exchange = EXCHANGE.get()
    return {} if exchange is None else {"X-Request-Id": exchange.request_id}


class Sessions:
    """Keep-alive ``aiohttp.ClientSession``s, one per origin, made on first use: at most
    ``connections`` open connections to each (requests beyond them wait for one), ``agent``
    as the User-Agent, no cookies kept (an upstream's ``Set-Cookie`` must not ride along with
    later requests, nor reach a client), no proxy settings taken from the environment.
    ``close`` ends them all (at shutdown)."""

    def __init__(self, connections: int, agent: str) -> None:
        self._connections = connections
        self._agent = agent
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, url: str) -> aiohttp.ClientSession:
        """The session of ``url``'s origin."""
        origin = origin_of(url)
        session = self._sessions.get(origin)
        if session is None:
            session = self._sessions[origin] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connections, limit_per_host=self._connections
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self._agent},
                trust_env=False,
            )
        return session

    async def close(self) -> None:
        """Close every session and its connections."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


class UpstreamPool:
    """The keep-alive sessions of the process, one per upstream origin, made on first use, and
    the exportImage slots of each upstream service.

    ``connections`` bounds the open connections to each origin (requests beyond it wait for
    one); ``agent`` is the User-Agent sent; ``exports`` is the limit of each service's
    exportImage calls (default: as many as ``connections``, waiting without bound).
    ``close`` ends the sessions (at shutdown).
    """

    def __init__(
        self,
        connections: int = 100,
        agent: str = "tile-gateway/0.1",
        exports: ExportLimit | None = None,
    ) -> None:
        self._sessions = Sessions(connections, agent)
        self._exports = exports or ExportLimit(connections)
        self._slots: dict[str, ExportSlots] = {}

    def upstream(
        self, url: str, timeout: float, credentials: Credentials | None = None
    ) -> Upstream:
        """An ``Upstream`` for requests under ``url``, a service root (an ImageServer URL),
        sharing its origin's session and the service's exportImage slots with every other
        ``Upstream`` made for the same ``url``."""
        service = url.rstrip("/")
        slots = self._slots.get(service)
        if slots is None:
            slots = self._slots[service] = ExportSlots(self._exports)
        return Upstream(self.session(url), credentials or NoCredentials(), timeout, slots)

    def session(self, url: str) -> aiohttp.ClientSession:
        """The keep-alive session of ``url``'s origin, made on first use (also for the token
        services of credential providers)."""
        return self._sessions.session(url)

    async def close(self) -> None:
        """Close every session and its connections."""
        await self._sessions.close()
