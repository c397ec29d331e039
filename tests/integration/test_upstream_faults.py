"""Upstream faults against real Redis and the fixture upstream on a socket.

Every way an exportImage call goes wrong (HTTP 500, an ArcGIS error JSON under HTTP 200, an
HTML page, a truncated PNG or JPEG, a hang past the timeout, a connection dropped mid-answer),
on a metatiled and on a pass-through layer, with and without a stale copy: the client's status
and error, the upstream calls made, the time to answer, and that nothing broken was stored.
Then the limit of exportImage calls in flight per upstream service, for serving and seeding.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from gateway.seed import SeedOptions, run_seed
from tests.conftest import MakeGateway, gateway_config
from tests.integration.conftest import FakeUpstream

TIMEOUT = 0.5  # server.upstream_timeout of these gateways, in seconds
# (behaviour of the fixture upstream, tile extension, status without a stale copy, the start
# of the upstream message the client is shown)
FAULTS = [
    ("http500", "png", 502, "HTTP 500"),
    ("error200", "png", 502, "Unable to complete operation. (Invalid bbox)"),
    ("html_page", "png", 502, "not an image (text/html)"),
    ("cut_short", "png", 502, "the PNG image does not decode: "),
    ("cut_short", "jpg", 502, "the JPG image does not decode: "),
    ("slow", "png", 504, f"no answer within {TIMEOUT:g} s"),
    ("drop", "png", 502, "unreachable (ClientPayloadError)"),
]


def stored(client: redis.Redis, prefix: str) -> dict[bytes, bytes | None]:
    """Every key of the test's prefix with its value."""
    return {key: client.get(key) for key in client.scan_iter(match=f"{prefix}:*")}


def assert_good_tile(body: bytes, ext: str) -> None:
    """``body`` is a whole 256 x 256 image in ``ext``: every pixel decodes."""
    with Image.open(io.BytesIO(body)) as image:
        image.load()
        assert image.format == {"png": "PNG", "jpg": "JPEG"}[ext]
        assert image.size == (256, 256)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("stale", [False, True], ids=["no-stale", "stale"])
@pytest.mark.parametrize("meta_size", [[2, 2], [1, 1]], ids=["metatiled", "pass-through"])
@pytest.mark.parametrize(
    ("behaviour", "ext", "status", "message"),
    FAULTS,
    ids=[f"{behaviour}-{ext}" for behaviour, ext, _, _ in FAULTS],
)
async def test_a_failing_upstream_gives_its_error_or_the_stale_copy_and_stores_nothing(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    behaviour: str,
    ext: str,
    status: int,
    message: str,
    meta_size: list[int],
    stale: bool,
) -> None:
    layer = {
        "url": fake_upstream.url,
        "formats": ["png", "jpg"],
        "ttl": 1,
        "meta_size": meta_size,
        "stale_if_error": 60 if stale else 0,
    }
    client = await make_gateway(
        {"fake": layer}, {"redis_url": redis_url, "prefix": key_prefix}, upstream_timeout=TIMEOUT
    )
    path = f"/tiles/fake/3/4/2.{ext}"
    before: dict[bytes, bytes | None] = {}
    good = b""
    if stale:
        first = await client.get(path)
        assert first.status == 200
        good = await first.read()
        before = stored(redis_client, key_prefix)
        assert len(before) == meta_size[0] * meta_size[1]
        await asyncio.sleep(1.1)  # past the ttl: the next request asks the upstream
    calls = len(fake_upstream.queries)
    fake_upstream.behaviour = behaviour
    for _ in range(2):  # the second request asks again: the failure was not cached
        started = time.monotonic()
        response = await client.get(path)
        assert time.monotonic() - started < TIMEOUT + 2
        if stale:
            assert response.status == 200
            assert response.headers["X-Cache"] == "STALE"
            assert await response.read() == good
            continue
        assert response.status == status
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        error = (await response.json())["error"]
        assert error["code"] == status and error["layer"] == "fake"
        assert error["upstream"]["message"].startswith(message)
        assert (
            error["message"]
            == f"the upstream of layer 'fake' failed: {error['upstream']['message']}"
        )
        assert "127.0.0.1" not in json.dumps(error)
    assert len(fake_upstream.queries) == calls + 2
    assert stored(redis_client, key_prefix) == before

    fake_upstream.behaviour = "gradient"
    recovered = await client.get(path)
    assert recovered.status == 200 and recovered.headers["X-Cache"] == "MISS"
    assert_good_tile(await recovered.read(), ext)
    assert len(fake_upstream.queries) == calls + 3


