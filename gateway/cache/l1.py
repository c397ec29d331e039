"""L1: the in-process tier, an LRU bounded in bytes whose entries expire with their tile.

A hit here touches neither Redis nor the event loop's I/O. Built on cachetools' ``TLRUCache``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from cachetools import TLRUCache

from gateway.cache.codec import TileEntry

# Bookkeeping per entry beyond the tile bytes (key, header strings, the cache's own links),
# counted so that many tiny tiles cannot exceed the byte budget by much.
_OVERHEAD = 256


def _size(item: tuple[TileEntry, float]) -> int:
    return len(item[0].data) + _OVERHEAD


def _expiry(_key: str, item: tuple[TileEntry, float], _now: float) -> float:
    return item[1]


class MemoryTier:
    """Tile entries by key, least recently used dropped first once ``max_bytes`` is reached.

    Each entry carries its own expiry (epoch seconds); ``clock`` is the time source.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self._entries: TLRUCache[str, tuple[TileEntry, float]] = TLRUCache(
            maxsize=max_bytes, ttu=_expiry, timer=clock, getsizeof=_size
        )

    @property
    def size(self) -> int:
        """Bytes held now (tile bytes plus a fixed overhead per entry)."""
        return int(self._entries.currsize)

    def get(self, key: str) -> TileEntry | None:
        """The live entry under ``key``, or ``None``."""
        item = self._entries.get(key)
        return None if item is None else item[0]

    def put(self, key: str, entry: TileEntry, expires: float) -> None:
        """Keep ``entry`` until ``expires`` (epoch seconds); an entry larger than the whole
        budget is not kept."""
        if _size((entry, expires)) > self._entries.maxsize:
            return
        self._entries[key] = (entry, expires)

    def discard(self, keys: Iterable[str]) -> None:
        """Drop these keys if present."""
        for key in keys:
            self._entries.pop(key, None)

    def discard_where(self, predicate: Callable[[str], bool]) -> int:
        """Drop every key for which ``predicate`` is true; returns how many were dropped."""
        doomed = [key for key in list(self._entries.keys()) if predicate(key)]
        self.discard(doomed)
        return len(doomed)
