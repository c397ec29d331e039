"""Graceful shutdown: SIGTERM (how Kubernetes, systemd and ``serve --workers`` stop a process)
lets the requests in flight be answered, on both event loops and with one or two workers."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.server import SHUTDOWN_TIMEOUT
from tests.conftest import free_port
from tests.integration.conftest import FakeUpstream
from tests.integration.test_cli_cache import cli, wait_listening

IN_FLIGHT = 20


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_sigterm_answers_the_requests_in_flight(
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop: str,
    workers: int,
) -> None:
    # Every exportImage takes 3 s; 20 tiles of two 4 x 4 metatiles are two upstream calls.
    fake_upstream.behaviour = "slow"
    port = free_port()
    config = {
        "server": {"port": port},
        "cache": {"backend": "memory"},
        "layers": {"fake": {"url": fake_upstream.url, "formats": ["png"], "meta_size": [4, 4]}},
    }
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("TILE_GATEWAY_LOOP", loop)
    process = cli("serve", "--config", str(tmp_path / "gw.yaml"), "--workers", str(workers))
    try:
        await wait_listening(port, process)
        if workers > 1:
            await asyncio.sleep(1.0)  # the second worker binds after the first
        async with aiohttp.ClientSession() as session:

            async def get(x: int, y: int) -> int:
                async with session.get(f"http://127.0.0.1:{port}/tiles/fake/3/{x}/{y}.png") as r:
                    await r.read()
                    return r.status

            tiles = [(x, y) for x in range(8) for y in range(4)][:IN_FLIGHT]
            answers = asyncio.gather(*(get(x, y) for x, y in tiles))
            while len(fake_upstream.queries) < 2:  # every request is in, the fetches are on
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            statuses = await answers
        assert Counter(statuses) == {200: IN_FLIGHT}
        status = await asyncio.to_thread(process.wait, SHUTDOWN_TIMEOUT + 10)
        assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read().decode() if process.stdout else ""
    assert status == 0, output
    assert "Traceback" not in output, output


async def test_sigterm_while_idle_exits_at_once(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = free_port()
    config = {
        "server": {"port": port},
        "cache": {"backend": "memory"},
        "layers": {"fake": {"url": fake_upstream.url, "formats": ["png"]}},
    }
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
    process = cli("serve", "--config", str(tmp_path / "gw.yaml"))
    await wait_listening(port, process)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 5) == 0
    assert process.stdout is not None
    assert "Traceback" not in process.stdout.read().decode()


def test_an_unknown_event_loop_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TILE_GATEWAY_LOOP", "trio")
    process = cli("check-config", str(tmp_path / "none.yaml"))
    assert process.wait(30) == 2
    output = process.stdout.read().decode() if process.stdout else ""
    assert "TILE_GATEWAY_LOOP must be uvloop or asyncio, not 'trio'" in output
    assert "Traceback" not in output
