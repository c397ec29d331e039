"""The memory backend (the cache without Redis): bounded in bytes, and purged in slices that
leave the event loop to other requests."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.cache.codec import TileEntry, strong_etag
from gateway.cache.store import TileCache
from gateway.config import CacheConfig
from gateway.services.http import PIPELINE
from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream

MIB = 1024 * 1024
TOKEN = "s3cret-admin-token"


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


async def test_a_large_purge_of_the_memory_cache_lets_other_requests_through(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TILE_GATEWAY_ADMIN_TOKEN", TOKEN)
    client = await make_gateway(
        {"fake": {"url": fake_upstream.url, "formats": ["png", "jpg"], "meta_size": [1, 1]}}
    )
    pipeline = client.app[PIPELINE]
    layer = pipeline.layers["fake"]

    def key(z: int, x: int, y: int) -> str:
        return pipeline.keys.tile("fake", layer.generation, "WebMercatorQuad", z, x, y, 1, "png")

    # The purge computes keys level by level, row by row: 0/0/0 goes first, 8/255/255 last.
    for z, x, y in ((0, 0, 0), (8, 255, 255)):
        assert (await client.get(f"/tiles/fake/{z}/{x}/{y}.png")).status == 200
        assert await pipeline.cache.store.get(key(z, x, y)) is not None

    purge = asyncio.create_task(
        client.post(
            "/admin/purge",
            json={"layer": "fake", "tms": "WebMercatorQuad", "zoom": "0-8"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    )
    # Bounded: the purge's first slice goes within seconds on any machine.
    async with asyncio.timeout(60):
        while await pipeline.cache.store.get(key(0, 0, 0)) is not None:
            await asyncio.sleep(0)
    health = await client.get("/healthz")
    assert health.status == 200
    # The probe was answered while the purge had its last slice still to do.
    assert await pipeline.cache.store.get(key(8, 255, 255)) is not None
    response = await purge
    assert response.status == 200, await response.text()
    assert (await response.json())["keys"] == 87_381 * 2 * 2  # tiles of levels 0-8, 2 scales
    assert await pipeline.cache.store.get(key(8, 255, 255)) is None
