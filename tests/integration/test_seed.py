"""Seeding against a real Redis and the fixture upstream: exact exportImage calls, keys and TTLs,
skipping what is fresh, bbox, retries, errors, concurrency, and Ctrl-C then --resume through
the real command line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiohttp import web
from multidict import MultiDict

from gateway.cache.codec import TileEntry, encode_entry
from gateway.cli import main
from gateway.config import GatewayConfig
from gateway.grids import GridRegistry, metatile
from gateway.seed import SeedOptions, run_seed
from gateway.seed.state import SeedState
from tests.conftest import REPO, gateway_config
from tests.integration.conftest import BEHAVIOURS, FakeUpstream, encode_image

TTL = 3600
# WebMercatorQuad, 4 x 4 metatiles: z0, z1 and z2 are one metatile each, z3 (8 x 8) four,
# z4 (16 x 16) sixteen.
METATILES = {0: 1, 1: 1, 2: 1, 3: 4, 4: 16}


def layer(url: str) -> dict[str, Any]:
    return {"url": url, "formats": ["png"], "ttl": TTL, "meta_size": [4, 4], "maxzoom": 6}


def config(upstream: FakeUpstream, cache: dict[str, Any]) -> GatewayConfig:
    return gateway_config({"fake": layer(upstream.url)}, cache)


def summary(text: str) -> dict[str, str]:
    """The ``name: value`` lines of the seed's summary."""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def tiles_in(client: redis.Redis, prefix: str) -> dict[tuple[int, int, int, int], str]:
    """``(z, x, y, scale) -> key`` of the layer's tiles in Redis."""
    found = {}
    for raw in client.scan_iter(match=f"{prefix}:fake:*"):
        key = raw.decode()
        z, x, y, last = key.split(":")[-4:]
        found[(int(z), int(x), int(y), int(last.split(".")[0]))] = key
    return found


def all_tiles(zooms: range) -> set[tuple[int, int, int, int]]:
    return {(z, x, y, 1) for z in zooms for x in range(2**z) for y in range(2**z)}


def bbox_of(query: MultiDict[str]) -> tuple[float, ...]:
    return tuple(round(float(value), 3) for value in query["bbox"].split(","))


def asked(query: MultiDict[str]) -> tuple[tuple[float, ...], str]:
    """What identifies a metatile in an exportImage call: its bbox and size (TileMatrix 0, 1
    and 2 each have one metatile, of the same bbox)."""
    return bbox_of(query), query["size"]


def expected_metatiles(zooms: range) -> set[tuple[tuple[float, ...], str]]:
    """``asked`` of every 4 x 4 metatile of WebMercatorQuad at ``zooms``."""
    grid = GridRegistry()["WebMercatorQuad"]
    found = set()
    for z in zooms:
        for row in range(0, 2**z, 4):
            for col in range(0, 2**z, 4):
                meta = metatile(grid, z, col, row, (4, 4), 0, 1)
                box = tuple(round(value, 3) for value in meta.bbox)
                found.add((box, f"{meta.width},{meta.height}"))
    return found


@pytest.fixture
def cache(redis_url: str, key_prefix: str) -> dict[str, Any]:
    return {"redis_url": redis_url, "prefix": key_prefix}


