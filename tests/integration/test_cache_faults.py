"""Faults with real processes: whole-layer purges while misses are in flight. Each test counts
failed requests (none may fail where the cache or a purge is at fault); upstream calls are
counted from what the fixture upstream received."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream

TOKEN = "faults-admin-token"


def layer(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "formats": ["png"], "ttl": 600, **extra}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"still not so after {timeout} s")
        await asyncio.sleep(0.01)


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
