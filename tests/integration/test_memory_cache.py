"""The memory backend (the cache without Redis): bounded in bytes."""

from __future__ import annotations

import time

from gateway.cache.codec import TileEntry, strong_etag
from gateway.cache.store import TileCache
from gateway.config import CacheConfig

MIB = 1024 * 1024


def entry(number: int, size: int) -> TileEntry:
    data = number.to_bytes(4, "big") * (size // 4)
    return TileEntry(data, "image/png", strong_etag(data), time.time())


async def test_the_memory_backend_keeps_the_most_recently_used_within_its_bound() -> None:
    cache = TileCache(CacheConfig(memory_max_bytes=MIB, l1_max_bytes=0))
    size = 10_000
    await cache.set_many([("kept", entry(0, size))], 600)
    for number in range(1, 400):  # about 4 MB in all
        await cache.set_many([(f"tile-{number}", entry(number, size))], 600)
        if number % 10 == 0:  # used now and then: the least recently used go first
            assert await cache.get("kept", 600) is not None
    assert await cache.get("tile-1", 600) is None
    assert await cache.get("tile-399", 600) is not None
    held = [n for n in range(1, 400) if await cache.get(f"tile-{n}", 600) is not None]
    # What is left is the newest tiles, as many as the bound holds (plus "kept").
    assert held == list(range(400 - len(held), 400))
    assert (len(held) + 1) * size <= MIB < (len(held) + 2) * (size + 512)
    await cache.close()