async def test_seeds_every_metatile_once_then_skips_them_all(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = SeedOptions("fake", (0, 3), state=tmp_path / "state.json")
    assert await run_seed(config(fake_upstream, cache), options) == 0

    assert len(fake_upstream.queries) == 1 + 1 + 1 + 4
    assert {asked(q) for q in fake_upstream.queries} == expected_metatiles(range(4))
    sizes = Counter(q["size"] for q in fake_upstream.queries)
    assert sizes == {"256,256": 1, "512,512": 1, "1024,1024": 5}
    stored = tiles_in(redis_client, key_prefix)
    assert set(stored) == all_tiles(range(4))  # 85 tiles
    for key in stored.values():
        assert TTL - 60 < redis_client.ttl(key) <= TTL
    assert not list(redis_client.scan_iter(match=f"{key_prefix}:lock:*"))
    out = summary(capsys.readouterr().out)
    assert out["tiles written"] == "85"
    assert out["upstream calls"] == "7"
    assert out["metatiles"] == "7 done, 0 skipped, 0 failed; 7 of 7 complete"
    assert out["errors"] == "0"
    assert int(out["bytes"].split()[0]) > 0
    assert not options.state.exists()  # nothing left to resume

    assert await run_seed(config(fake_upstream, cache), options) == 0
    assert len(fake_upstream.queries) == 7  # every tile was fresh
    out = summary(capsys.readouterr().out)
    assert out["metatiles"] == "0 done, 7 skipped, 0 failed; 7 of 7 complete"
    assert out["upstream calls"] == "0"


async def test_a_missing_or_stale_tile_makes_its_metatile_fetched_again(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    options = SeedOptions("fake", (3, 3), state=tmp_path / "state.json")
    assert await run_seed(config(fake_upstream, cache), options) == 0
    stored = tiles_in(redis_client, key_prefix)
    redis_client.delete(stored[(3, 6, 5, 1)])  # in metatile (4, 4)
    stale = TileEntry(b"old", "image/png", '"old"', time.time() - TTL - 1)
    redis_client.set(stored[(3, 1, 2, 1)], encode_entry(stale))  # in metatile (0, 0)

    assert await run_seed(config(fake_upstream, cache), options) == 0
    grid = GridRegistry()["WebMercatorQuad"]
    again = {
        (tuple(round(v, 3) for v in metatile(grid, 3, col, row, (4, 4), 0, 1).bbox), "1024,1024")
        for col, row in ((0, 0), (4, 4))
    }
    assert {asked(q) for q in fake_upstream.queries[4:]} == again
    assert len(fake_upstream.queries) == 4 + 2
    assert set(tiles_in(redis_client, key_prefix)) == all_tiles(range(3, 4))


async def test_seeds_under_the_generation_of_the_last_purge(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    redis_client.set(f"{key_prefix}:purge:generation:fake", 2)  # purged twice by the replicas
    options = SeedOptions("fake", (0, 0), state=tmp_path / "state.json")
    assert await run_seed(config(fake_upstream, cache), options) == 0
    [key] = tiles_in(redis_client, key_prefix).values()
    assert key.split(":")[2].endswith(".2")


async def test_bbox_limits_the_metatiles(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    # North-west: TileCol 0-1, TileRow 0-3 at TileMatrix 3, all in metatile (0, 0).
    options = SeedOptions(
        "fake", (0, 3), bbox=(-170.0, 10.0, -100.0, 80.0), state=tmp_path / "state.json"
    )
    assert await run_seed(config(fake_upstream, cache), options) == 0

    grid = GridRegistry()["WebMercatorQuad"]
    north_west = metatile(grid, 3, 0, 0, (4, 4), 0, 1)
    z3 = (tuple(round(v, 3) for v in north_west.bbox), "1024,1024")
    assert Counter(asked(q) for q in fake_upstream.queries) == {
        **dict.fromkeys(expected_metatiles(range(3)), 1),
        z3: 1,
    }
    z3 = {tile for tile in tiles_in(redis_client, key_prefix) if tile[0] == 3}
    assert z3 == {(3, x, y, 1) for x in range(4) for y in range(4)}


async def test_a_2x_set_seeds_its_base_at_scale_2(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    options = SeedOptions("fake", (0, 1), tms="WebMercatorQuad_2x", state=tmp_path / "state.json")
    assert await run_seed(config(fake_upstream, cache), options) == 0

    assert [q["size"] for q in fake_upstream.queries] == ["512,512", "1024,1024"]
    assert set(tiles_in(redis_client, key_prefix)) == {
        (z, x, y, 2) for z in (0, 1) for x in range(2**z) for y in range(2**z)
    }


async def test_failures_are_retried_with_backoff_then_succeed(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = []

    async def fail_twice(query: MultiDict[str]) -> web.Response:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= 2:
            return web.Response(status=500, text="Internal Server Error")
        return await BEHAVIOURS["ok"](query)

    monkeypatch.setitem(BEHAVIOURS, "fail_twice", fail_twice)
    fake_upstream.behaviour = "fail_twice"
    options = SeedOptions("fake", (0, 0), backoff=0.1, state=tmp_path / "state.json")
    assert await run_seed(config(fake_upstream, cache), options) == 0

    assert len(fake_upstream.queries) == 3
    assert calls[1] - calls[0] >= 0.1 and calls[2] - calls[1] >= 0.2  # doubling
    out = summary(capsys.readouterr().out)
    assert (out["upstream calls"], out["errors"], out["tiles written"]) == ("3", "0", "1")


async def test_failed_metatiles_are_counted_kept_and_retried_by_resume(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_upstream.behaviour = "http500"
    state = tmp_path / "state.json"
    options = SeedOptions("fake", (0, 1), retries=2, backoff=0.01, state=state)
    assert await run_seed(config(fake_upstream, cache), options) == 1

    assert len(fake_upstream.queries) == 2 * 3
    out = summary(capsys.readouterr().out)
    assert (out["errors"], out["upstream calls"], out["tiles written"]) == ("2", "6", "0")
    assert json.loads(state.read_text())["failed"] == [0, 1]

    fake_upstream.behaviour = "ok"
    resumed = SeedOptions("fake", (0, 1), backoff=0.01, state=state, resume=True)
    assert await run_seed(config(fake_upstream, cache), resumed) == 0
    assert len(fake_upstream.queries) == 6 + 2
    assert summary(capsys.readouterr().out)["errors"] == "0"
    assert not state.exists()


async def test_resume_refuses_a_state_made_for_other_arguments(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_upstream.behaviour = "http500"
    state = tmp_path / "state.json"
    options = SeedOptions("fake", (0, 1), retries=0, state=state)
    assert await run_seed(config(fake_upstream, cache), options) == 1
    capsys.readouterr()

    other = SeedOptions("fake", (0, 2), state=state, resume=True)
    assert await run_seed(config(fake_upstream, cache), other) == 2
    err = capsys.readouterr().err
    assert "made for another seed" in err and "zoom [0, 1] there, [0, 2] here" in err
    assert len(fake_upstream.queries) == 2


async def test_never_more_metatiles_at_once_than_the_concurrency(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, peak = 0, 0

    async def counting(query: MultiDict[str]) -> web.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        width, height = (int(v) for v in query["size"].split(","))
        body = encode_image("png", (width, height), (1, 2, 3))
        return web.Response(body=body, content_type="image/png")

    monkeypatch.setitem(BEHAVIOURS, "counting", counting)
    fake_upstream.behaviour = "counting"
    options = SeedOptions("fake", (0, 4), concurrency=3, state=tmp_path / "state.json")
    assert await run_seed(config(fake_upstream, cache), options) == 0

    assert len(fake_upstream.queries) == sum(METATILES.values())
    assert peak == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SeedOptions("nope", (0, 1)), "unknown layer 'nope' (configured: fake)"),
        (SeedOptions("fake", (0, 1), tms="Nope"), "is not served in TileMatrixSet 'Nope'"),
        (SeedOptions("fake", (5, 9)), "zoom 5-9 is outside 0-6"),
        (SeedOptions("fake", (0, 1), format="jpg"), "offers png, not 'jpg'"),
    ],
)
async def test_bad_arguments_exit_2_with_a_message(
    fake_upstream: FakeUpstream,
    cache: dict[str, Any],
    options: SeedOptions,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_seed(config(fake_upstream, cache), options) == 2
    assert message in capsys.readouterr().err
    assert fake_upstream.queries == []


async def test_the_memory_backend_works_and_says_it_is_pointless(
    fake_upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = SeedOptions("fake", (0, 3), state=tmp_path / "state.json")
    assert await run_seed(config(fake_upstream, {}), options) == 0
    assert len(fake_upstream.queries) == 7
    assert "gone when the seed ends" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--zoom", "5-3"], "the first level must not be above the second"),
        (["--zoom", "3-x"], "is not a range like 3-8"),
        (["--zoom", "1", "--bbox", "10,20,30"], "is not W,S,E,N in degrees"),
        (["--zoom", "1", "--bbox", "10,60,30,50"], "S < N"),
        (["--zoom", "1", "--concurrency", "0"], "must be at least 1"),
    ],
)
def test_the_command_line_refuses_malformed_arguments(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["seed", "--config", str(tmp_path / "unread.yaml"), "--layer", "fake", *arguments]
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_state_keeps_a_low_water_mark_and_the_finished_above_it(tmp_path: Path) -> None:
    state = SeedState(tmp_path / "s.json", {"layer": "fake", "metatiles": 8}, "g.0")
    for index, ok in [(0, True), (2, True), (3, False), (5, True)]:
        state.finish(index, ok)
    assert (state.mark, state.above, state.failed) == (1, {2, 3, 5}, {3})
    assert list(state.pending()) == [1, 3, 4, 6, 7]
    state.finish(1, True)
    assert (state.mark, state.above) == (4, {5})
    state.finish(3, True)  # a failed one that succeeds on resume
    assert (state.failed, state.complete, state.unfinished) == (set(), 5, 3)


async def _cli(
    workdir: Path, name: str, *args: str
) -> tuple[asyncio.subprocess.Process, Path, Path]:
    """``python -m gateway seed ...`` of this worktree, output to files (no pipe to fill)."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "seed", *args, cwd=REPO, env=env,
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
    return process, out, err


async def test_ctrl_c_saves_the_state_and_resume_finishes_without_duplicates(
    fake_upstream: FakeUpstream, cache: dict[str, Any], tmp_path: Path
) -> None:
    fake_upstream.behaviour = "slow_ok"  # 0.3 s per exportImage
    config_file, state = tmp_path / "gateway.yaml", tmp_path / "seed-state.json"
    config_file.write_text(
        yaml.safe_dump({"cache": cache, "layers": {"fake": layer(fake_upstream.url)}})
    )
    common = ["--config", str(config_file), "--layer", "fake", "--zoom", "0-4"]
    common += ["--state", str(state), "--progress"]
    total = sum(METATILES.values())

    process, out, err = await _cli(tmp_path, "first", *common, "--concurrency", "2")
    async with asyncio.timeout(30):
        while len(fake_upstream.queries) < 4:
            assert process.returncode is None, err.read_text()
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 130, err.read_text()
    first = len(fake_upstream.queries)
    assert 4 <= first < total
    assert summary(out.read_text())["upstream calls"] == str(first)
    assert "finishing the running ones" in err.read_text()
    assert re.search(r"\d+/23 \[", err.read_text())  # the progress bar
    saved = json.loads(state.read_text())
    assert saved["mark"] + len(saved["above"]) == first and saved["failed"] == []

    process, out, err = await _cli(tmp_path, "resume", *common, "--concurrency", "4", "--resume")
    async with asyncio.timeout(30):
        assert await process.wait() == 0, err.read_text()
    resumed = summary(out.read_text())
    assert resumed["upstream calls"] == str(total - first)
    assert resumed["metatiles"] == f"{total - first} done, 0 skipped, 0 failed; 23 of 23 complete"
    metatiles = Counter(asked(query) for query in fake_upstream.queries)
    assert set(metatiles) == expected_metatiles(range(5))
    assert set(metatiles.values()) == {1}  # nothing asked twice
    assert not state.exists()
