"""The cache engine from the command line: ``serve --workers`` and ``purge``, as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import redis
import yaml

from tests.conftest import free_port
from tests.integration.conftest import FakeUpstream

WORKTREE = Path(__file__).resolve().parents[2]


def write_config(path: Path, upstream: str, redis_url: str, prefix: str, port: int = 0) -> Path:
    config = {
        "server": {"port": port},
        "cache": {"redis_url": redis_url, "prefix": prefix},
        "layers": {"fake": {"url": upstream, "formats": ["png"], "meta_size": [2, 2]}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str) -> subprocess.Popen[bytes]:
    # The checkout's own package, whatever the virtualenv's editable install points at.
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=WORKTREE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def test_two_workers_share_the_port_and_make_one_upstream_call(
    fake_upstream: FakeUpstream, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    fake_upstream.behaviour = "slow_ok"
    port = free_port()
    config = write_config(tmp_path / "gw.yaml", fake_upstream.url, redis_url, key_prefix, port)
    process = cli("serve", "--config", str(config), "--workers", "2")
    try:
        await wait_listening(port, process)
        await asyncio.sleep(1.0)  # the second worker binds after the first
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) >= 2
        async with aiohttp.ClientSession() as session:

            async def get() -> tuple[int, str]:
                async with session.get(f"http://127.0.0.1:{port}/tiles/fake/4/3/5.png") as r:
                    await r.read()
                    return r.status, r.headers["X-Cache"]

            answers = await asyncio.gather(*(get() for _ in range(200)))
        assert Counter(status for status, _ in answers) == {200: 200}
        assert Counter(cache for _, cache in answers)["MISS"] == 1
        assert len(fake_upstream.queries) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0


async def test_purge_command(
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "gw.yaml", fake_upstream.url, redis_url, key_prefix)
    seed = cli(
        "seed",
        "--config",
        str(config),
        "--layer",
        "fake",
        "--zoom",
        "0-2",
        "--state",
        str(tmp_path / "seed.json"),
    )
    status = await asyncio.to_thread(seed.wait, 60)
    assert status == 0, seed.stdout.read() if seed.stdout else ""
    stored = list(redis_client.scan_iter(match=f"{key_prefix}:fake:*"))
    assert len(stored) == 1 + 4 + 16

    partial = cli(
        "purge", "--config", str(config), "--layer", "fake", "--zoom", "2", "--bbox=-180,0,0,85"
    )
    assert await asyncio.to_thread(partial.wait, 60) == 0
    output = partial.stdout.read().decode() if partial.stdout else ""
    assert "purged 4 cached tiles" in output, output
    assert len(list(redis_client.scan_iter(match=f"{key_prefix}:fake:*"))) == 21 - 4

    whole = cli("purge", "--config", str(config), "--layer", "fake")
    assert await asyncio.to_thread(whole.wait, 60) == 0
    assert redis_client.get(f"{key_prefix}:purge:generation:fake") == b"1"

    bad = cli("purge", "--config", str(config), "--layer", "nope")
    assert await asyncio.to_thread(bad.wait, 60) == 2
