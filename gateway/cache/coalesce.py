"""Coalescing (single-flight): concurrent misses for one metatile cause one upstream call.

Within a process the first caller leads and the others await its future. Across processes
and replicas the leader also takes a Redis lock with an owner token and a lease; a leader of
another process that finds the lock taken waits for the tiles to appear in the cache instead
of calling the upstream. A lock that is released or expires without the tiles lets a waiter
fetch for itself. An upstream error reaches the waiters of that fetch once and is never
cached.

On Redis a miss costs two round trips around the upstream call: "the tile, else the lock"
before it and "store the tiles, then release the lock" after it, each one script
(``TileCache.get_or_lock`` and ``TileCache.set_many``).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable

from gateway.cache.codec import TileEntry
from gateway.cache.store import TileCache

Produce = Callable[[], Awaitable[dict[str, TileEntry]]]


class SingleFlight:
    """One upstream fetch per lock key at a time, across every process sharing ``cache``.

    ``lease`` is how long, in seconds, a lock is held at most; ``poll`` how often, in seconds,
    a waiter on another process's fetch looks at the cache.
    """

    def __init__(self, cache: TileCache, lease: float, poll: float = 0.02) -> None:
        self.cache = cache
        self.lease = lease
        self.poll = poll
        self._inflight: dict[str, asyncio.Future[dict[str, TileEntry]]] = {}
        # Lock tokens: unique across processes by the random part, within one by the count.
        self._process = secrets.token_hex(8)
        self._count = itertools.count()

    def running(self, lock_key: str) -> bool:
        """Whether this process is fetching ``lock_key`` now."""
        return lock_key in self._inflight

    async def fetch(
        self, lock_key: str, key: str, produce: Produce, freshness: float, lifetime: int
    ) -> tuple[TileEntry, bool]:
        """The entry for ``key`` and whether this call fetched it from the upstream.

        An entry younger than ``lifetime`` seconds in the cache is used as it is; else
        ``produce()`` calls the upstream and returns every tile of the metatile by key, and
        they are stored for ``lifetime`` seconds. Raises what ``produce`` raises (to this caller
        and to the callers waiting on it); nothing is stored then.
        """
        while True:
            future = self._inflight.get(lock_key)
            if future is None:
                break
            tiles = await asyncio.shield(future)
            entry = tiles.get(key) or await self._ready(key, freshness, lifetime)
            if entry is not None:
                return entry, False
            # The leader only saw another replica's tiles, not ours: look again.
        future = asyncio.get_running_loop().create_future()
        self._inflight[lock_key] = future
        try:
            tiles, produced = await self._lead(lock_key, key, produce, freshness, lifetime)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved: with no waiter, nothing is left to log
            raise
        else:
            future.set_result(tiles)
        finally:
            del self._inflight[lock_key]
        return tiles[key], produced

    async def _ready(self, key: str, freshness: float, lifetime: int) -> TileEntry | None:
        entry = await self.cache.get(key, lifetime)
        return entry if entry is not None and _fresh(entry, freshness) else None

    async def _lead(
        self, lock_key: str, key: str, produce: Produce, freshness: float, lifetime: int
    ) -> tuple[dict[str, TileEntry], bool]:
        token = f"{self._process}.{next(self._count)}"
        found = await self.cache.get_or_lock(key, lifetime, lock_key, token, self.lease)
        while True:
            if isinstance(found, TileEntry):
                if _fresh(found, freshness):
                    return {key: found}, False
                # A stale copy (kept for stale serving): the lock alone decides who refreshes.
                found = await self.cache.try_lock(lock_key, token, self.lease)
            if found:
                try:
                    tiles = await produce()
                except BaseException:
                    await self.cache.unlock(lock_key, token)
                    raise
                await self.cache.set_many(list(tiles.items()), lifetime, unlock=(lock_key, token))
                return tiles, True
            # Another process fetches: wait for its tiles, or for its lock to go.
            while await self.cache.locked(lock_key):
                await asyncio.sleep(self.poll)
                entry = await self._ready(key, freshness, lifetime)
                if entry is not None:
                    return {key: entry}, False
            found = await self.cache.get_or_lock(key, lifetime, lock_key, token, self.lease)


def _fresh(entry: TileEntry, freshness: float) -> bool:
    return time.time() - entry.created < freshness
