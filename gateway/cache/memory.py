"""The memory backend: tiles in this process, through aiocache's ``SimpleMemoryCache``.

aiocache carries the values and their expiry. There is one process, so there is nobody to
share work with: a lock is always granted, nothing is announced to other replicas, and the
backend never fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from aiocache import SimpleMemoryCache

from gateway.cache.codec import TileEntry, TileEntrySerializer


class MemoryBackend:
    """Tile entries in this process (see ``Backend``)."""

    kind: Literal["memory", "redis"] = "memory"
    description = "memory"
    available = True

    def __init__(self) -> None:
        self._store = SimpleMemoryCache(serializer=TileEntrySerializer(), timeout=None)
        self._counters: dict[str, int] = {}

    async def get(self, key: str) -> TileEntry | None:
        """The entry under ``key``, or ``None``."""
        entry: TileEntry | None = await self._store.get(key)
        return entry

    async def get_many(self, keys: Sequence[str]) -> list[TileEntry | None]:
        """The entries under ``keys``, ``None`` where missing."""
        return list(await self._store.multi_get(list(keys))) if keys else []

    async def set_many(
        self, items: Sequence[tuple[str, TileEntry]], lifetime: int, unlock: tuple[str, str] | None
    ) -> bool:
        """Store entries for ``lifetime`` seconds (there are no locks to release); always
        ``True``."""
        await self._store.multi_set(list(items), ttl=lifetime)
        return True

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete keys; how many there were."""
        deleted = 0
        for key in keys:
            deleted += int(await self._store.delete(key))
        return deleted

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
        await self._store.close()
