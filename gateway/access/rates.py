"""Per-client rate limits with the ``limits`` library: a moving window per client and rate,
counted in Redis (shared by every replica) or in this process's memory."""

from __future__ import annotations

import logging
import math
import time

import redis.asyncio
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

log = logging.getLogger(__name__)

# A Redis outage is logged at most this often (seconds); meanwhile requests are admitted.
_OUTAGE_LOG_INTERVAL = 60.0


def limiter_storage(
    redis_url: str | None, prefix: str, timeout: float
) -> tuple[Storage, redis.asyncio.ConnectionPool | None]:
    """The storage of the counters, and the connection pool to close at the end when the
    gateway made one: the Redis of ``redis_url`` under keys starting ``<prefix>:limits``,
    each call bounded by ``timeout`` seconds; memory without a URL. A single node
    (``redis://``, ``rediss://``) gets a pool of its own; Sentinel and Cluster URLs go to
    ``limits`` as they are (with ``async+`` before the scheme), whose clients live as long as
    the process. Raises ``limits.errors.ConfigurationError`` for a URL ``limits`` does not
    take."""
    if redis_url is None:
        return MemoryStorage(), None
    options: dict[str, float | str | bool] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    key_prefix = f"{prefix}:limits"
    if redis_url.startswith(("redis://", "rediss://")):
        pool = redis.asyncio.ConnectionPool.from_url(redis_url, **options)
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=key_prefix,
            wrap_exceptions=True,
            connection_pool=pool,  # type: ignore[arg-type]
        )
        return storage, pool
    storage = storage_from_string(
        f"async+{redis_url}",
        implementation="redispy",
        key_prefix=key_prefix,
        wrap_exceptions=True,
        **options,
    )
    return storage, None


class RateLimits:
    """The rate limits of the route groups: ``hit(group, client)`` counts a request and says
    how long the client must wait when one of its group's rates is exceeded.

    The strategy is the moving window (``limits``' ``MovingWindowRateLimiter``): a rate of
    ``100/second`` admits at most 100 requests in any second. When the storage fails (Redis
    down or slow), requests are admitted and the outage logged, as a cache outage serves
    from the upstream: the limits protect the service, they must not take it down.
    """

    def __init__(
        self,
        rates: dict[str, str],
        storage: Storage,
        pool: redis.asyncio.ConnectionPool | None = None,
    ) -> None:
        self._rates: dict[str, list[RateLimitItem]] = {
            group: parse_many(rate) for group, rate in rates.items()
        }
        self._pool = pool
        self._limiter = MovingWindowRateLimiter(storage)
        self._outage_logged = -float("inf")

    def limits(self, group: str) -> bool:
        """Whether ``group`` has a rate limit."""
        return group in self._rates

    async def hit(self, group: str, client: str) -> int | None:
        """Count one request of ``client`` (a key name, JWT subject or address, as
        ``key:...``, ``sub:...``, ``ip:...``) in ``group``: ``None`` when admitted, else the
        whole seconds until it may try again (``Retry-After``, RFC 9110 section 10.2.3)."""
        try:
            for item in self._rates.get(group, ()):
                if not await self._limiter.hit(item, group, client):
                    reset, _ = await self._limiter.get_window_stats(item, group, client)
                    return max(1, math.ceil(reset - time.time()))
        except StorageError as exc:
            now = time.monotonic()
            if now - self._outage_logged >= _OUTAGE_LOG_INTERVAL:
                # The error's type only: its text may hold the Redis URL and its password.
                log.warning(
                    "rate limits not enforced: their storage failed (%s)",
                    type(exc.storage_error).__name__,
                )
                self._outage_logged = now
        return None

    async def close(self) -> None:
        """Close the connection pool the gateway made for the counters, if any."""
        if self._pool is not None:
            await self._pool.disconnect()
