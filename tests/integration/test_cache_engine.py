"""The cache engine against real Redis and a recording upstream: L1, coalescing, metatiles,
stale serving. Upstream calls are counted from what the fixture upstream received."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from PIL import Image

from gateway.cache.codec import TileEntry
from gateway.cache.l1 import MemoryTier
from gateway.services.http import READY
from tests.conftest import MakeGateway, RedisProcess
from tests.integration.conftest import FakeUpstream


def layer(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "formats": ["png", "jpg"], "ttl": 600, **extra}


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGBA")).astype(int)


# -- L1 ------------------------------------------------------------------------------------------


def test_l1_is_bounded_in_bytes_and_honours_expiry() -> None:
    now = [1000.0]
    tier = MemoryTier(10_000, clock=lambda: now[0])
    entry = TileEntry(b"x" * 2800, "image/png", '"a"', 1000.0)  # 3 fit, with overhead
    for name in "abc":
        tier.put(name, entry, expires=1010.0)
    assert tier.get("a") is not None  # a is now the most recently used
    tier.put("d", entry, expires=1010.0)  # over 10 000 bytes: the least recently used goes
    assert tier.get("b") is None and tier.get("a") is not None and tier.get("d") is not None
    assert tier.size <= 10_000
    now[0] = 1011.0
    assert tier.get("a") is None  # expired with its tile
    tier.put("huge", TileEntry(b"x" * 20_000, "image/png", '"h"', 1000.0), expires=2000.0)
    assert tier.get("huge") is None


async def test_l1_hits_need_no_redis(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, redis_process: RedisProcess
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, meta_size=[1, 1])}, {"redis_url": redis_process.url}
    )
    assert (await client.get("/tiles/fake/2/1/1.png")).headers["X-Cache"] == "MISS"
    redis_process.stop()
    response = await client.get("/tiles/fake/2/1/1.png")
    assert response.status == 200 and response.headers["X-Cache"] == "HIT"
    assert len(fake_upstream.queries) == 1


# -- repeated hits: ready answers from L1 (XYZ) -------------------------------------------------

ANSWER_HEADERS = ("Content-Type", "ETag", "Cache-Control", "X-Cache", "Last-Modified")
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers")


async def test_a_repeated_hit_answers_exactly_as_the_first_hit(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, meta_size=[1, 1])})
    path = "/tiles/fake/3/2/1.png"
    miss, first_hit, ready_hit = [await client.get(path) for _ in range(3)]
    assert [r.headers["X-Cache"] for r in (miss, first_hit, ready_hit)] == ["MISS", "HIT", "HIT"]
    answers = client.server.app[READY]
    assert answers.answer(_request(client, path)) is not None  # the third one was a ready answer
    for name in (*ANSWER_HEADERS, *CORS_HEADERS, "Content-Length"):
        assert ready_hit.headers[name] == first_hit.headers[name], name
    assert await ready_hit.read() == await first_hit.read() == await miss.read()
    assert len(fake_upstream.queries) == 1
    # Revalidation still takes the full path: 304 without a body.
    revalidated = await client.get(path, headers={"If-None-Match": first_hit.headers["ETag"]})
    assert revalidated.status == 304 and await revalidated.read() == b""
    assert "Content-Type" not in revalidated.headers


async def test_ready_answers_end_with_freshness_and_with_purges(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TILE_GATEWAY_ADMIN_TOKEN", "t")
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, ttl=1, stale_while_revalidate=60, meta_size=[1, 1])},
        {"purge_poll": 0.05},
    )
    path = "/tiles/fake/3/2/1.png"
    for _ in range(3):
        await client.get(path)
    await asyncio.sleep(1.1)  # past the TTL, still in L1: the ready answer must not be served
    assert (await client.get(path)).headers["X-Cache"] == "STALE"
    for _ in range(100):  # the background refresh lands
        if len(fake_upstream.queries) == 2:
            break
        await asyncio.sleep(0.02)
    for _ in range(2):
        assert (await client.get(path)).headers["X-Cache"] == "HIT"
    fake_upstream.behaviour = "gradient"
    purge = await client.post(
        "/admin/purge",
        json={"layer": "fake", "zoom": "3"},
        headers={"Authorization": "Bearer t"},
    )
    assert purge.status == 200, await purge.text()
    after = await client.get(path)
    assert after.headers["X-Cache"] == "MISS"
    assert await after.read() == await (await client.get(path)).read()
    assert len(fake_upstream.queries) == 3


def _request(client: TestClient, path: str) -> web.Request:
    return make_mocked_request("GET", path, app=client.server.app)


# -- L2 reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("deployment", ["single", "cluster"])
async def test_concurrent_l2_reads_share_mgets(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    request: pytest.FixtureRequest,
    deployment: str,
    key_prefix: str,
) -> None:
    url = request.getfixturevalue("redis_url" if deployment == "single" else "redis_cluster_url")
    cache = {"redis_url": url, "prefix": key_prefix, "l1_max_bytes": 0}
    writer, reader = [
        await make_gateway({"fake": layer(fake_upstream.url, meta_size=[1, 1])}, cache)
        for _ in "wr"
    ]
    fake_upstream.behaviour = "by_bbox"
    paths = [f"/tiles/fake/4/{x}/{y}.png" for x in range(4) for y in range(4)]
    expected = {p: await (await writer.get(p)).read() for p in paths}
    assert len(set(expected.values())) == len(paths)  # every tile has bytes of its own
    before = _commands(url)
    responses = await asyncio.gather(*(reader.get(p) for p in paths for _ in range(5)))
    used = _commands(url) - before
    assert {r.status for r in responses} == {200}
    assert {r.headers["X-Cache"] for r in responses} == {"HIT"}
    for response in responses:
        assert await response.read() == expected[response.url.path]
    assert len(fake_upstream.queries) == len(paths)
    # 80 reads of 16 keys: fewer MGETs than requests, and no single GET.
    assert used["get"] == 0
    assert 1 <= used["mget"] < len(responses)


@asynccontextmanager
async def monitored(url: str, prefix: str) -> AsyncIterator[list[str]]:
    """The commands clients send to Redis about keys of ``prefix`` (MONITOR, less what
    scripts run inside Redis), in order."""
    client = aioredis.from_url(url)
    commands: list[str] = []
    async with client.monitor() as monitor:

        async def read() -> None:
            async for command in monitor.listen():
                if command["client_type"] != "lua" and prefix in command["command"]:
                    commands.append(command["command"].split()[0].lower())

        task = asyncio.create_task(read())
        try:
            yield commands
            await asyncio.sleep(0.2)  # MONITOR lines trail the replies
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await client.aclose()


def _commands(url: str) -> Counter[str]:
    """Calls per command so far, summed over every master of the deployment."""
    nodes = [url] if url.startswith("redis://") else url.removeprefix("redis+cluster://").split(",")
    calls: Counter[str] = Counter()
    for node in nodes:
        client = redis.Redis.from_url(node if "://" in node else f"redis://{node}")
        try:
            for name, stats in client.info("commandstats").items():
                calls[name.removeprefix("cmdstat_")] += stats["calls"]
        finally:
            client.close()
    return calls


# -- coalescing ---------------------------------------------------------------------------------


async def test_concurrent_misses_in_one_process_make_one_upstream_call(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, redis_url: str, key_prefix: str
) -> None:
    fake_upstream.behaviour = "slow_ok"
    client = await make_gateway(
        {"fake": layer(fake_upstream.url)}, {"redis_url": redis_url, "prefix": key_prefix}
    )
    responses = await asyncio.gather(*(client.get("/tiles/fake/5/3/7.png") for _ in range(60)))
    assert {r.status for r in responses} == {200}
    assert Counter(r.headers["X-Cache"] for r in responses) == {"MISS": 1, "HIT": 59}
    assert len({await r.read() for r in responses}) == 1
    assert len(fake_upstream.queries) == 1


async def test_concurrent_misses_on_two_replicas_make_one_upstream_call(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, redis_url: str, key_prefix: str
) -> None:
    fake_upstream.behaviour = "slow_ok"
    cache = {"redis_url": redis_url, "prefix": key_prefix}
    replicas = [await make_gateway({"fake": layer(fake_upstream.url)}, cache) for _ in range(2)]
    # Tiles of one metatile, asked on both replicas at once.
    paths = [f"/tiles/fake/6/{x}/{y}.png" for x in (8, 9) for y in (12, 13)]
    responses = await asyncio.gather(
        *(replica.get(path) for replica in replicas for path in paths for _ in range(10))
    )
    assert {r.status for r in responses} == {200}
    assert Counter(r.headers["X-Cache"] for r in responses)["MISS"] == 1
    assert len(fake_upstream.queries) == 1


async def test_a_miss_costs_three_redis_round_trips_and_leaves_no_lock(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, meta_size=[2, 2])},
        {"redis_url": redis_url, "prefix": key_prefix, "purge_poll": 3600},
    )
    assert (await client.get("/tiles/fake/3/0/0.png")).headers["X-Cache"] == "MISS"
    async with monitored(redis_url, key_prefix) as commands:
        assert (await client.get("/tiles/fake/3/6/6.png")).headers["X-Cache"] == "MISS"
    # The read, "the tile or the lock" and "store the 4 tiles, then unlock": nothing else.
    assert commands == ["mget", "evalsha", "evalsha"]
    assert list(redis_client.scan_iter(match=f"{key_prefix}:lock:*")) == []
    stored = sorted(k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}:fake:*"))
    # Two metatiles of 2 x 2 tiles: columns 0-1 and 6-7 of TileMatrix 3, two rows each.
    assert [k.rsplit(":", 4)[1:3] for k in stored] == [
        ["3", str(col)] for col in (0, 1, 6, 7) for _row in range(2)
    ]
    assert all(550 <= redis_client.ttl(k) <= 600 for k in stored)
    assert len(fake_upstream.queries) == 2


async def test_a_lock_left_by_a_dead_replica_expires_and_a_waiter_fetches(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, meta_size=[1, 1])},
        {"redis_url": redis_url, "prefix": key_prefix},
    )
    first = await client.get("/tiles/fake/1/0/0.png")  # learn the lock key's shape
    assert first.headers["X-Cache"] == "MISS"
    lock = f"{key_prefix}:lock:fake:"
    generation = next(redis_client.scan_iter(match=f"{key_prefix}:fake:*")).decode().split(":")[2]
    # Another replica took the lock of tile 1/1/0 and died: it expires in 0.4 s.
    redis_client.set(f"{lock}{generation}:WebMercatorQuad:1:1:0:1.png", "dead", px=400)
    started = asyncio.get_running_loop().time()
    response = await client.get("/tiles/fake/1/1/0.png")
    waited = asyncio.get_running_loop().time() - started
    assert response.status == 200 and response.headers["X-Cache"] == "MISS"
    assert 0.3 <= waited < 3
    assert len(fake_upstream.queries) == 2


async def test_one_upstream_error_reaches_every_waiter_once_and_is_not_cached(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    fake_upstream.behaviour = "slow500"
    client = await make_gateway(
        {"fake": layer(fake_upstream.url)}, {"redis_url": redis_url, "prefix": key_prefix}
    )
    responses = await asyncio.gather(*(client.get("/tiles/fake/4/2/2.png") for _ in range(20)))
    assert {r.status for r in responses} == {502}
    assert len(fake_upstream.queries) == 1
    assert list(redis_client.scan_iter(match=f"{key_prefix}:fake:*")) == []
    fake_upstream.behaviour = "ok"
    assert (await client.get("/tiles/fake/4/2/2.png")).headers["X-Cache"] == "MISS"
    assert len(fake_upstream.queries) == 2


# -- metatiles ----------------------------------------------------------------------------------


async def test_a_metatile_is_one_call_cut_into_its_tiles(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    fake_upstream.behaviour = "gradient"
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, meta_size=[4, 4], meta_buffer=16)},
        {"redis_url": redis_url, "prefix": key_prefix},
    )
    # z=3: the metatile of tile (5, 2) is columns 4-7, rows 0-3: a buffer only left and below.
    first = await client.get("/tiles/fake/3/5/2.png")
    assert first.headers["X-Cache"] == "MISS"
    query = fake_upstream.queries[0]
    assert query["size"] == "1040,1040" and query["format"] == "png32"
    span = 2 * 20037508.342789244 / 8
    xmin, ymin, xmax, ymax = (float(v) for v in query["bbox"].split(","))
    pixel = span / 256
    assert xmin == pytest.approx(-20037508.342789244 + 4 * span - 16 * pixel)
    assert xmax == pytest.approx(20037508.342789244)
    assert ymax == pytest.approx(20037508.342789244)
    assert ymin == pytest.approx(20037508.342789244 - 4 * span - 16 * pixel)
    for col in range(4, 8):
        for row in range(4):
            response = await client.get(f"/tiles/fake/3/{col}/{row}.png")
            assert response.headers["X-Cache"] == "HIT"
            pixels = decode(await response.read())
            # Pixel (0, 0) of the tile is pixel (16 + 256 i, 256 j) of the metatile.
            left, top = 16 + 256 * (col - 4), 256 * row
            assert tuple(pixels[0, 0]) == (
                left % 256,
                top % 256,
                (left // 256) * 16 + top // 256,
                255,
            )
            assert tuple(pixels[255, 255][:2]) == ((left + 255) % 256, (top + 255) % 256)
    assert len(fake_upstream.queries) == 1
    assert len(list(redis_client.scan_iter(match=f"{key_prefix}:fake:*"))) == 16


async def test_metatiles_shrink_to_the_upstreams_maximum_image_size(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.info = {**fake_upstream.info, "maxImageWidth": 600, "maxImageHeight": 300}
    client = await make_gateway({"fake": layer(fake_upstream.url, meta_size=[4, 4])})
    await client.get("/tiles/fake/4/5/5.png")
    assert fake_upstream.queries[0]["size"] == "512,256"  # 2 x 1 tiles fit in 600 x 300


async def test_metatile_tiles_are_encoded_in_the_layers_format(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour = "gradient"
    client = await make_gateway(
        {
            "p8": layer(fake_upstream.url, png8=True, meta_size=[2, 2]),
            "jq": layer(fake_upstream.url, jpeg_quality=40, meta_size=[2, 2]),
        }
    )
    png8 = Image.open(io.BytesIO(await (await client.get("/tiles/p8/2/1/1.png")).read()))
    assert png8.format == "PNG" and png8.mode == "P" and png8.size == (256, 256)
    jpeg = await client.get("/tiles/jq/2/1/1.jpg")
    assert jpeg.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(await jpeg.read()))
    assert image.format == "JPEG" and image.size == (256, 256)


async def test_metatiles_are_fetched_in_the_format_their_tiles_need(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour = "gradient"
    client = await make_gateway(
        {
            "black": layer(fake_upstream.url, meta_size=[2, 2]),
            "grey": layer(fake_upstream.url, meta_size=[2, 2], background="#808080"),
            "forced": layer(fake_upstream.url, meta_size=[2, 2], metatile_format="png"),
            "quality": layer(fake_upstream.url, meta_size=[2, 2], metatile_jpeg_quality=70),
            "fixed": layer(
                fake_upstream.url,
                meta_size=[2, 2],
                metatile_jpeg_quality=70,
                export={"compressionQuality": 20},
            ),
        }
    )
    asked = {}
    for name, ext in (("black", "jpg"), ("black", "png"), ("grey", "jpg"), ("forced", "jpg")):
        response = await client.get(f"/tiles/{name}/2/1/1.{ext}")
        assert response.status == 200, await response.text()
        query = fake_upstream.queries[-1]
        asked[name, ext] = (query["format"], query.get("compressionQuality"))
        tile = decode(await response.read())
        # Tile (1, 1) starts at pixel (256, 256) of the metatile: its centre is (128, 128, 17).
        assert abs(tile[128, 128] - np.array([128, 128, 17, 255])).max() <= 6, (name, ext)
    # JPEG tiles on black need no transparency: the upstream renders a JPEG; elsewhere PNG.
    assert asked == {
        ("black", "jpg"): ("jpg", "90"),
        ("black", "png"): ("png32", None),
        ("grey", "jpg"): ("png32", None),
        ("forced", "jpg"): ("png32", None),
    }
    await client.get("/tiles/quality/2/1/1.jpg")
    assert fake_upstream.queries[-1]["compressionQuality"] == "70"
    await client.get("/tiles/fixed/2/1/1.jpg")  # the export parameter is sent as configured
    assert fake_upstream.queries[-1]["compressionQuality"] == "20"
    single = await make_gateway({"one": layer(fake_upstream.url, meta_size=[1, 1])})
    await single.get("/tiles/one/2/1/1.jpg")
    assert fake_upstream.queries[-1]["format"] == "jpg"
    assert "compressionQuality" not in fake_upstream.queries[-1]


# -- stale serving --------------------------------------------------------------------------------


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, ttl=1, stale_while_revalidate=60, meta_size=[1, 1])}
    )
    first = await client.get("/tiles/fake/3/3/3.png")
    assert first.headers["Cache-Control"] == "public, max-age=1, stale-while-revalidate=60"
    await asyncio.sleep(1.1)
    stale = await asyncio.gather(*(client.get("/tiles/fake/3/3/3.png") for _ in range(5)))
    assert [r.headers["X-Cache"] for r in stale] == ["STALE"] * 5
    for _ in range(100):  # the one background refresh lands
        if len(fake_upstream.queries) == 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert len(fake_upstream.queries) == 2
    assert (await client.get("/tiles/fake/3/3/3.png")).headers["X-Cache"] == "HIT"


async def test_stale_if_error_stands_in_for_a_failing_upstream(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {
            "kept": layer(fake_upstream.url, ttl=1, stale_if_error=60, meta_size=[1, 1]),
            "bare": layer(fake_upstream.url, ttl=1, meta_size=[1, 1]),
        }
    )
    bodies = {}
    for name in ("kept", "bare"):
        response = await client.get(f"/tiles/{name}/3/3/3.png")
        bodies[name] = await response.read()
    await asyncio.sleep(1.1)
    fake_upstream.behaviour = "http500"
    kept = await client.get("/tiles/kept/3/3/3.png")
    assert kept.status == 200 and kept.headers["X-Cache"] == "STALE"
    assert await kept.read() == bodies["kept"]
    assert (await client.get("/tiles/bare/3/3/3.png")).status == 502


async def test_a_burst_beyond_the_redis_pool_waits_instead_of_failing_open(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A pool that fails at once when exhausted read as an outage, and then every waiter took
    # the "lock" and fetched for itself (2 upstream calls with 2 workers in bench/cache.py c).
    fake_upstream.behaviour = "slow_ok"
    cache = {"redis_url": redis_url, "prefix": key_prefix, "max_connections": 4}
    replicas = [await make_gateway({"fake": layer(fake_upstream.url)}, cache) for _ in range(2)]
    responses = await asyncio.gather(
        *(replica.get("/tiles/fake/7/20/30.png") for replica in replicas for _ in range(200))
    )
    assert {r.status for r in responses} == {200}
    assert len(fake_upstream.queries) == 1
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
