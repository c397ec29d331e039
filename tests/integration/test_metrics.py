"""``GET /metrics`` under ``serve --workers 2``: counters that match the requests sent, whichever
worker answers, and label values that carry no path, token or client address."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.integration.conftest import FakeUpstream

WORKTREE = Path(__file__).resolve().parents[2]
ADMIN = "admin-secret-7f3a"
SECRET = "tok-secret-9b2c"
CLIENT = "203.0.113.77"


def _config(path: Path, upstream: str, redis_url: str, prefix: str, port: int) -> Path:
    config = {
        "server": {"port": port, "trust_proxy": True},
        "cache": {"redis_url": redis_url, "prefix": prefix, "purge_poll": 0.05},
        # One tile a metatile: each miss is one upstream call.
        "layers": {"fake": {"url": upstream, "formats": ["png"], "meta_size": [1, 1]}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "TILE_GATEWAY_ADMIN_TOKEN": ADMIN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
        cwd=WORKTREE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _wait_ready(session: aiohttp.ClientSession, base: str, process: subprocess.Popen) -> None:
    for _ in range(300):
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway never became ready")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_match_the_requests_sent_whichever_worker_answers(
    fake_upstream: FakeUpstream, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = _config(tmp_path / "gw.yaml", fake_upstream.url, redis_url, key_prefix, port)
    process = _serve(config, port)
    # A new connection per request: the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await _wait_ready(session, base, process)

            # The size of each tile made by a miss: with one tile a metatile, the metatile's.
            made: list[int] = []

            async def get(path: str) -> tuple[int, str | None]:
                headers = {"X-Forwarded-For": CLIENT}
                async with session.get(f"{base}{path}", headers=headers) as response:
                    body = await response.read()
                    if response.headers.get("X-Cache") == "MISS":
                        made.append(len(body))
                    return response.status, response.headers.get("X-Cache")

            async def scrape() -> dict:
                async with session.get(f"{base}/metrics") as response:
                    return _samples(await response.text())

            tiles = ["/tiles/fake/3/1/2.png", "/tiles/fake/3/2/2.png", "/tiles/fake/3/3/2.png"]
            # Three misses, then the same three tiles as hits (from Redis or L1).
            for path in tiles:
                assert await get(f"{path}?token={SECRET}") == (200, "MISS")
            for path in tiles:
                assert await get(path) == (200, "HIT")
            # Four requests for a new tile while the upstream holds its answer: one upstream
            # call in flight and three waiters on it (on the same worker, or on the other one
            # through the Redis lock), seen in the gauges before the upstream answers.
            fake_upstream.gate.clear()
            together = [asyncio.create_task(get("/tiles/fake/3/6/2.png")) for _ in range(4)]
            for _ in range(300):
                samples = await scrape()
                waiting = (
                    _value(samples, "tile_gateway_upstream_calls_in_flight", layer="fake"),
                    _value(samples, "tile_gateway_coalesced_waiters", layer="fake"),
                )
                if waiting == (1, 3):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"in flight and waiting: {waiting}, not (1, 3)")
            fake_upstream.gate.set()
            answers = sorted(await asyncio.gather(*together))
            assert answers == [(200, "HIT"), (200, "HIT"), (200, "HIT"), (200, "MISS")]
            # Two failures of the upstream: 502, nothing cached.
            fake_upstream.behaviour = "http500"
            for path in ("/tiles/fake/3/4/2.png", "/tiles/fake/3/5/2.png"):
                assert (await get(path))[0] == 502
            # A tile of a layer that does not exist is no tile answer.
            assert (await get("/tiles/nothere/3/1/2.png"))[0] == 404
            async with session.get(f"{base}/metrics") as response:
                # Each tile in the L1 of the worker that fetched it, and of the other one when
                # that one read it from Redis: summed over both workers.
                entries = _value(_samples(await response.text()), "tile_gateway_l1_entries")
                assert 4 <= entries <= 8
            async with session.post(
                f"{base}/admin/purge",
                json={"layer": "fake"},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as response:
                assert response.status == 200

            # Any worker answers for both: scrape several times over new connections.
            for _ in range(6):
                async with session.get(f"{base}/metrics") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain")
                    text = await response.text()
                samples = _samples(text)
                requests = "tile_gateway_tile_requests_total"
                labels = {"layer": "fake", "front": "tiles"}
                assert _value(samples, requests, **labels, status="200", cache="MISS") == 4
                assert _value(samples, requests, **labels, status="200", cache="HIT") == 6
                assert _value(samples, requests, **labels, status="502", cache="NONE") == 2
                assert sum(v for (name, _), v in samples.items() if name == requests) == 12, (
                    "the 404 of an unknown layer is no tile answer"
                )
                calls = "tile_gateway_upstream_calls_total"
                call = {"layer": "fake", "operation": "exportImage"}
                assert _value(samples, calls, **call, outcome="ok") == 4
                assert _value(samples, calls, **call, outcome="error") == 2
                assert _value(samples, "tile_gateway_upstream_call_seconds_count", **call) == 6
                assert _value(samples, "tile_gateway_upstream_calls_in_flight", layer="fake") == 0
                assert _value(samples, "tile_gateway_coalesced_waiters", layer="fake") == 0
                waits = "tile_gateway_coalesced_waits_total"
                assert _value(samples, waits, layer="fake") == 3
                # Each image that came back counted once, at its size; the failures not at all.
                assert _value(samples, "tile_gateway_metatile_bytes_count", layer="fake") == 4
                assert _value(samples, "tile_gateway_metatile_bytes_sum", layer="fake") == sum(made)
                assert _value(samples, "tile_gateway_purges_total", layer="fake", kind="layer") == 1
                answers = "tile_gateway_http_requests_total"
                assert _value(samples, answers, front="tiles", status="404") == 1
                assert _value(samples, answers, front="admin", status="200") == 1
                assert _value(samples, "tile_gateway_cache_errors_total") == 0
                assert len(fake_upstream.queries) == 6
                values = {value for (_, labels_), _v in samples.items() for _, value in labels_}
                for leak in (SECRET, ADMIN, CLIENT, "127.0.0.1"):
                    assert not any(leak in value for value in values), leak
                assert not any("/" in value for value in values), "a path in a label"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
