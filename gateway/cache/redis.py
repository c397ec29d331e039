"""The Redis backend: tiles shared by every replica, on a single node, Sentinel or Cluster.

What goes through aiocache and what goes straight to redis-py: reads of one or many tiles go
through aiocache's ``RedisCache`` (its MGET with the entry serializer) on a single node or
Sentinel. Everything aiocache has no call for goes to the redis-py client directly: the two
Lua scripts of a miss ("the tile, else the lock" and "store the tiles, then release the
lock"), pipelines (many SET EX or DEL in one round trip), locks, purge counters and the purge
log, and on a Cluster every call, because aiocache's MGET and MSET would be refused across
hash slots (redis-py splits them by slot).

Reads asked in one event-loop turn go to Redis together as one MGET (a DataLoader), so
concurrent hits share a round trip and redis-py's per-command cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from aiocache import RedisCache
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.cluster import RedisCluster

from gateway.cache.backend import FAILURES, Guard
from gateway.cache.codec import TileEntry, TileEntrySerializer, decode_entry, encode_entry
from gateway.cache.redis_client import make_client, redact_url

T = TypeVar("T")
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


class RedisBackend:
    """Tile entries, locks and counters in Redis (see ``Backend`` and the module docstring).

    ``url`` is a ``redis://``, ``rediss://``, ``redis+sentinel://`` or ``redis+cluster://``
    URL; ``timeout`` bounds each call in seconds; ``max_connections`` bounds the process's
    connections (per node on a Cluster): a burst beyond it waits for one instead of failing.
    ``retry_interval`` is how long, in seconds, an unreachable Redis is left alone.
    """

    kind: Literal["memory", "redis"] = "redis"

    def __init__(
        self, url: str, timeout: float, max_connections: int, retry_interval: float
    ) -> None:
        self.description = f"redis {redact_url(url)}"
        self.guard = Guard(self.description, retry_interval, self._drop_idle_connections)
        # aiocache builds single-node clients only; Sentinel and Cluster clients speak the
        # same commands, so its RedisCache gets the client that fits the URL.
        self._store = RedisCache(serializer=TileEntrySerializer(), timeout=None)
        self.redis: Any = make_client(url, timeout, max_connections)
        self._store.client = self.redis
        self._timeout = timeout
        self._cluster = isinstance(self.redis, RedisCluster)
        # Scripts touch a tile and its lock together, which a Cluster refuses across hash
        # slots: there the same steps are separate commands.
        if not self._cluster:
            self._get_or_lock = self.redis.register_script(_GET_OR_LOCK)
            self._store_and_unlock = self.redis.register_script(_STORE_AND_UNLOCK)
        # redis-py's Sentinel and Cluster pools fail at once when exhausted, which would read as
        # an outage and let waiters fetch for themselves; the single node's pool blocks
        # instead. The same bound is waited for here for the others.
        blocking = isinstance(getattr(self.redis, "connection_pool", None), BlockingConnectionPool)
        self._permits = None if blocking else asyncio.Semaphore(max_connections)
        # Reads asked for in the current event-loop turn, sent together as one MGET.
        self._pending: dict[str, list[asyncio.Future[TileEntry | None]]] | None = None
        self._reads: set[asyncio.Task[None]] = set()

    @property
    def available(self) -> bool:
        """Whether the last call reached Redis."""
        return self.guard.available

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        """``call()`` through the guard, holding a connection permit where the pool needs one."""
        if self._permits is None:
            return await self.guard.call(operation, call, default)
        permits = self._permits

        async def limited() -> T:
            async with permits:
                return await call()

        return await self.guard.call(operation, limited, default)

    def get(self, key: str) -> asyncio.Future[TileEntry | None]:
        """The entry under ``key``, read with every other key asked in this loop turn.

        The first read of a turn schedules the batch for the next turn, so a lone request waits
        for no timer and concurrent ones share one round trip (a DataLoader); a key asked twice
        is read once.
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
            entries = await self._call("get", lambda: self._multi_get(keys), [None] * len(keys))
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
            values = await self.redis.mget_nonatomic(keys)
            return [None if value is None else decode_entry(value) for value in values]
        return list(await self._store.multi_get(keys))

    async def get_many(self, keys: Sequence[str]) -> list[TileEntry | None]:
        """Entries under ``keys``, pipelined GETs in batches; ``None`` where missing."""
        if not keys:
            return []

        async def fetch() -> list[TileEntry | None]:
            found: list[TileEntry | None] = []
            for start in range(0, len(keys), _BATCH):
                pipe = self.redis.pipeline(transaction=False)
                for key in keys[start : start + _BATCH]:
                    pipe.get(key)
                values = await pipe.execute()
                found.extend(None if value is None else decode_entry(value) for value in values)
            return found

        return await self._call("get", fetch, [None] * len(keys))

    async def set_many(
        self, items: Sequence[tuple[str, TileEntry]], lifetime: int, unlock: tuple[str, str] | None
    ) -> bool:
        """Store entries for ``lifetime`` seconds (value and expiry of each in one SET EX) in one
        round trip, then release the lock ``unlock`` (key, token) if still ours: one script on
        a single node or Sentinel, a pipeline per node and an unlock on a Cluster. Whether
        Redis was reached: failures are logged by the guard and swallowed (the caller may try
        again, see ``cache.coalesce``)."""
        if not self._cluster and unlock is not None:
            lock_key, token = unlock

            async def store_and_unlock() -> bool:
                await self._store_and_unlock(
                    keys=[*(key for key, _ in items), lock_key],
                    args=[lifetime, token, *(encode_entry(entry) for _, entry in items)],
                )
                return True

            return await self._call("set", store_and_unlock, False)

        async def store() -> bool:
            if len(items) == 1:
                key, entry = items[0]
                await self.redis.set(key, encode_entry(entry), ex=lifetime)
            elif items:
                pipe = self.redis.pipeline(transaction=False)
                for key, entry in items:
                    pipe.set(key, encode_entry(entry), ex=lifetime)
                await pipe.execute()
            return True

        stored = await self._call("set", store, False)
        if unlock is None:
            return stored
        return await self.unlock(*unlock) and stored

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete keys in batches of pipelined DELs; how many there were."""

        async def delete() -> int:
            deleted = 0
            for start in range(0, len(keys), _BATCH):
                pipe = self.redis.pipeline(transaction=False)
                for key in keys[start : start + _BATCH]:
                    pipe.delete(key)
                deleted += sum(await pipe.execute())
            return deleted

        return await self._call("delete", delete, 0)

    async def get_or_lock(
        self, key: str, lock_key: str, token: str, lease: float
    ) -> TileEntry | bool:
        """The entry under ``key`` if there is one (no lock taken), else whether the lock
        ``lock_key`` is now ours for ``lease`` seconds: one atomic script on a single node or
        Sentinel; on a Cluster the lock, then a read (the lock released when the entry is
        there). Unreachable: ``True``, no request waits on a dead Redis."""
        if self._cluster:
            if not await self.try_lock(lock_key, token, lease):
                return False
            entry = await self.get(key)
            if entry is None:
                return True
            await self.unlock(lock_key, token)
            return entry
        found = await self._call(
            "lock",
            lambda: self._get_or_lock(keys=[key, lock_key], args=[token, int(lease * 1000)]),
            1,
        )
        if not isinstance(found, bytes):
            return bool(found)
        entry = decode_entry(found)
        if entry is None:  # a value this version cannot read: take the lock and replace it
            return await self.try_lock(lock_key, token, lease)
        return entry

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Take the lock ``key`` for ``lease`` seconds if nobody holds it (SET NX PX); also
        ``True`` when Redis cannot be reached: no request may wait on a dead Redis."""
        taken = await self._call(
            "lock", lambda: self.redis.set(key, token, nx=True, px=int(lease * 1000)), True
        )
        return bool(taken)

    async def locked(self, key: str) -> bool:
        """Whether someone holds the lock ``key`` now (False when unknown)."""
        return bool(await self._call("lock", lambda: self.redis.exists(key), False))

    async def unlock(self, key: str, token: str) -> bool:
        """Release the lock ``key`` if ``token`` still owns it (compare-and-delete, atomic);
        whether Redis was reached."""

        async def release() -> bool:
            await self.redis.eval(_UNLOCK, 1, key, token)
            return True

        return await self._call("unlock", release, False)

    async def increment(self, key: str) -> int | None:
        """INCR a counter; ``None`` when Redis cannot be reached."""
        value = await self._call("incr", lambda: self.redis.incr(key), None)
        return None if value is None else int(value)

    async def counters(self, keys: Sequence[str]) -> list[int] | None:
        """Values of counters (0 when unset); ``None`` when Redis cannot be reached."""
        if not keys:
            return []

        async def read() -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            return [int(value or 0) for value in await pipe.execute()]

        return await self._call("get", read, None)

    async def announce(self, log_key: str, event: str | None, seq_key: str, length: int) -> None:
        """LPUSH and LTRIM the event (if any), then INCR the count: a replica that sees the
        new count finds the event."""

        async def write() -> None:
            if event is not None:
                pipe = self.redis.pipeline(transaction=False)
                pipe.lpush(log_key, event)
                pipe.ltrim(log_key, 0, length - 1)
                await pipe.execute()
            await self.redis.incr(seq_key)

        await self._call("purge", write, None)

    async def events(self, log_key: str, count: int) -> list[str]:
        """The newest ``count`` events of ``log_key`` (LRANGE); none when unreachable."""
        raw: list[bytes] = await self._call(
            "purge", lambda: self.redis.lrange(log_key, 0, count - 1), []
        )
        return [event.decode() if isinstance(event, bytes) else event for event in raw]

    async def ping(self) -> bool:
        """Whether Redis answers a PING within the timeout now."""
        try:
            await asyncio.wait_for(self.redis.ping(), self._timeout)
        except FAILURES as exc:
            await self.guard.failed("ping", exc)
            return False
        self.guard.succeeded()
        return True

    async def _drop_idle_connections(self) -> None:
        """Close the pool's idle connections (single node and Sentinel; redis-py's Cluster
        client marks a node's free connections for reconnection itself after a connection
        error): when an outage starts, they may lead to a server that is gone without their
        knowing (a restart behind a NAT or load balancer), and each would fail a later call
        after a timeout."""
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None:
            return
        # redis-py drops a connection's socket before closing it, failing or not.
        with contextlib.suppress(*FAILURES):
            await pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        """Release the connections (after the reads in flight)."""
        if self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)
        await self.redis.aclose()
