"""Coalescing (single-flight): concurrent misses for one metatile cause one upstream call.

Within a process the first caller leads and the others await its future. Across processes
and replicas the leader also takes a Redis lock with an owner token and a lease; a leader of
another process that finds the lock taken waits for the tiles to appear in the cache instead
of calling the upstream. A lock that is released or expires without the tiles lets a waiter
fetch for itself. An upstream error reaches the waiters of that fetch once and is never
cached.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

from gateway.cache.codec import TileEntry
from gateway.cache.store import TileCache

Produce = Callable[[], Awaitable[dict[str, TileEntry]]]
Ready = Callable[[str], Awaitable[TileEntry | None]]


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

    def running(self, lock_key: str) -> bool:
        """Whether this process is fetching ``lock_key`` now."""
        return lock_key in self._inflight

    async def fetch(
        self, lock_key: str, key: str, ready: Ready, produce: Produce
    ) -> tuple[TileEntry, bool]:
        """The entry for ``key`` and whether this call fetched it from the upstream.

        ``ready(key)`` reads a usable (fresh) entry from the cache; ``produce()`` calls the
        upstream and stores every tile of the metatile, returning them by key. Raises what
        ``produce`` raises (to this caller and to the callers waiting on it).
        """
        while True:
            future = self._inflight.get(lock_key)
            if future is None:
                break
            tiles = await asyncio.shield(future)
            entry = tiles.get(key) or await ready(key)
            if entry is not None:
                return entry, False
            # The leader only saw another replica's tiles, not ours: look again.
        future = asyncio.get_running_loop().create_future()
        self._inflight[lock_key] = future
        try:
            tiles, produced = await self._lead(lock_key, key, ready, produce)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved: with no waiter, nothing is left to log
            raise
        else:
            future.set_result(tiles)
        finally:
            del self._inflight[lock_key]
        return tiles[key], produced

    async def _lead(
        self, lock_key: str, key: str, ready: Ready, produce: Produce
    ) -> tuple[dict[str, TileEntry], bool]:
        token = secrets.token_hex(16)
        while True:
            if await self.cache.try_lock(lock_key, token, self.lease):
                try:
                    # Another replica may have stored the tiles just before the lock was free.
                    entry = await ready(key)
                    if entry is not None:
                        return {key: entry}, False
                    return await produce(), True
                finally:
                    await self.cache.unlock(lock_key, token)
            while await self.cache.locked(lock_key):
                await asyncio.sleep(self.poll)
                entry = await ready(key)
                if entry is not None:
                    return {key: entry}, False
            entry = await ready(key)
            if entry is not None:
                return {key: entry}, False
