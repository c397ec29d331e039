"""JWT bearer tokens verified against a JWKS (RFC 7517, RFC 7519) with PyJWT.

The key set is fetched with aiohttp (PyJWT's own ``PyJWKClient`` blocks the event loop), kept
``jwt.jwks_cache`` seconds, and fetched again early when a token names a key id the set does
not hold: a new key appears without a restart, and a key the issuer removed stops verifying at
the next fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import jwt

from gateway.config import JwtConfig

log = logging.getLogger(__name__)


class TokenRejected(Exception):
    """A token that does not verify; the message says why, never the token."""


class IssuerUnavailable(Exception):
    """The issuer's key set cannot be fetched and none is held."""


class JwtVerifier:
    """Verifies tokens for ``config``; ``start``/``close`` open and close its HTTP session."""

    def __init__(self, config: JwtConfig, timeout: float) -> None:
        self._config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        # The JWKs of the held set by key id, and each made into a key per algorithm used.
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._made: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._fetched = -float("inf")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the session the key set is fetched with (in the app's start-up)."""
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token``. Raises ``TokenRejected`` for a token that is malformed,
        names an algorithm outside ``algorithms`` (``none`` never is one), a key the set does
        not hold, or fails its signature, ``exp``/``nbf`` (with ``leeway``), ``iss`` or
        ``aud`` (RFC 7519 section 4.1); ``IssuerUnavailable`` when no key set can be had."""
        config = self._config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in config.algorithms:
            raise TokenRejected(f"the token's algorithm {algorithm!r} is not accepted")
        key = await self._key(header.get("kid"), algorithm)
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            # PyJWT's messages name the failed check (expired, audience, issuer), not the token.
            raise TokenRejected(f"the token is not valid: {exc}") from None

    async def _key(self, kid: Any, algorithm: str) -> jwt.PyJWK:
        """The key of ``kid`` (a lone key when the token names none) for ``algorithm``."""
        if not isinstance(kid, str | None):
            raise TokenRejected("the token's key id is not a string")
        now = time.monotonic()
        stale = now - self._fetched >= self._config.jwks_cache
        if stale or (kid not in self._keys and self._may_refetch(now)):
            await self._refresh()
        if kid is None and len(self._keys) == 1:
            kid = next(iter(self._keys))
        jwk = self._keys.get(kid)
        if jwk is None:
            if not self._keys:
                raise IssuerUnavailable("the token issuer's key set cannot be fetched")
            raise TokenRejected("the token names a key the issuer does not publish")
        # A key declares its one algorithm (RFC 7517 section 4.4); without, its type decides.
        if jwk.get("alg", algorithm) != algorithm or jwk.get("use", "sig") != "sig":
            raise TokenRejected("the token's algorithm does not match its key")
        made = self._made.get((kid, algorithm))
        if made is None:
            try:
                made = jwt.PyJWK(jwk, algorithm)
            except jwt.PyJWTError:
                raise TokenRejected("the token's algorithm does not match its key") from None
            self._made[(kid, algorithm)] = made
        return made

    def _may_refetch(self, now: float) -> bool:
        return now - self._fetched >= self._config.jwks_refetch_interval

    async def _refresh(self) -> None:
        """Fetch the key set, once for all callers waiting meanwhile; on failure the held set
        stays (logged) and the next try waits ``jwks_refetch_interval``."""
        started = time.monotonic()
        async with self._lock:
            if self._fetched >= started:
                return
            assert self._session is not None, "JwtVerifier.start was not called"
            url = str(self._config.jwks_url)
            try:
                async with self._session.get(url) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
                keys = document["keys"]
                held = {k.get("kid"): k for k in keys if isinstance(k, dict) and "kty" in k}
            except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, KeyError) as exc:
                log.warning("cannot fetch the JWKS at %s: %s", url, type(exc).__name__)
                self._fetched = time.monotonic()
                return
            self._keys, self._made = held, {}
            self._fetched = time.monotonic()
