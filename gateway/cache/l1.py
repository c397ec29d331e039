"""L1: the in-process tier, an LRU bounded in bytes whose entries expire with their tile.

A hit here touches neither Redis nor the event loop's I/O. Built on cachetools' ``TLRUCache``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from cachetools import TLRUCache

from gateway import metrics
from gateway.cache.codec import TileEntry

# Bookkeeping per entry beyond the tile bytes (key, header strings, the cache's own links, and
# a front end's prepared answer), counted so that many tiny tiles cannot exceed the byte budget
# by much.
_OVERHEAD = 512


class L1Item:
    """One L1 entry: the tile, its expiry (epoch seconds), and ``prepared``: whatever a front
    end derived from this very entry to answer it faster (``None`` until one does). It lives and
    dies with the entry, so expiry, eviction and purges drop it too."""

    __slots__ = ("entry", "expires", "prepared")

    def __init__(self, entry: TileEntry, expires: float) -> None:
        self.entry = entry
        self.expires = expires
        self.prepared: object = None


def _size(item: L1Item) -> int:
    return len(item.entry.data) + _OVERHEAD


def _expiry(_key: str, item: L1Item, _now: float) -> float:
    return item.expires


class MemoryTier:
    """Tile entries by key, least recently used dropped first once ``max_bytes`` is reached.

    Each entry carries its own expiry (epoch seconds); ``clock`` is the time source. Its
    bytes and entries are reported after each change (``metrics.l1_held``); entries that
    expire unseen are dropped (and reported) at the next change.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self._entries: TLRUCache[str, L1Item] = TLRUCache(
            maxsize=max_bytes, ttu=_expiry, timer=clock, getsizeof=_size
        )

    @property
    def size(self) -> int:
        """Bytes held now (tile bytes plus a fixed overhead per entry)."""
        return int(self._entries.currsize)

    def _item(self, key: str) -> L1Item | None:
        # Indexing checks expiry and recency once; TLRUCache.get would check membership first.
        try:
            return self._entries[key]
        except KeyError:
            return None

    def get(self, key: str) -> TileEntry | None:
        """The live entry under ``key``, or ``None``."""
        item = self._item(key)
        return None if item is None else item.entry

    def prepared(self, key: str) -> tuple[TileEntry, object] | None:
        """The live entry under ``key`` with the answer attached to it (see ``prepare``), or
        ``None`` when there is no such entry or no answer; a lookup counts as a use."""
        item = self._item(key)
        return None if item is None or item.prepared is None else (item.entry, item.prepared)

    def prepare(self, key: str, entry: TileEntry, prepared: object) -> bool:
        """Attach ``prepared`` to the entry under ``key`` if that entry is still ``entry``
        (not replaced, expired or dropped meanwhile); whether it was attached."""
        item = self._item(key)
        if item is None or item.entry is not entry:
            return False
        item.prepared = prepared
        return True

    def put(self, key: str, entry: TileEntry, expires: float) -> None:
        """Keep ``entry`` until ``expires`` (epoch seconds); an entry larger than the whole
        budget is not kept."""
        item = L1Item(entry, expires)
        if _size(item) > self._entries.maxsize:
            return
        self._entries[key] = item
        self._report()

    def _report(self) -> None:
        entries = self._entries
        # Expired entries would otherwise count until something touches them.
        entries.expire()
        metrics.l1_held(int(entries.currsize), len(entries))

    def discard(self, keys: Iterable[str]) -> int:
        """Drop these keys if present; returns how many of them were live."""
        entries = self._entries
        dropped = 0
        for key in keys:
            # Not pop(), which leaves an expired entry (and its bytes) in place: TLRUCache's
            # del removes it and then raises KeyError, as for a missing key.
            try:
                del entries[key]
            except KeyError:
                continue
            dropped += 1
        self._report()
        return dropped

    def discard_where(self, predicate: Callable[[str], bool]) -> int:
        """Drop every key for which ``predicate`` is true; returns how many were dropped."""
        doomed = [key for key in list(self._entries.keys()) if predicate(key)]
        return self.discard(doomed)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._report()
