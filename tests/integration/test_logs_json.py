"""``server.log_format: json``: one JSON object a line, each request's request id (the trusted
proxy's or a generated one) in its access line, on its answer and on its upstream call, and no
token anywhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.conftest import free_port
from tests.integration.conftest import FakeUpstream

WORKTREE = Path(__file__).resolve().parents[2]
SECRET = "tok-secret-51d0"


async def test_json_lines_carry_the_request_id_and_no_token(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port, "trust_proxy": True, "log_format": "json"},
                "layers": {"fake": {"url": fake_upstream.url, "formats": ["png"]}},
                # Exports above one pixel are not cached: they are streamed.
                "proxy": {
                    "cache_max_pixels": 1,
                    "services": [
                        {
                            "url": str(fake_upstream.server.make_url("/arcgis/rest/services")),
                            "allow": ["fake/ImageServer"],
                        }
                    ],
                },
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=WORKTREE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            sent = "proxy-id-1234"
            path = f"/tiles/fake/2/1/1.png?token={SECRET}"
            async with session.get(base + path, headers={"X-Request-Id": sent}) as response:
                assert response.status == 200
                assert response.headers["X-Request-Id"] == sent
            # A hit (answered before any front runs) and a streamed answer (the proxy's)
            # carry the client's id too.
            for again, streamed in (
                (path, "HIT"),
                (
                    "/arcgis/rest/services/fake/ImageServer/exportImage?f=image&format=png&bbox=0,0,1,1&size=8,8",
                    None,
                ),
            ):
                headers = {"X-Request-Id": f"again-{streamed or 'streamed'}"}
                async with session.get(base + again, headers=headers) as response:
                    assert response.status == 200
                    assert response.headers.get("X-Cache") == streamed
                    assert response.headers["X-Request-Id"] == headers["X-Request-Id"]
            # Not a safe id (a space, too long): replaced by a generated one; each of these
            # tiles (in metatiles of their own) calls the upstream.
            generated = []
            for unsafe, tile in (("two words", "5/20/10"), ("x" * 200, "6/50/20")):
                async with session.get(
                    f"{base}/tiles/fake/{tile}.png", headers={"X-Request-Id": unsafe}
                ) as response:
                    assert response.status == 200
                    got = response.headers["X-Request-Id"]
                    assert got != unsafe
                    assert len(got) == 32
                    generated.append(got)
            async with session.get(f"{base}/nowhere") as response:
                assert response.status == 404
                missing = response.headers["X-Request-Id"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    text = err.decode()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
    access = [line for line in lines if line["logger"] == "gateway.access"]
    first = next(line for line in access if line.get("request_id") == sent)
    assert first["method"] == "GET"
    assert first["path"] == "/tiles/fake/2/1/1.png?token=[redacted]"
    assert first["status"] == 200
    assert first["cache"] == "MISS"
    assert first["layer"] == "fake"
    assert first["duration"] >= first["upstream_duration"] > 0
    # The upstream got the same ids.
    assert fake_upstream.request_ids == [sent, "again-streamed", *generated]
    # An error answer has its id too, in its line and its header.
    unknown = next(line for line in access if line.get("request_id") == missing)
    assert (unknown["status"], unknown["path"]) == (404, "/nowhere")
