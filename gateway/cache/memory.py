"""The memory backend: tiles in this process, in an LRU bounded in bytes (``l1.MemoryTier``).

The tier carries the entries and their expiry; past ``max_bytes`` the least recently used go
first, so a stream of distinct tiles cannot grow the process without bound. There is one
process, so there is nobody to share work with: a lock is always granted, nothing is announced
to other replicas, and the backend never fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

from gateway.cache.codec import TileEntry
from gateway.cache.l1 import MemoryTier


class MemoryBackend:
    """Tile entries in this process (see ``Backend``), at most ``max_bytes`` of them (tile
    bytes plus a fixed overhead per entry, as ``MemoryTier`` counts); ``clock`` gives epoch
    seconds."""

    kind: Literal["memory", "redis"] = "memory"
    description = "memory"
    available = True

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self._store = MemoryTier(max_bytes, clock)
        self._clock = clock
        self._counters: dict[str, int] = {}

    @property
    def size(self) -> int:
        """Bytes held now, as counted against ``max_bytes``."""
        return self._store.size

    async def get(self, key: str) -> TileEntry | None:
        """The entry under ``key``, or ``None``."""
        return self._store.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[TileEntry | None]:
        """The entries under ``keys``, ``None`` where missing."""
        return [self._store.get(key) for key in keys]

    async def set_many(
        self, items: Sequence[tuple[str, TileEntry]], lifetime: int, unlock: tuple[str, str] | None
    ) -> bool:
        """Store entries for ``lifetime`` seconds (there are no locks to release); always
        ``True``."""
        expires = self._clock() + lifetime
        for key, entry in items:
            self._store.put(key, entry, expires)
        return True

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete keys; how many there were."""
        return self._store.discard(keys)

    async def get_or_lock(
        self, key: str, lock_key: str, token: str, lease: float
    ) -> TileEntry | bool:
        """The entry under ``key``, else ``True``: the lock is always this process's."""
        entry = await self.get(key)
        return True if entry is None else entry

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Always granted: in-process coalescing already keeps one fetch per metatile."""
        return True

    async def locked(self, key: str) -> bool:
        """Never: no other process takes these locks."""
        return False

    async def unlock(self, key: str, token: str) -> bool:
        """Nothing to release: ``True``."""
        return True

    async def increment(self, key: str) -> int | None:
        """Add one to a counter of this process."""
        value = self._counters[key] = self._counters.get(key, 0) + 1
        return value

    async def counters(self, keys: Sequence[str]) -> list[int] | None:
        """Values of this process's counters (0 when unset)."""
        return [self._counters.get(key, 0) for key in keys]

    async def announce(self, log_key: str, event: str | None, seq_key: str, length: int) -> None:
        """Nothing to do: no other replica shares this memory."""

    async def events(self, log_key: str, count: int) -> list[str]:
        """No events: nothing is announced."""
        return []

    async def ping(self) -> bool:
        """Always there."""
        return True

    async def close(self) -> None:
        """Drop the entries."""
        self._store.clear()
