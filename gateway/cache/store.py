"""The tile store: an in-process LRU (L1) in front of a backend (this process's memory, or
Redis shared by every replica), which never fails a request.

A backend that cannot be reached is a miss: reads return ``None`` and writes are dropped (see
``cache.backend.Guard``). Locks and counters pass through to the backend; entries read from it
are kept in L1 until their storage lifetime ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.cache.backend import Backend
from gateway.cache.codec import TileEntry
from gateway.cache.l1 import MemoryTier
from gateway.cache.memory import MemoryBackend
from gateway.cache.redis import RedisBackend
from gateway.config import CacheConfig


def open_backend(config: CacheConfig) -> Backend:
    """The backend ``config`` names: Redis at ``redis_url``, else this process's memory."""
    if config.effective_backend == "memory":
        return MemoryBackend(config.memory_max_bytes)
    assert config.redis_url is not None  # guaranteed by CacheConfig validation
    return RedisBackend(
        config.redis_url, config.timeout, config.max_connections, config.retry_interval
    )


class TileCache:
    """Tile entries by key in L1 (bounded in bytes) and the configured backend, plus the locks
    and counters coalescing and purging need.

    ``backend`` is ``"memory"`` or ``"redis"``; ``shared`` says whether other processes see the
    same entries; ``available`` is ``False`` while the backend is known to be unreachable;
    ``retry_interval`` is how long, in seconds, an unreachable backend is left alone
    (``cache.retry_interval``).
    """

    def __init__(self, config: CacheConfig) -> None:
        self.store: Backend = open_backend(config)
        self.backend = self.store.kind
        self.shared = self.store.kind == "redis"
        self.description = self.store.description
        self.retry_interval = config.retry_interval
        self.l1 = MemoryTier(config.l1_max_bytes) if config.l1_max_bytes else None

    @property
    def available(self) -> bool:
        """Whether the last operation reached the backend."""
        return self.store.available

    async def get(self, key: str, lifetime: int) -> TileEntry | None:
        """The entry under ``key`` from L1, else from the backend (then kept in L1 until its
        creation time plus ``lifetime`` seconds); ``None`` when absent, unreadable or the cache is
        down."""
        if self.l1 is not None:
            entry = self.l1.get(key)
            if entry is not None:
                return entry
        entry = await self.store.get(key)
        if entry is not None and self.l1 is not None:
            self.l1.put(key, entry, entry.created + lifetime)
        return entry

    async def get_many(self, keys: Sequence[str]) -> list[TileEntry | None]:
        """Entries under ``keys`` from the backend only (L1 is not consulted)."""
        return await self.store.get_many(keys)

    async def set_many(
        self,
        items: Sequence[tuple[str, TileEntry]],
        lifetime: int,
        unlock: tuple[str, str] | None = None,
    ) -> bool:
        """Store entries for ``lifetime`` seconds here and in the backend, then release the lock
        ``unlock`` (key, token) if given and still ours. Whether the backend was reached
        (``False``: the entries are in L1 only and the lock, if any, is still held)."""
        if self.l1 is not None:
            for key, entry in items:
                self.l1.put(key, entry, entry.created + lifetime)
        return await self.store.set_many(items, lifetime, unlock)

    async def set_shared(
        self,
        items: Sequence[tuple[str, TileEntry]],
        lifetime: int,
        unlock: tuple[str, str] | None = None,
    ) -> bool:
        """``set_many`` in the backend only: a retry of one that L1 already took."""
        return await self.store.set_many(items, lifetime, unlock)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Delete keys from L1 and the backend; how many the backend had."""
        keys = list(keys)
        if self.l1 is not None:
            self.l1.discard(keys)
        return await self.store.delete_many(keys)

    async def get_or_lock(
        self, key: str, lifetime: int, lock_key: str, token: str, lease: float
    ) -> TileEntry | bool:
        """The entry under ``key`` if the cache has one (kept in L1 as ``get`` does; no lock
        taken then), else whether the lock ``lock_key`` is now ours for ``lease`` seconds."""
        if self.l1 is not None:
            entry = self.l1.get(key)
            if entry is not None:
                return entry
        found = await self.store.get_or_lock(key, lock_key, token, lease)
        if isinstance(found, TileEntry) and self.l1 is not None:
            self.l1.put(key, found, found.created + lifetime)
        return found

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Take the lock ``key`` for ``lease`` seconds if nobody holds it; also true when the
        backend is this process's memory or unreachable (nobody to share the work with, and no
        request may wait on a dead Redis)."""
        return await self.store.try_lock(key, token, lease)

    async def locked(self, key: str) -> bool:
        """Whether someone holds the lock ``key`` now (False when unknown)."""
        return await self.store.locked(key)

    async def unlock(self, key: str, token: str) -> bool:
        """Release the lock ``key`` if ``token`` still owns it; whether the backend was
        reached."""
        return await self.store.unlock(key, token)

    async def ping(self) -> bool:
        """Whether the backend answers now (always ``True`` for memory)."""
        return await self.store.ping()

    async def close(self) -> None:
        """Release the backend's connections (after the reads in flight)."""
        await self.store.close()
