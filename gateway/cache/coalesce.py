"""Coalescing (single-flight): concurrent misses for one metatile cause one upstream call.

Within a process the first caller leads and the others await its future. Across processes
and replicas the leader also takes a Redis lock with an owner token and a lease; a leader of
another process that finds the lock taken waits for the tiles to appear in the cache instead
of calling the upstream. A lock that is released or expires without the tiles lets a waiter
fetch for itself, and so does a wait longer than the upstream timeout: a live leader's call
ends within it, so a lock still held then belongs to a dead leader or to one whose release
could not reach Redis. An upstream error reaches the waiters of that fetch once and is never
cached.

On Redis a miss costs two round trips around the upstream call: "the tile, else the lock"
before it and "store the tiles, then release the lock" after it, each one script
(``TileCache.get_or_lock`` and ``TileCache.set_many``). When the second one cannot reach
Redis (an outage, or the cache's guard leaving Redis alone after a failed call), the leader
tries it again in the background every ``cache.retry_interval`` seconds until it gets
through or the lock's lease is over: the lock goes as soon as Redis is back, and the other
processes get the tiles, instead of the lock outliving the fetch by its whole lease.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from gateway import metrics
from gateway.cache.codec import TileEntry
from gateway.cache.store import TileCache

log = logging.getLogger(__name__)

Produce = Callable[[], Awaitable[dict[str, TileEntry]]]


@dataclass(frozen=True, slots=True)
class _Ask:
    """One ``SingleFlight.fetch``: its arguments, as its leader's loop reads them."""

    lock_key: str
    key: str
    produce: Produce
    freshness: float
    lifetime: int
    wait: float
    layer: str | None


class SingleFlight:
    """One upstream fetch per lock key at a time, across every process sharing ``cache``.

    ``lease`` is how long, in seconds, a lock is held at most (``cache.lock_lease``: it only
    matters when its holder dies, see the module docstring); ``poll`` how often, in seconds,
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
        # Stores and lock releases that could not reach the cache, retried in the background.
        self._retries: set[asyncio.Task[None]] = set()

    def running(self, lock_key: str) -> bool:
        """Whether this process is fetching ``lock_key`` now."""
        return lock_key in self._inflight

    async def fetch(
        self,
        lock_key: str,
        key: str,
        produce: Produce,
        freshness: float,
        lifetime: int,
        wait: float,
        layer: str | None = None,
    ) -> tuple[TileEntry, bool]:
        """The entry for ``key`` and whether this call fetched it from the upstream.

        An entry younger than ``lifetime`` seconds in the cache is used as it is; else
        ``produce()`` calls the upstream and returns every tile of the metatile by key (``key``
        among them), and they are stored for ``lifetime`` seconds. Another process's fetch of
        ``lock_key`` is waited for at most ``wait`` seconds (the upstream timeout), then this
        call fetches for itself. Raises what ``produce`` raises (to this caller and to the
        callers waiting on it); nothing is stored then. While this call waits for another's
        fetch it counts among the coalesced waiters of tile layer ``layer``
        (``metrics.waiting``; not counted without one).
        """
        while True:
            future = self._inflight.get(lock_key)
            if future is None:
                break
            with _waiting(layer):
                tiles = await asyncio.shield(future)
            entry = tiles.get(key) or await self._ready(key, freshness, lifetime)
            if entry is not None:
                return entry, False
            # The leader only saw another replica's tiles, not ours: look again.
        future = asyncio.get_running_loop().create_future()
        self._inflight[lock_key] = future
        try:
            tiles, produced = await self._lead(
                _Ask(lock_key, key, produce, freshness, lifetime, wait, layer)
            )
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

    async def _lead(self, ask: _Ask) -> tuple[dict[str, TileEntry], bool]:
        lock_key, key, produce, lifetime = ask.lock_key, ask.key, ask.produce, ask.lifetime
        loop = asyncio.get_running_loop()
        token = f"{self._process}.{next(self._count)}"
        give_up = loop.time() + ask.wait
        taken = loop.time()
        found = await self.cache.get_or_lock(key, lifetime, lock_key, token, self.lease)
        while True:
            if isinstance(found, TileEntry):
                if _fresh(found, ask.freshness):
                    return {key: found}, False
                # A stale copy (kept for stale serving): the lock alone decides who refreshes.
                taken = loop.time()
                found = await self.cache.try_lock(lock_key, token, self.lease)
            if found:
                return await self._produce(produce, lifetime, (lock_key, token), taken), True
            # Another process fetches: wait for its tiles, or for its lock to go.
            gave_up = False
            with _waiting(ask.layer):
                while await self.cache.locked(lock_key):
                    if loop.time() >= give_up:
                        gave_up = True
                        break
                    await asyncio.sleep(self.poll)
                    entry = await self._ready(key, ask.freshness, lifetime)
                    if entry is not None:
                        return {key: entry}, False
            if gave_up:
                log.info("gave up waiting %g s for lock %s: fetching", ask.wait, lock_key)
                return await self._produce(produce, lifetime, None, taken), True
            taken = loop.time()
            found = await self.cache.get_or_lock(key, lifetime, lock_key, token, self.lease)

    async def _produce(
        self, produce: Produce, lifetime: int, lock: tuple[str, str] | None, taken: float
    ) -> dict[str, TileEntry]:
        """``produce()``, its tiles stored and ``lock`` (key, token; taken at loop time
        ``taken``) released; what did not reach the cache is retried in the background."""
        try:
            tiles = await produce()
        except BaseException:
            if lock is not None and not await self.cache.unlock(*lock):
                self._retry(self._store_later([], lifetime, lock, taken + self.lease))
            raise
        items = list(tiles.items())
        if not await self.cache.set_many(items, lifetime, unlock=lock) and lock is not None:
            self._retry(self._store_later(items, lifetime, lock, taken + self.lease))
        return tiles

    def _retry(self, store: Coroutine[None, None, None]) -> None:
        """Run ``store`` (a ``_store_later``) in the background until it ends or ``close``."""
        task = asyncio.create_task(store)
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _store_later(
        self,
        items: list[tuple[str, TileEntry]],
        lifetime: int,
        lock: tuple[str, str],
        until: float,
    ) -> None:
        """Store ``items`` in the shared cache and release ``lock`` once the cache is reached,
        trying every ``retry_interval`` seconds until loop time ``until`` (the lease's end,
        after which the lock is gone anyway)."""
        loop = asyncio.get_running_loop()
        # A retry interval of 0 (try on every call) would make this loop spin.
        interval = max(self.cache.retry_interval, self.poll)
        while loop.time() + interval < until:
            await asyncio.sleep(interval)
            if await self.cache.set_shared(items, lifetime, unlock=lock):
                return
        log.info("lock %s could not be released: it expires with its lease", lock[0])

    async def close(self) -> None:
        """Stop retrying stores and lock releases (at shutdown: the locks expire with their
        leases)."""
        for task in self._retries:
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)


def _waiting(layer: str | None) -> AbstractContextManager[None]:
    return nullcontext() if layer is None else metrics.waiting(layer)


def _fresh(entry: TileEntry, freshness: float) -> bool:
    return time.time() - entry.created < freshness