# -- the limit of exportImage calls in flight --------------------------------------------------


def limited_layer(url: str, **extra: object) -> dict[str, object]:
    """A pass-through layer: every tile is one exportImage call of its own."""
    return {"url": url, "formats": ["png"], "meta_size": [1, 1], **extra}


async def test_exports_in_flight_never_exceed_the_limit_and_the_excess_gets_503(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {"fake": limited_layer(fake_upstream.url)},
        max_concurrent_exports=2,
        max_queued_exports=3,
        export_queue_timeout=30,
    )
    fake_upstream.gate.clear()  # every call is held until the test lets them go
    tasks = [asyncio.create_task(client.get(f"/tiles/fake/4/{col}/5.png")) for col in range(10)]
    # 2 calls in flight, 3 waiting for a slot, and the 5 beyond the queue refused at once.
    await until(lambda: sum(task.done() for task in tasks) == 5 and fake_upstream.running == 2)
    for task in [task for task in tasks if task.done()]:
        refused = task.result()
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "30"
        assert refused.headers["Cache-Control"] == "no-store"
        error = (await refused.json())["error"]
        assert error["code"] == 503 and error["layer"] == "fake"
        assert error["message"] == (
            "the upstream of layer 'fake' is busy: "
            "the limit of 2 exportImage calls in flight and 3 waiting is reached"
        )
    fake_upstream.gate.set()
    served = await asyncio.gather(*(task for task in tasks if not task.done()))
    assert [response.status for response in served] == [200] * 5
    assert fake_upstream.peak == 2
    assert len(fake_upstream.queries) == 5


async def test_a_call_waits_for_a_slot_at_most_the_queue_timeout_then_a_stale_copy_or_503(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    # Two layers of one service share its slots.
    client = await make_gateway(
        {
            "kept": limited_layer(fake_upstream.url, ttl=1, stale_if_error=60),
            "bare": limited_layer(fake_upstream.url),
        },
        max_concurrent_exports=1,
        export_queue_timeout=0.5,
    )
    first = await client.get("/tiles/kept/4/3/3.png")
    kept = await first.read()
    await asyncio.sleep(1.1)  # past the ttl
    fake_upstream.gate.clear()
    holder = asyncio.create_task(client.get("/tiles/bare/4/1/1.png"))
    await until(lambda: fake_upstream.running == 1)

    started = time.monotonic()
    stale = await client.get("/tiles/kept/4/3/3.png")
    assert stale.status == 200 and stale.headers["X-Cache"] == "STALE"
    assert await stale.read() == kept
    refused = await client.get("/tiles/bare/4/2/2.png")
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["upstream"] == {
        "code": None,
        "message": "no exportImage slot came free within 0.5 s (at most 1 in flight)",
    }
    ogcapi = await client.get("/ogcapi/collections/bare/map/tiles/WebMercatorQuad/4/2/2?f=png")
    assert ogcapi.status == 503 and ogcapi.headers["Retry-After"] == "1"
    assert (await ogcapi.json())["error"]["code"] == 503
    assert time.monotonic() - started < 3 * 0.5 + 2

    fake_upstream.gate.set()
    assert (await holder).status == 200
    assert fake_upstream.peak == 1
    assert len(fake_upstream.queries) == 2  # the first tile, then the one that held the slot


async def test_a_seed_keeps_to_the_limit_whatever_its_concurrency(
    fake_upstream: FakeUpstream,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_upstream.behaviour = "slow_ok"  # 0.3 s per call: the workers pile up on the slots
    layer: dict[str, Any] = {
        "url": fake_upstream.url,
        "formats": ["png"],
        "meta_size": [2, 2],
        "maxzoom": 4,
    }
    config = gateway_config(
        {"fake": layer},
        {"redis_url": redis_url, "prefix": key_prefix},
        max_concurrent_exports=2,
        max_queued_exports=0,
        export_queue_timeout=0.1,
    )
    options = SeedOptions("fake", (3, 3), concurrency=8, state=tmp_path / "state.json")
    assert await run_seed(config, options) == 0
    assert fake_upstream.peak == 2
    assert "seeding with 2 exportImage calls at once" in capsys.readouterr().err
    # z3 is 8 x 8 tiles, 16 metatiles of 2 x 2: each fetched once, none refused for the queue.
    assert len(fake_upstream.queries) == 16
    assert Counter(query["size"] for query in fake_upstream.queries) == {"512,512": 16}
