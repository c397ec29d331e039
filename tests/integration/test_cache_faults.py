"""Faults with real processes: a Redis server of the test's own that is paused (SIGSTOP and
SIGCONT) or holds a dead replica's lock, and whole-layer purges while misses are in flight.
Each test counts failed requests (none may fail where the cache or a purge is at fault) and
bounds the waits by the upstream timeout; upstream calls are counted from what the fixture
upstream received."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
import redis

from tests.conftest import MakeGateway, RedisProcess
from tests.integration.conftest import FakeUpstream

TOKEN = "faults-admin-token"
UPSTREAM_TIMEOUT = 4.0
# Seconds an answer may take beyond the upstream timeout (event-loop turns, a shared CPU).
MARGIN = 2.0


def layer(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "formats": ["png"], "ttl": 600, **extra}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"still not so after {timeout} s")
        await asyncio.sleep(0.01)


async def test_a_redis_stall_during_a_fetch_does_not_make_another_process_wait_for_the_lease(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_process: RedisProcess,
    key_prefix: str,
) -> None:
    # The case: Redis stalls for under a second while a leader fetches; a call of the
    # leader's process fails meanwhile, so its guard leaves Redis alone for retry_interval and
    # skips the leader's "store the tiles, then unlock". The lock then kept its 30 s lease and
    # the other process's next request for that metatile waited for all of it.
    fake_upstream.delay = 2.0
    cache = {
        "redis_url": redis_process.url,
        "prefix": key_prefix,
        "timeout": 0.3,
        "retry_interval": 3.0,
        "purge_poll": 3600,
    }
    layers = {"fake": layer(fake_upstream.url, meta_size=[2, 2])}
    first, second = [
        await make_gateway(layers, cache, upstream_timeout=UPSTREAM_TIMEOUT) for _ in "ab"
    ]
    assert redis_process.process is not None
    leader = asyncio.create_task(first.get("/tiles/fake/3/2/4.png"))
    await until(lambda: len(fake_upstream.queries) == 1)  # the leader holds the lock now
    redis_process.process.send_signal(signal.SIGSTOP)
    try:
        # Another tile on the leader's process meets the stalled Redis.
        other = asyncio.create_task(first.get("/tiles/fake/3/6/6.png"))
        await asyncio.sleep(0.5)
    finally:
        redis_process.process.send_signal(signal.SIGCONT)
    assert (await leader).status == 200

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await asyncio.wait_for(
        second.get("/tiles/fake/3/3/5.png"), UPSTREAM_TIMEOUT + MARGIN
    )
    waited = loop.time() - started
    assert response.status == 200
    assert waited < UPSTREAM_TIMEOUT + MARGIN
    # The leader's tiles reached Redis once it was back: the other process fetched nothing.
    assert response.headers["X-Cache"] == "HIT"
    assert (await other).status == 200
    assert len(fake_upstream.queries) == 2
    client = redis.Redis.from_url(redis_process.url)
    try:
        assert list(client.scan_iter(match=f"{key_prefix}:lock:*")) == []
    finally:
        client.close()


async def test_a_waiter_fetches_for_itself_after_the_upstream_timeout(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, meta_size=[1, 1])},
        {"redis_url": redis_url, "prefix": key_prefix},
        upstream_timeout=UPSTREAM_TIMEOUT,
    )
    assert (await client.get("/tiles/fake/1/0/0.png")).headers["X-Cache"] == "MISS"
    generation = next(redis_client.scan_iter(match=f"{key_prefix}:fake:*")).decode().split(":")[2]
    # A replica took the lock of tile 1/1/0 with the default 30 s lease and died (or its
    # release never reached Redis).
    lock = f"{key_prefix}:lock:fake:{generation}:WebMercatorQuad:1:1:0:1.png"
    redis_client.set(lock, "dead", px=30_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await asyncio.wait_for(
        client.get("/tiles/fake/1/1/0.png"), UPSTREAM_TIMEOUT + MARGIN
    )
    waited = loop.time() - started
    assert response.status == 200 and response.headers["X-Cache"] == "MISS"
    assert UPSTREAM_TIMEOUT <= waited < UPSTREAM_TIMEOUT + MARGIN  # the lock was respected
    assert len(fake_upstream.queries) == 2


@pytest.mark.parametrize("meta_size", [[4, 4], [1, 1]], ids=["metatiled", "single"])
async def test_a_whole_layer_purge_during_misses_fails_none_and_fetches_once_per_generation(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    meta_size: list[int],
) -> None:
    monkeypatch.setenv("TILE_GATEWAY_ADMIN_TOKEN", TOKEN)
    fake_upstream.delay = 0.5
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, meta_size=meta_size)},
        {"redis_url": redis_url, "prefix": key_prefix},
    )
    # 20 requests for tiles of one cold metatile (columns 4-7, rows 8-11 of TileMatrix 4).
    cols, rows = meta_size
    paths = [f"/tiles/fake/4/{4 + i % cols}/{8 + i // cols % rows}.png" for i in range(20)]
    requests = [asyncio.create_task(client.get(path)) for path in paths]
    await until(lambda: len(fake_upstream.queries) == 1)
    purge = await client.post(
        "/admin/purge", json={"layer": "fake"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert purge.status == 200, await purge.text()
    during = await asyncio.gather(*requests)
    assert [r.status for r in during] == [200] * len(paths)
    after = await asyncio.gather(*(client.get(path) for path in paths))
    assert [r.status for r in after] == [200] * len(paths)
    # One fetch of the metatile per generation, whichever requests saw the purge first.
    assert len(fake_upstream.queries) == 2
