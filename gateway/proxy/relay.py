"""Forwarding one request upstream and its answer back: the reverse proxy's engine.

Upstream requests carry the checked URL of ``routing``, the client's query and form fields
without ``token`` (the credential provider adds the gateway's), and of the client's headers
only those that describe what it accepts (``FORWARDED``): no cookie, ``Authorization``,
``X-Esri-Authorization``, ``Referer``, ``X-Forwarded-*`` or hop-by-hop header leaves the
gateway. Sessions keep no cookies (``DummyCookieJar``): an upstream ``Set-Cookie`` is neither
stored nor passed on. Redirects are never followed; one into a configured upstream is passed
on with its ``Location`` rewritten to the gateway, any other is a 502.

Answers: images and other binary bodies are streamed as they arrive; JSON and text are read
(at most ``proxy.max_document_bytes``), checked for a rejected token (HTTP 498/499, an ArcGIS
error 498/499, an "Invalid Token" page: ``sources.http.token_rejected``; then the provider
refreshes once and the request is sent again when its body can be), and scrubbed
(``scrub``). HTML pages (the Services Directory, which names internal hosts and accounts:
resource-proxy issue #502) are not relayed. Cacheable reads (``reads``) go through the tile
cache with coalescing; only a 200 image that decodes completely is stored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import BodyPartReader, web
from multidict import CIMultiDict
from yarl import URL

from gateway.cache.coalesce import SingleFlight
from gateway.cache.codec import TileEntry, strong_etag
from gateway.cache.keys import KeyLayout
from gateway.cache.store import TileCache
from gateway.config import ProxyConfig
from gateway.imaging import UndecodableImage, check_image
from gateway.logs import EXCHANGE
from gateway.proxy.reads import CacheableRead, cacheable, service_key
from gateway.proxy.routing import OUTPUTS, ProxyService, Refused, Router, Target
from gateway.proxy.scrub import Scrubber
from gateway.sources.http import (
    Credentials,
    Sessions,
    UpstreamRequest,
    UpstreamResponse,
    token_rejected,
)

log = logging.getLogger(__name__)

# Client headers sent upstream: what the client accepts and its conditional/range requests.
FORWARDED = ("Accept", "Accept-Language", "If-None-Match", "If-Modified-Since", "Range", "If-Range")
# Upstream headers passed on with a streamed body.
_STREAMED_HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "Content-Language",
    "Last-Modified",
    "ETag",
    "Expires",
    "Cache-Control",
    "Content-Range",
    "Accept-Ranges",
)
# With a scrubbed body the validators of the upstream's bytes no longer hold.
_DOCUMENT_HEADERS = (
    "Content-Type",
    "Content-Language",
    "Last-Modified",
    "Expires",
    "Cache-Control",
)
_TEXT_TYPES = ("application/json", "application/javascript", "application/xml")
_CHUNK = 64 * 1024
_CLIENT_TOKEN = "token"
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
CredentialsLookup = Callable[[str], Credentials]
"""The credential provider of a named credential set (raises ``LookupError`` when unknown)."""


def _is_document(content_type: str) -> bool:
    """Whether an answer of ``content_type`` is read whole and scrubbed (JSON, text, HTML, or
    no type at all) rather than streamed."""
    return (
        not content_type
        or content_type.startswith("text/")
        or content_type in _TEXT_TYPES
        or content_type.endswith(("+json", "+xml"))
    )


def _client_params(params: Mapping[str, str]) -> dict[str, str]:
    """The client's query parameters without its ``token`` (any case)."""
    return {name: value for name, value in params.items() if name.lower() != _CLIENT_TOKEN}


def _secrets(request: UpstreamRequest) -> set[str]:
    """The credential values a provider put on ``request``: scrubbed from every answer."""
    found = {request.params.get("token", "")}
    for name in ("X-Esri-Authorization", "Authorization"):
        value = request.headers.get(name, "")
        found.add(value.removeprefix("Bearer ").strip())
    found.discard("")
    return found


@dataclass
class _Body:
    """A request body for upstream: bytes that can be sent again, or a one-shot stream."""

    data: bytes | AsyncIterator[bytes] | None = None
    content_type: str | None = None
    too_large: bool = False

    @property
    def replayable(self) -> bool:
        return not isinstance(self.data, AsyncIterator)


class _NotStored(Exception):
    """A cacheable read whose upstream answer is not a storable image: relayed, not cached."""

    def __init__(self, answer: UpstreamResponse, secrets_sent: set[str]) -> None:
        super().__init__("not an image")
        self.answer = answer
        self.secrets = secrets_sent


