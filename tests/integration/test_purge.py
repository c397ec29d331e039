"""Purging through the admin API, against real Redis and two replicas sharing it."""

from __future__ import annotations

import asyncio

import pytest
import redis

from gateway.purge import Purger
from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def layer(url: str) -> dict[str, object]:
    return {"url": url, "formats": ["png"], "ttl": 600, "meta_size": [1, 1]}


def keys(client: redis.Redis, prefix: str) -> set[str]:
    return {key.decode() for key in client.scan_iter(match=f"{prefix}:fake:*")}


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TILE_GATEWAY_ADMIN_TOKEN", TOKEN)
    return TOKEN


async def test_whole_layer_purge_is_one_generation_step_seen_by_every_replica(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    admin_token: str,
) -> None:
    cache = {"redis_url": redis_url, "prefix": key_prefix, "purge_poll": 0.05}
    first, second = [await make_gateway({"fake": layer(fake_upstream.url)}, cache) for _ in "ab"]
    old = await (await first.get("/tiles/fake/2/1/1.png")).read()
    assert (await second.get("/tiles/fake/2/1/1.png")).headers["X-Cache"] == "HIT"  # now in L1
    old_keys = keys(redis_client, key_prefix)

    fake_upstream.behaviour = "gradient"  # the upstream's imagery changed
    response = await first.post("/admin/purge", json={"layer": "fake"}, headers=AUTH)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["generation"].endswith(".1")
    assert keys(redis_client, key_prefix) == old_keys  # nothing deleted: old keys age out

    fresh = await first.get("/tiles/fake/2/1/1.png")
    assert fresh.headers["X-Cache"] == "MISS"
    new = await fresh.read()
    assert new != old
    await asyncio.sleep(0.2)  # the other replica polls the generation
    other = await second.get("/tiles/fake/2/1/1.png")
    assert await other.read() == new
    assert len(fake_upstream.queries) == 2


async def test_zoom_and_bbox_purge_deletes_exactly_the_computed_keys(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    admin_token: str,
) -> None:
    cache = {"redis_url": redis_url, "prefix": key_prefix, "purge_poll": 0.05}
    first, second = [await make_gateway({"fake": layer(fake_upstream.url)}, cache) for _ in "ab"]
    tiles = [(2, x, y) for x in range(4) for y in range(4)] + [(3, 4, 2), (3, 0, 7)]
    for z, x, y in tiles:
        assert (await first.get(f"/tiles/fake/{z}/{x}/{y}.png")).status == 200
    assert (await second.get("/tiles/fake/3/4/2.png")).headers["X-Cache"] == "HIT"  # L1 now
    before = keys(redis_client, key_prefix)
    assert len(before) == 18

    # Zoom 3 around Europe: tile 3/4/2 only (3/0/7 is in the far south-west).
    response = await first.post(
        "/admin/purge",
        json={"layer": "fake", "zoom": "3-3", "bbox": [5, 45, 15, 55], "tms": "WebMercatorQuad"},
        headers=AUTH,
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    # 1 tile x scales 1 and 2 x 1 format: the keys computed from the grid.
    assert body["keys"] == 2 and body["deleted"] == 1
    after = keys(redis_client, key_prefix)
    assert before - after == {k for k in before if k.endswith(":WebMercatorQuad:3:4:2:1.png")}

    await asyncio.sleep(0.2)
    calls = len(fake_upstream.queries)
    assert (await second.get("/tiles/fake/3/4/2.png")).headers["X-Cache"] == "MISS"
    assert (await second.get("/tiles/fake/3/0/7.png")).headers["X-Cache"] == "HIT"
    assert len(fake_upstream.queries) == calls + 1


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"layer": "fake"}, 401),
        ({"Authorization": "Bearer wrong"}, {"layer": "fake"}, 401),
        (AUTH, {"layer": "nope"}, 404),
        (AUTH, {"layer": "fake", "tms": "Nope"}, 404),
        (AUTH, {"layer": "fake", "zoom": "x-y"}, 400),
        (AUTH, {"layer": "fake", "bbox": [1, 2, 3]}, 400),
        (AUTH, {"layer": "fake", "zoom": "0-22"}, 413),
        (AUTH, {"zoom": "1-2"}, 400),
    ],
)
async def test_admin_purge_refuses_bad_requests(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    admin_token: str,
    headers: dict[str, str],
    body: dict[str, object],
    status: int,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.post("/admin/purge", json=body, headers=headers)
    assert response.status == status
    assert (await response.json())["error"]["code"] == status
    assert TOKEN not in await response.text()


async def test_admin_api_is_off_without_a_token(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TILE_GATEWAY_ADMIN_TOKEN", raising=False)
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.post("/admin/purge", json={"layer": "fake"}, headers=AUTH)
    assert response.status == 403


async def test_memory_backend_purges_in_process(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, admin_token: str
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    await client.get("/tiles/fake/1/0/0.png")
    assert (await client.get("/tiles/fake/1/0/0.png")).headers["X-Cache"] == "HIT"
    assert (await client.post("/admin/purge", json={"layer": "fake"}, headers=AUTH)).status == 200
    assert (await client.get("/tiles/fake/1/0/0.png")).headers["X-Cache"] == "MISS"


async def test_shutdown_ends_the_purge_watcher_even_when_a_cancellation_is_lost(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On Python 3.11 a cancel meeting a redis-py timeout can come out as a TimeoutError, which
    # the cache swallows as a failed call: the watcher must still stop at shutdown.
    lost = asyncio.Event()
    syncs_after_the_loss = 0

    async def sync_losing_the_cancellation(self: Purger) -> None:
        nonlocal syncs_after_the_loss
        if lost.is_set():
            syncs_after_the_loss += 1
            raise asyncio.CancelledError  # ends a watcher that went on, so the test can fail
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            lost.set()

    client = await make_gateway(
        {"fake": layer(fake_upstream.url)},
        {"redis_url": redis_url, "prefix": key_prefix, "purge_poll": 0.01},
    )
    monkeypatch.setattr(Purger, "sync", sync_losing_the_cancellation)
    await asyncio.sleep(0.05)  # the watcher is inside sync now
    await asyncio.wait_for(client.close(), 5)
    assert lost.is_set()
    assert syncs_after_the_loss == 0
