"""The tile store: an aiocache backend (in-process memory or Redis) that never fails a request.

A cache that cannot be reached is a miss: reads return ``None`` and writes are dropped, the
outage is logged once when it starts and once when it ends, and while it lasts the backend is
left alone for ``retry_interval`` seconds between probes so that requests do not each wait for
a timeout (architecture.md: "A Redis failure is a cache miss, never a 5xx").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from aiocache import RedisCache, SimpleMemoryCache
from aiocache.base import BaseCache
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

from gateway.cache.codec import TileEntry, TileEntrySerializer
from gateway.config import CacheConfig

log = logging.getLogger(__name__)

_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def tile_key(
    prefix: str,
    layer: str,
    generation: str,
    tms: str,
    z: int,
    x: int,
    y: int,
    scale: int,
    ext: str,
) -> str:
    """``<prefix>:<layer>:<generation>:<tms>:<z>:<x>:<y>:<scale>.<ext>`` (architecture.md).

    ``generation`` is the layer's fingerprint, so a change of what the upstream is asked for
    never serves the old bytes; the key holds no token and no client identity.
    """
    return f"{prefix}:{layer}:{generation}:{tms}:{z}:{x}:{y}:{scale}.{ext}"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and status pages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"


def _make_backend(config: CacheConfig) -> BaseCache:
    serializer = TileEntrySerializer()
    if config.effective_backend == "memory":
        return SimpleMemoryCache(serializer=serializer, timeout=config.timeout)
    assert config.redis_url is not None  # guaranteed by CacheConfig validation
    options = parse_url(config.redis_url)
    host = options.pop("host", "127.0.0.1")
    port = options.pop("port", 6379)
    db = options.pop("db", 0)
    password = options.pop("password", None)
    # Reads must not hang on a half-dead server; redis-py otherwise waits forever.
    options.setdefault("socket_timeout", config.timeout)
    return RedisCache(
        serializer=serializer,
        endpoint=host,
        port=port,
        db=db,
        password=password,
        create_connection_timeout=config.timeout,
        connection_pool_kwargs=options,
        timeout=config.timeout,
    )


class TileCache:
    """Tile entries by key, in the configured aiocache backend, with fail-open error handling.

    ``backend`` is ``"memory"`` or ``"redis"``; ``available`` is ``False`` while the backend is
    known to be unreachable.
    """

    def __init__(self, config: CacheConfig) -> None:
        self.backend: Literal["memory", "redis"] = config.effective_backend
        self.description = (
            "memory" if config.redis_url is None else f"redis {redact_url(config.redis_url)}"
        )
        self._store = _make_backend(config)
        self._retry_interval = config.retry_interval
        self._down_since: float | None = None
        self._next_probe = 0.0

    @property
    def available(self) -> bool:
        """Whether the last operation reached the backend."""
        return self._down_since is None

    def _skip(self) -> bool:
        return self._down_since is not None and time.monotonic() < self._next_probe

    def _failed(self, operation: str, exc: BaseException) -> None:
        now = time.monotonic()
        self._next_probe = now + self._retry_interval
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "cache %s unavailable (%s on %s: %s); serving from the upstream until it is back",
                self.description,
                type(exc).__name__,
                operation,
                exc,
            )

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.warning(
                "cache %s available again after %.1f s",
                self.description,
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    async def get(self, key: str) -> TileEntry | None:
        """The entry under ``key``; ``None`` when absent, unreadable or the cache is down."""
        if self._skip():
            return None
        try:
            entry = await self._store.get(key)
        except _FAILURES as exc:
            self._failed("get", exc)
            return None
        self._succeeded()
        return entry

    async def set(self, key: str, entry: TileEntry, ttl: int) -> None:
        """Store ``entry`` under ``key`` for ``ttl`` seconds (value and expiry in one SETEX).

        Failures are logged (once per outage) and swallowed.
        """
        if self._skip():
            return
        try:
            await self._store.set(key, entry, ttl=ttl)
        except _FAILURES as exc:
            self._failed("set", exc)
            return
        self._succeeded()

    async def ping(self) -> bool:
        """Whether the backend answers now (always ``True`` for memory)."""
        if self.backend == "memory":
            return True
        try:
            await self._store.raw("ping")
        except _FAILURES as exc:
            self._failed("ping", exc)
            return False
        self._succeeded()
        return True

    async def close(self) -> None:
        """Release the backend's connections."""
        await self._store.close()