@dataclass(frozen=True, slots=True)
class _Call:
    """One request to relay: the client's ``request``, its checked ``target``, the query
    ``params`` to send (the client's ``token`` left out) and the gateway's ``public_base``."""

    request: web.Request
    target: Target
    params: dict[str, str]
    public_base: str


class Proxy:
    """The reverse proxy of ``config``: ``handle(request, public_base)`` answers one request.

    ``credentials`` gives the provider of each credential set a service names (``NoCredentials``
    is used where none is named, by the caller); ``state`` holds the keep-alive sessions to
    the upstreams (closed by the caller); ``timeout`` bounds, in seconds, connecting and each
    wait for upstream bytes; ``cache``/``keys`` (``attach_cache``) are the tile cache and its
    key layout.
    """

    def __init__(
        self,
        config: ProxyConfig,
        credentials: Mapping[str, Credentials],
        state: Sessions,
        timeout: float,
    ) -> None:
        self.config = config
        self.router = Router(config)
        self.credentials = credentials
        self.state = state
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        # How long a read waits for another replica's fetch of the same answer before it
        # fetches for itself (``SingleFlight.fetch``): about one upstream call.
        self._wait = timeout
        self.cache: TileCache | None = None
        self.keys: KeyLayout | None = None
        self._flight: SingleFlight | None = None

    def attach_cache(self, cache: TileCache, keys: KeyLayout, lease: float) -> None:
        """Use ``cache`` for cacheable reads (``proxy.cache_ttl`` > 0)."""
        if self.config.cache_ttl > 0:
            self.cache, self.keys = cache, keys
            self._flight = SingleFlight(cache, lease)

    async def detach_cache(self) -> None:
        """Stop the cacheable reads' background retries of stores and unlocks (at shutdown)."""
        if self._flight is not None:
            await self._flight.close()

    def _credentials(self, service: ProxyService) -> Credentials:
        return self.credentials[service.config.path]

    def scrubber(self, public_base: str, secrets_sent: set[str]) -> Scrubber:
        """The scrubber of an answer: every upstream's base URL and output directory mapped to
        its gateway URL under ``public_base``."""
        bases = []
        for service in self.router.services:
            gateway = "/".join((public_base + self.config.prefix, *service.mount))
            bases.append((service.config.base_url, gateway))
            outputs = service.config.outputs_base
            if outputs is not None:
                bases.append((outputs, f"{gateway}/{OUTPUTS}"))
        return Scrubber.of(bases, secrets_sent)

    async def handle(self, request: web.Request, public_base: str) -> web.StreamResponse:
        """Answer ``request`` (GET, HEAD or POST below the prefix). Raises ``Refused``."""
        target = self.router.route(request.raw_path)
        if target.output and request.method == "POST":
            raise Refused(405, "output files are read with GET")
        params = _client_params(request.query)
        if request.method == "GET" and self._flight is not None:
            read = cacheable(target, params, self.config.cache_max_pixels)
            if read is not None:
                return await self._cached(_Call(request, target, params, public_base), read)
        body = await self._body(request)
        return await self._forward(_Call(request, target, params, public_base), body)

    # -- request bodies ------------------------------------------------------------------

    async def _body(self, request: web.Request) -> _Body:
        """The body to send upstream: none for GET/HEAD; a form without ``token`` (bytes);
        a multipart form without its ``token`` part (streamed). Raises ``Refused``: 413
        beyond ``max_body_bytes``, 415 for another media type."""
        if request.method != "POST" or not request.body_exists:
            return _Body()
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, f"the request body is larger than {limit} bytes")
        if request.content_type == _FORM:
            data = bytearray()
            async for chunk in request.content.iter_any():
                data += chunk
                if len(data) > limit:
                    raise Refused(413, f"the request body is larger than {limit} bytes")
            fields = parse_qsl(data.decode("utf-8", errors="replace"), keep_blank_values=True)
            kept = [(name, value) for name, value in fields if name.lower() != _CLIENT_TOKEN]
            return _Body(urlencode(kept).encode("ascii"), _FORM)
        if request.content_type == _MULTIPART:
            boundary = secrets.token_hex(16)
            body = _Body(content_type=f"{_MULTIPART}; boundary={boundary}")
            body.data = self._multipart(request, boundary, body)
            return body
        raise Refused(415, "a POST body must be a form (urlencoded or multipart)")

    async def _multipart(
        self, request: web.Request, boundary: str, body: _Body
    ) -> AsyncIterator[bytes]:
        """The client's multipart form, part by part as it arrives, without ``token`` parts;
        sets ``body.too_large`` and stops beyond ``max_body_bytes``."""
        reader = await request.multipart()
        limit, size = self.config.max_body_bytes, 0
        delimiter = f"--{boundary}\r\n".encode("ascii")
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise Refused(415, "nested multipart bodies are not forwarded")
            if (part.name or "").lower() == _CLIENT_TOKEN:
                await part.release()
                continue
            head = b"".join(
                f"{name}: {part.headers[name]}\r\n".encode()
                for name in ("Content-Disposition", "Content-Type", "Content-Transfer-Encoding")
                if name in part.headers
            )
            yield delimiter + head + b"\r\n"
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size > limit:
                    body.too_large = True
                    raise Refused(413, f"the request body is larger than {limit} bytes")
                yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    # -- upstream exchanges -------------------------------------------------------------

    def _upstream_request(
        self, request: web.Request, target: Target, params: dict[str, str]
    ) -> UpstreamRequest:
        headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
        exchange = EXCHANGE.get()
        if exchange is not None:
            # The upstream's logs then match ours.
            headers["X-Request-Id"] = exchange.request_id
        return UpstreamRequest(target.url, dict(params), headers)

    async def _send(
        self, method: str, upstream: UpstreamRequest, body: _Body
    ) -> aiohttp.ClientResponse:
        """Open an upstream exchange (status and headers read). Raises ``Refused`` 413 for a
        streamed body found too large, 502/504 when the upstream cannot be reached."""
        headers = dict(upstream.headers)
        if body.content_type is not None:
            headers["Content-Type"] = body.content_type
        session = self.state.session(upstream.url)
        try:
            return await session.request(
                method,
                URL(upstream.url, encoded=True),
                params=upstream.params,
                headers=headers,
                data=body.data,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except Refused:
            raise
        except TimeoutError:
            raise Refused(504, "the upstream did not answer in time") from None
        except aiohttp.ClientError as exc:
            if body.too_large:
                raise Refused(
                    413, f"the request body is larger than {self.config.max_body_bytes} bytes"
                ) from None
            # The exception text names the host; the client only learns the kind of failure.
            log.warning("proxy: upstream %s failed: %s", URL(upstream.url).origin(), exc)
            raise Refused(502, f"the upstream cannot be reached ({type(exc).__name__})") from None

    async def _read(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        data = bytearray()
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > limit:
                    raise Refused(502, f"the upstream's answer is larger than {limit} bytes")
        except TimeoutError:
            raise Refused(504, "the upstream did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise Refused(502, f"the upstream's answer broke off ({type(exc).__name__})") from None
        return bytes(data)

    async def _exchange(
        self, method: str, target: Target, upstream: UpstreamRequest, body: _Body, *, whole: bool
    ) -> tuple[aiohttp.ClientResponse, bytes | None, set[str]]:
        """Send ``upstream`` with credentials; read the answer when it is a document, a
        redirect, a 498/499 or ``whole`` is set; refresh and resend once when the token was
        rejected and the body can be sent again. Returns the response (to be released by the
        caller), its body when read, and the credential values sent."""
        credentials = self._credentials(target.service)
        sent = UpstreamRequest(upstream.url, dict(upstream.params), dict(upstream.headers))
        await credentials.apply(sent)
        response = await self._send(method, sent, body)
        data = await self._maybe_read(response, whole)
        if data is not None and body.replayable:
            rejected = token_rejected(UpstreamResponse(response.status, response.headers, data))
            if rejected and await credentials.refresh(sent):
                response.release()
                retry = UpstreamRequest(upstream.url, dict(upstream.params), dict(upstream.headers))
                await credentials.apply(retry)
                response = await self._send(method, retry, body)
                data = await self._maybe_read(response, whole)
                return response, data, _secrets(sent) | _secrets(retry)
        return response, data, _secrets(sent)

    async def _maybe_read(self, response: aiohttp.ClientResponse, whole: bool) -> bytes | None:
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if whole or _is_document(content_type) or response.status >= 300:
            try:
                return await self._read(response, self.config.max_document_bytes)
            except Refused:
                response.release()
                raise
        return None

    async def _forward(self, call: _Call, body: _Body) -> web.StreamResponse:
        request, target, public_base = call.request, call.target, call.public_base
        upstream = self._upstream_request(request, target, call.params)
        response, data, sent = await self._exchange(
            request.method, target, upstream, body, whole=False
        )
        try:
            if data is not None:
                answer = UpstreamResponse(response.status, response.headers, data)
                return self._document(target, answer, self.scrubber(public_base, sent), public_base)
            return await self._stream(request, response)
        finally:
            response.release()

    # -- answers ------------------------------------------------------------------------

    def _allowed(self, url: str, public_base: str) -> bool:
        """Whether the gateway ``url`` (under ``public_base``) is one the allow-list admits."""
        try:
            self.router.route(url.removeprefix(public_base))
        except Refused:
            return False
        return url.startswith(public_base)

    def _document(
        self, target: Target, answer: UpstreamResponse, scrubber: Scrubber, public_base: str
    ) -> web.Response:
        """A read answer relayed: redirects passed on when they lead to an allowed gateway
        URL (else 502), HTML refused, JSON and text scrubbed. Raises ``Refused``."""
        if 300 <= answer.status < 400:
            location = answer.headers.get("Location")
            mapped = None
            if location is not None:
                mapped = scrubber.url(str(URL(target.url).join(URL(location))))
            if mapped is None or not self._allowed(mapped, public_base):
                raise Refused(502, "the upstream redirected outside the services of this proxy")
            return web.Response(status=answer.status, headers={"Location": mapped})
        if answer.content_type == "text/html":
            raise Refused(
                403, "HTML pages of the upstream are not relayed: ask for f=json or f=pjson"
            )
        headers = CIMultiDict(
            (name, answer.headers[name]) for name in _DOCUMENT_HEADERS if name in answer.headers
        )
        charset = None
        if "charset=" in headers.get("Content-Type", ""):
            charset = headers["Content-Type"].split("charset=", 1)[1].split(";")[0].strip()
            headers["Content-Type"] = headers["Content-Type"].split(";", 1)[0] + "; charset=utf-8"
        body = scrubber.body(answer.body, charset) if answer.body else b""
        return web.Response(status=answer.status, body=body, headers=headers)

    async def _stream(
        self, request: web.Request, response: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """The upstream's body passed on chunk by chunk, never held whole. A break mid-way
        closes the client connection: a short body must not look complete."""
        headers = CIMultiDict(
            (name, response.headers[name]) for name in _STREAMED_HEADERS if name in response.headers
        )
        if "Content-Encoding" not in response.headers and "Content-Length" in response.headers:
            headers["Content-Length"] = response.headers["Content-Length"]
        answer = web.StreamResponse(status=response.status, headers=headers)
        await answer.prepare(request)
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                await answer.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("proxy: upstream answer broke off: %s", type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return answer
        await answer.write_eof()
        return answer

    # -- cacheable reads ----------------------------------------------------------------

    async def _cached(self, call: _Call, read: CacheableRead) -> web.StreamResponse:
        assert self._flight is not None and self.keys is not None
        request, target, params, public_base = (
            call.request,
            call.target,
            call.params,
            call.public_base,
        )
        service = target.service
        key_parts = (service.key_path, service_key(target), read.read)
        key = self.keys.proxy(*key_parts)
        ttl = self.config.cache_ttl
        try:
            entry, produced = await self._flight.fetch(
                self.keys.proxy_lock(*key_parts),
                key,
                lambda: self._produce(request, target, params, key),
                ttl,
                ttl,
                self._wait,
            )
        except _NotStored as exc:
            scrubber = self.scrubber(public_base, exc.secrets)
            if _is_document(exc.answer.content_type) or exc.answer.status >= 300:
                return self._document(target, exc.answer, scrubber, public_base)
            headers = {"Content-Type": exc.answer.headers.get("Content-Type", "")}
            return web.Response(status=exc.answer.status, body=exc.answer.body, headers=headers)
        headers = {
            "ETag": entry.etag,
            "Cache-Control": f"max-age={max(0, int(entry.created + ttl - time.time()))}",
            "X-Cache": "MISS" if produced else "HIT",
        }
        if entry.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=entry.data, content_type=entry.content_type, headers=headers)

    async def _produce(
        self, request: web.Request, target: Target, params: dict[str, str], key: str
    ) -> dict[str, TileEntry]:
        upstream = self._upstream_request(request, target, params)
        # Conditional and range requests of the client are not the cache's.
        upstream.headers = {"Accept": request.headers.get("Accept", "*/*")}
        response, data, sent = await self._exchange("GET", target, upstream, _Body(), whole=True)
        response.release()
        assert data is not None
        answer = UpstreamResponse(response.status, response.headers, data)
        loop = asyncio.get_running_loop()
        if (
            answer.status != 200
            or not answer.content_type.startswith("image/")
            or not await loop.run_in_executor(None, _decodes, data)
        ):
            raise _NotStored(answer, sent)
        return {key: TileEntry(data, answer.content_type, strong_etag(data), time.time())}


def _decodes(data: bytes) -> bool:
    """Whether ``data`` is an image that decodes completely (``imaging.decode``)."""
    try:
        check_image(data, None)
    except UndecodableImage:
        return False
    return True
