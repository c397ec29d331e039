"""Memory of a gateway with the memory cache: resident size after many distinct tiles, against
the configured bounds plus a stated overhead.

One command (from the repository root)::

    .venv/bin/python bench/memory.py [--tiles 20000] [--memory-mib 32] [--l1-mib 16]

It starts, on free ports of 127.0.0.1, an upstream ImageServer stand-in in this process (its
service info, and an exportImage answering every call with the same pre-encoded 256 x 256
JPEG of noise, so the gateway's time goes to caching, not rendering) and a gateway process
(``python -m gateway serve``, memory cache, ``meta_size: [1, 1]`` so each tile is the upstream's
bytes as they came, ``cache.memory_max_bytes`` and ``cache.l1_max_bytes`` as given). It reads
``--warm`` tiles, notes the gateway's resident size (VmRSS), reads ``--tiles`` distinct
TileMatrix 8 tiles (each a miss, so each stored), and notes VmRSS again and its peak (VmHWM).

The check: the growth of VmRSS from the warm reading to the end is at most the two cache
bounds plus ``--overhead-mib`` (what the tiles cost beyond their counted bytes: allocator
arenas and fragmentation, the socket buffers of the load). L1 and the memory backend hold the
same entry objects for a tile in both, so their bounds add up only in the worst case.
Exit status 0 when it holds, 1 otherwise. ``--gateway-root DIR`` runs the gateway of another
checkout (its ``.venv``), and ``--unbounded`` leaves ``cache.memory_max_bytes`` out of the
config, for a checkout that has no such setting: the measurement then shows the growth the
bound prevents.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "/arcgis/rest/services/noise/ImageServer"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def noise_jpeg(quality: int) -> bytes:
    """A 256 x 256 JPEG of smoothed noise: roughly the size of an orthophoto tile."""
    noise = Image.effect_noise((64, 64), 64).resize((256, 256), Image.Resampling.BICUBIC)
    image = Image.merge("RGB", (noise, noise.rotate(90), noise.rotate(180)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def upstream_app(tile: bytes) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        return web.json_response({"name": "noise", "type": "ImageServer", "currentVersion": 11.1})

    async def export_image(request: web.Request) -> web.Response:
        return web.Response(body=tile, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get(SERVICE, info)
    app.router.add_get(SERVICE + "/exportImage", export_image)
    return app


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB (``/proc/<pid>/status``)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


async def read_tiles(port: int, tiles: Sequence[tuple[int, int, int]], connections: int) -> int:
    """GET every tile with ``connections`` at a time; how many were 200 misses."""
    queue: asyncio.Queue[tuple[int, int, int]] = asyncio.Queue()
    for tile in tiles:
        queue.put_nowait(tile)
    misses = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal misses
        while not queue.empty():
            z, x, y = queue.get_nowait()
            async with session.get(f"http://127.0.0.1:{port}/tiles/noise/{z}/{x}/{y}.jpg") as r:
                await r.read()
                misses += r.status == 200 and r.headers.get("X-Cache") == "MISS"

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return misses


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the gateway did not listen within 60 s")


async def run(args: argparse.Namespace) -> int:
    tile = noise_jpeg(args.quality)
    runner = web.AppRunner(upstream_app(tile), access_log=None)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()

    root = Path(args.gateway_root).resolve() if args.gateway_root else ROOT
    python = root / ".venv" / "bin" / "python"
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    port = free_port()
    cache: dict[str, int | str] = {"backend": "memory", "l1_max_bytes": args.l1_mib * MIB}
    if not args.unbounded:
        cache["memory_max_bytes"] = args.memory_mib * MIB
    config = {
        "server": {"port": port},
        "cache": cache,
        "layers": {
            "noise": {
                "url": f"http://127.0.0.1:{upstream_port}{SERVICE}",
                "formats": ["jpg"],
                "meta_size": [1, 1],
            }
        },
    }
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(config))
    log = workdir / "gateway.log"
    command = [
        str(python if python.exists() else sys.executable),
        "-m",
        "gateway",
        "--log-level",
        "WARNING",
        "serve",
        "--config",
        str(workdir / "gateway.yaml"),
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with log.open("wb") as output:
        gateway = subprocess.Popen(command, cwd=root, env=env, stdout=output, stderr=output)
    try:
        await asyncio.to_thread(wait_for_port, port, gateway, log)
        z = 8
        everything = [(z, x, y) for y in range(2**z) for x in range(2**z)]
        warm, load = everything[: args.warm], everything[args.warm : args.warm + args.tiles]
        await read_tiles(port, warm, args.connections)
        before = status_kib(gateway.pid)
        started = time.monotonic()
        misses = await read_tiles(port, load, args.connections)
        seconds = time.monotonic() - started
        after = status_kib(gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(30)
        await runner.cleanup()

    growth = (after["VmRSS"] - before["VmRSS"]) / 1024
    stored = len(tile) * misses / MIB
    bound = (0 if args.unbounded else args.memory_mib) + args.l1_mib
    allowed = bound + args.overhead_mib
    ok = not args.unbounded and growth <= allowed
    print(f"gateway: {root} ({'no memory bound' if args.unbounded else 'bounded'})")
    print(
        f"cache: memory_max_bytes {'-' if args.unbounded else f'{args.memory_mib} MiB'}, "
        f"l1_max_bytes {args.l1_mib} MiB; tile {len(tile)} bytes"
    )
    print(
        f"tiles: {args.warm} warm, then {args.tiles} distinct ({misses} misses, "
        f"{stored:.0f} MiB of tile bytes) in {seconds:.0f} s with {args.connections} connections"
    )
    print(
        f"VmRSS: {before['VmRSS'] / 1024:.0f} MiB after warming, {after['VmRSS'] / 1024:.0f} MiB "
        f"after the load (peak {after['VmHWM'] / 1024:.0f} MiB): growth {growth:.0f} MiB"
    )
    verdict = "holds" if ok else ("n/a: unbounded" if args.unbounded else "FAILS")
    print(
        f"check: growth <= bounds {bound} MiB + overhead {args.overhead_mib} MiB = {allowed} MiB: "
        f"{verdict}"
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=20_000, help="distinct tiles read")
    parser.add_argument("--warm", type=int, default=200, help="tiles read before the baseline")
    parser.add_argument("--memory-mib", type=int, default=32, help="cache.memory_max_bytes")
    parser.add_argument("--l1-mib", type=int, default=16, help="cache.l1_max_bytes")
    parser.add_argument("--overhead-mib", type=int, default=24, help="allowance beyond bounds")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the tile")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--gateway-root", help="checkout whose gateway runs (its .venv)")
    parser.add_argument("--unbounded", action="store_true", help="no cache.memory_max_bytes")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
