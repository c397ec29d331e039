"""The cache engine on every Redis deployment form: single node, Sentinel and a real 3-master
Cluster, each started on loopback ports by the test session."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.cache.redis_client import make_client, parse_redis_url
from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream

TOKEN = "deploy-token"


@pytest.fixture(params=["single", "sentinel", "cluster"])
def deployment_url(request: pytest.FixtureRequest) -> str:
    """The URL of one Redis deployment form (the fixtures start what each needs)."""
    name = {"single": "redis_url", "sentinel": "redis_sentinel_url", "cluster": "redis_cluster_url"}
    return str(request.getfixturevalue(name[request.param]))


async def stored_keys(url: str, prefix: str) -> list[str]:
    client = make_client(url, 2.0)
    try:
        if isinstance(client, RedisCluster):
            found = [key async for key in client.scan_iter(match=f"{prefix}:fake:*")]
        else:
            found = [key async for key in client.scan_iter(match=f"{prefix}:fake:*")]
        ttls = [await client.ttl(key) for key in found]
    finally:
        await client.aclose()
    assert all(550 <= ttl <= 600 for ttl in ttls), ttls
    return sorted(key.decode() for key in found)


async def test_metatiles_coalescing_and_purge_on_each_deployment(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    deployment_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TILE_GATEWAY_ADMIN_TOKEN", TOKEN)
    fake_upstream.behaviour = "slow_ok"
    cache = {"redis_url": deployment_url, "prefix": key_prefix, "purge_poll": 0.05}
    layer = {"url": fake_upstream.url, "formats": ["png"], "ttl": 600, "meta_size": [2, 2]}
    replicas = [await make_gateway({"fake": layer}, cache) for _ in range(2)]

    # Two replicas, the four tiles of one metatile, all at once: one upstream call.
    paths = [f"/tiles/fake/3/{x}/{y}.png" for x in (2, 3) for y in (4, 5)]
    responses = await asyncio.gather(
        *(replica.get(path) for replica in replicas for path in paths for _ in range(5))
    )
    assert {r.status for r in responses} == {200}
    assert Counter(r.headers["X-Cache"] for r in responses)["MISS"] == 1
    assert len(fake_upstream.queries) == 1
    # Four keys written in one pipelined round trip; on a Cluster they span hash slots.
    keys = await stored_keys(deployment_url, key_prefix)
    assert [key.rsplit(":", 4)[1:] for key in keys] == [
        ["3", "2", "4", "1.png"],
        ["3", "2", "5", "1.png"],
        ["3", "3", "4", "1.png"],
        ["3", "3", "5", "1.png"],
    ]

    purge = await replicas[0].post(
        "/admin/purge",
        json={"layer": "fake", "zoom": "3", "bbox": [-85, -60, -50, -20]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert purge.status == 200, await purge.text()
    assert (await purge.json())["deleted"] >= 1
    left = await stored_keys(deployment_url, key_prefix)
    assert len(left) < len(keys)


async def test_a_burst_beyond_the_pool_waits_on_every_deployment(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    deployment_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 40 metatiles at once on two replicas with 3 connections each: every leader needs Redis
    # for its lock at the same time. A pool that failed at once would read as an outage, and
    # then both replicas would fetch.
    fake_upstream.behaviour = "slow_ok"
    # The pool waits up to cache.timeout for a connection. 240 requests through 3 connections
    # can need more than the default 0.5 s on a loaded machine (then each replica, seeing an
    # outage, fetched everything itself: 80 calls); 5 s still tells a waiting pool from one
    # that fails at once.
    cache = {
        "redis_url": deployment_url,
        "prefix": key_prefix,
        "max_connections": 3,
        "timeout": 5,
    }
    layer = {"url": fake_upstream.url, "formats": ["png"], "ttl": 600, "meta_size": [1, 1]}
    replicas = [await make_gateway({"fake": layer}, cache) for _ in range(2)]
    paths = [f"/tiles/fake/6/{x}/{y}.png" for x in range(8) for y in range(5)]
    responses = await asyncio.gather(
        *(replica.get(path) for replica in replicas for path in paths for _ in range(3))
    )
    assert {r.status for r in responses} == {200}
    assert len(fake_upstream.queries) == len(paths)
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]


def test_url_forms_parse() -> None:
    sentinel = parse_redis_url("rediss+sentinel://user:p%40ss@s1:26379,s2:26380/mymaster/3")
    assert (sentinel.kind, sentinel.tls, sentinel.username, sentinel.password) == (
        "sentinel",
        True,
        "user",
        "p@ss",
    )
    assert sentinel.hosts == [("s1", 26379), ("s2", 26380)]
    assert (sentinel.service, sentinel.db) == ("mymaster", 3)
    cluster = parse_redis_url("redis+cluster://:pw@n1:7000,n2:7001?ssl_cert_reqs=none")
    assert (cluster.kind, cluster.password, cluster.options) == (
        "cluster",
        "pw",
        {"ssl_cert_reqs": "none"},
    )
    for bad in (
        "redis+sentinel://h:1",
        "redis+cluster://h",
        "redis+cluster://h:1/2",
        "redis+mesh://h:1",
    ):
        with pytest.raises(ValueError):
            parse_redis_url(bad)
