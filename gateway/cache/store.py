"""The tile store: an in-process LRU (L1) in front of an aiocache backend (L2: this process's
memory, or Redis shared by every replica), which never fails a request.

A backend that cannot be reached is a miss: reads return ``None`` and writes are dropped, the
outage is logged once when it starts and once when it ends, and while it lasts the backend is
left alone for ``retry_interval`` seconds between probes so that requests do not each wait for
a timeout (architecture.md: "A Redis failure is a cache miss, never a 5xx").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

from aiocache import RedisCache, SimpleMemoryCache
from aiocache.base import BaseCache
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway.cache.codec import TileEntry, TileEntrySerializer, decode_entry, encode_entry
from gateway.cache.l1 import MemoryTier
from gateway.cache.redis_client import make_client
from gateway.config import CacheConfig

log = logging.getLogger(__name__)

_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
_BATCH = 500
# Delete a lock only while it still holds our token: an expired lease may belong to another.
_UNLOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# KEYS: a tile, its metatile's lock; ARGV: our token, the lease in ms. The tile's entry if it
# is there (no lock taken), else 1 when the lock is now ours, else 0.
_GET_OR_LOCK = """
local entry = redis.call('get', KEYS[1])
if entry then return entry end
if redis.call('set', KEYS[2], ARGV[1], 'nx', 'px', ARGV[2]) then return 1 end
return 0
"""
# KEYS: the tiles, then their lock; ARGV: the expiry in s, our token, then one entry per tile.
# Every tile is stored before the lock goes, so whoever waited on the lock finds them.
_STORE_AND_UNLOCK = """
local lock = #KEYS
for i = 1, lock - 1 do redis.call('set', KEYS[i], ARGV[i + 2], 'ex', ARGV[1]) end
if redis.call('get', KEYS[lock]) == ARGV[2] then redis.call('del', KEYS[lock]) end
return lock - 1
"""
T = TypeVar("T")


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

    ``generation`` is the layer's fingerprint and purge count, so a change of what the upstream
    is asked for, or a purge, never serves the old bytes; the key holds no token and no client
    identity.
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


class TileCache:
    """Tile entries by key in L1 (bounded in bytes) and L2 (the configured aiocache backend),
    plus the few Redis primitives coalescing and purging need (locks, counters).

    ``backend`` is ``"memory"`` or ``"redis"``; ``available`` is ``False`` while the backend is
    known to be unreachable. With ``memory`` there is one process, so its locks always succeed.
    """

    def __init__(self, config: CacheConfig) -> None:
        self.backend: Literal["memory", "redis"] = config.effective_backend
        self.description = (
            "memory" if config.redis_url is None else f"redis {redact_url(config.redis_url)}"
        )
        self.l1 = MemoryTier(config.l1_max_bytes) if config.l1_max_bytes else None
        self._store: BaseCache
        if self.backend == "memory":
            self._store = SimpleMemoryCache(serializer=TileEntrySerializer(), timeout=None)
            self.redis: Any = None
            self._cluster = self._scripts = False
        else:
            assert config.redis_url is not None  # guaranteed by CacheConfig validation
            self._store = RedisCache(serializer=TileEntrySerializer(), timeout=None)
            # aiocache builds single-node clients only; Sentinel and Cluster clients speak the
            # same commands, so the backend gets the client that fits the URL.
            self._store.client = make_client(
                config.redis_url, config.timeout, config.max_connections
            )
            self.redis = self._store.client
            self._cluster = isinstance(self.redis, RedisCluster)
            # Scripts touch a tile and its lock together, which a Cluster refuses across hash
            # slots: there the same steps are separate commands.
            self._scripts = not self._cluster
            if self._scripts:
                self._get_or_lock = self.redis.register_script(_GET_OR_LOCK)
                self._store_and_unlock = self.redis.register_script(_STORE_AND_UNLOCK)
        # redis-py's Sentinel and Cluster pools fail at once when exhausted, which would read as
        # an outage and let waiters fetch for themselves; the single node's pool blocks
        # instead. The same bound is waited for here for the others.
        blocking = self.redis is None or isinstance(
            getattr(self.redis, "connection_pool", None), BlockingConnectionPool
        )
        self._permits = None if blocking else asyncio.Semaphore(config.max_connections)
        self._timeout = config.timeout
        self._retry_interval = config.retry_interval
        self._down_since: float | None = None
        self._next_probe = 0.0
        # L2 reads asked for in the current event-loop turn, sent together as one MGET.
        self._pending: dict[str, list[asyncio.Future[TileEntry | None]]] | None = None
        self._reads: set[asyncio.Task[None]] = set()

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
                "cache %s unavailable (%s on %s: %s); reads are misses and writes are dropped "
                "until it is back",
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

    async def call(self, operation: str, call: Callable[[], Any], default: T) -> T:
        """Run a backend call; a failure is logged once per outage and gives ``default``.

        Hangs are bounded by the client's socket timeout (``cache.timeout``), not by a
        ``wait_for`` per call, which would cost a task on every cache read.
        """
        if self._skip():
            return default
        try:
            if self._permits is None:
                result = await call()
            else:
                async with self._permits:
                    result = await call()
        except _FAILURES as exc:
            self._failed(operation, exc)
            return default
        self._succeeded()
        return result  # type: ignore[no-any-return]

    async def get(self, key: str, keep: int) -> TileEntry | None:
        """The entry under ``key`` from L1, else from L2 (then kept in L1 until its creation
        time plus ``keep`` seconds); ``None`` when absent, unreadable or the cache is down."""
        if self.l1 is not None:
            entry = self.l1.get(key)
            if entry is not None:
                return entry
        if self.backend == "memory":
            entry = await self.call("get", lambda: self._store.get(key), None)
        else:
            entry = await self._batched_get(key)
        if entry is not None and self.l1 is not None:
            self.l1.put(key, entry, entry.created + keep)
        return entry

    def _batched_get(self, key: str) -> asyncio.Future[TileEntry | None]:
        """The L2 entry under ``key``, read with every other key asked in this loop turn.

        The first read of a turn schedules the batch for the next turn, so a lone request waits
        for no timer and concurrent ones share one round trip and redis-py's per-command cost
        (a DataLoader); a key asked twice is read once.
        """
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = {}
            loop.call_soon(self._send_batch)
        future: asyncio.Future[TileEntry | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        return future

    def _send_batch(self) -> None:
        batch, self._pending = self._pending or {}, None
        task = asyncio.get_running_loop().create_task(self._read_batch(batch))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_batch(self, batch: dict[str, list[asyncio.Future[TileEntry | None]]]) -> None:
        keys = list(batch)
        try:
            entries = await self.call("get", lambda: self._multi_get(keys), [None] * len(keys))
        except BaseException as exc:
            for waiters in batch.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            raise
        for key, entry in zip(keys, entries, strict=True):
            for waiter in batch[key]:
                if not waiter.done():  # a cancelled request
                    waiter.set_result(entry)

    async def _multi_get(self, keys: list[str]) -> list[TileEntry | None]:
        if self._cluster:
            # aiocache's MGET would be refused across hash slots; redis-py splits it by slot.
            values = await self.redis.mget_nonatomic(keys)
            return [None if value is None else decode_entry(value) for value in values]
        return list(await self._store.multi_get(keys))

    async def get_many(self, keys: Sequence[str]) -> list[TileEntry | None]:
        """Entries under ``keys`` (L2 only, one MGET per batch); ``None`` where missing."""
        if not keys:
            return []
        if self.backend == "memory":
            return list(
                await self.call(
                    "get", lambda: self._store.multi_get(list(keys)), [None] * len(keys)
                )
            )

        async def fetch() -> list[TileEntry | None]:
            found: list[TileEntry | None] = []
            for start in range(0, len(keys), _BATCH):
                batch = keys[start : start + _BATCH]
                pipe = self.redis.pipeline(transaction=False)
                for key in batch:
                    pipe.get(key)
                values = await pipe.execute()
                found.extend(None if value is None else decode_entry(value) for value in values)
            return found

        return await self.call("get", fetch, [None] * len(keys))

    async def set_many(
        self,
        items: Sequence[tuple[str, TileEntry]],
        ttl: int,
        unlock: tuple[str, str] | None = None,
    ) -> None:
        """Store entries for ``ttl`` seconds (value and expiry of each in one SET EX) in one
        round trip, then release the lock ``unlock`` (key, token) if given and still ours: one
        script on a single node or Sentinel, a pipeline per node and an unlock on a Cluster.
        Failures are logged and swallowed (the lock then expires with its lease)."""
        if self.l1 is not None:
            for key, entry in items:
                self.l1.put(key, entry, entry.created + ttl)
        if self.backend == "memory":
            await self.call("set", lambda: self._store.multi_set(list(items), ttl=ttl), None)
            return
        if self._scripts and unlock is not None:
            lock_key, token = unlock
            await self.call(
                "set",
                lambda: self._store_and_unlock(
                    keys=[*(key for key, _ in items), lock_key],
                    args=[ttl, token, *(encode_entry(entry) for _, entry in items)],
                ),
                None,
            )
            return

        async def store() -> None:
            if len(items) == 1:
                key, entry = items[0]
                await self.redis.set(key, encode_entry(entry), ex=ttl)
                return
            pipe = self.redis.pipeline(transaction=False)
            for key, entry in items:
                pipe.set(key, encode_entry(entry), ex=ttl)
            await pipe.execute()

        await self.call("set", store, None)
        if unlock is not None:
            await self.unlock(*unlock)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Delete keys from L1 and L2 in batches of pipelined DELs; returns how many L2 had."""
        keys = list(keys)
        if self.l1 is not None:
            self.l1.discard(keys)
        if self.backend == "memory":
            deleted = 0
            for key in keys:
                deleted += int(await self.call("delete", lambda k=key: self._store.delete(k), 0))
            return deleted

        async def delete() -> int:
            deleted = 0
            for start in range(0, len(keys), _BATCH):
                pipe = self.redis.pipeline(transaction=False)
                for key in keys[start : start + _BATCH]:
                    pipe.delete(key)
                deleted += sum(await pipe.execute())
            return deleted

        return await self.call("delete", delete, 0)

    async def get_or_lock(
        self, key: str, keep: int, lock_key: str, token: str, lease: float
    ) -> TileEntry | bool:
        """The entry under ``key`` if the cache has one (kept in L1 as ``get`` does; no lock
        taken then), else whether the lock ``lock_key`` is now ours for ``lease`` seconds
        (see ``try_lock``): one atomic script on a single node or Sentinel, else lock then
        read (releasing the lock when the entry is there)."""
        if not self._scripts:
            if not await self.try_lock(lock_key, token, lease):
                return False
            entry = await self.get(key, keep)
            if entry is None:
                return True
            await self.unlock(lock_key, token)
            return entry
        if self.l1 is not None:
            entry = self.l1.get(key)
            if entry is not None:
                return entry
        found = await self.call(
            "lock",
            lambda: self._get_or_lock(keys=[key, lock_key], args=[token, int(lease * 1000)]),
            1,
        )
        if not isinstance(found, bytes):
            return bool(found)
        entry = decode_entry(found)
        if entry is None:  # a value this version cannot read: take the lock and replace it
            return await self.try_lock(lock_key, token, lease)
        if self.l1 is not None:
            self.l1.put(key, entry, entry.created + keep)
        return entry

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Take the lock ``key`` for ``lease`` seconds if nobody holds it (SET NX PX).

        True when taken, and also when the backend is this process's memory or unreachable:
        then there is nobody to share the work with, and no request may wait on a dead Redis.
        """
        if self.redis is None:
            return True
        taken = await self.call(
            "lock", lambda: self.redis.set(key, token, nx=True, px=int(lease * 1000)), True
        )
        return bool(taken)

    async def locked(self, key: str) -> bool:
        """Whether someone holds the lock ``key`` now (False when unknown)."""
        if self.redis is None:
            return False
        return bool(await self.call("lock", lambda: self.redis.exists(key), False))

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock ``key`` if ``token`` still owns it (compare-and-delete, atomic)."""
        if self.redis is None:
            return
        await self.call("unlock", lambda: self.redis.eval(_UNLOCK, 1, key, token), 0)

    async def increment(self, key: str) -> int | None:
        """INCR a counter (purge generations); ``None`` when the backend cannot be reached."""
        if self.redis is None:
            return None
        value = await self.call("incr", lambda: self.redis.incr(key), None)
        return None if value is None else int(value)

    async def counters(self, keys: Sequence[str]) -> list[int] | None:
        """Values of counters (0 when unset); ``None`` when the backend cannot be reached."""
        if self.redis is None or not keys:
            return [0] * len(keys) if self.redis is None else []

        async def read() -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            return [int(value or 0) for value in await pipe.execute()]

        return await self.call("get", read, None)

    async def ping(self) -> bool:
        """Whether the backend answers now (always ``True`` for memory)."""
        if self.redis is None:
            return True
        try:
            await asyncio.wait_for(self.redis.ping(), self._timeout)
        except _FAILURES as exc:
            self._failed("ping", exc)
            return False
        self._succeeded()
        return True

    async def close(self) -> None:
        """Release the backend's connections (after the reads in flight)."""
        if self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
        else:
            await self._store.close()
