"""Instructions per L1 hit, counted by valgrind's callgrind: the hit path's cost on a busy machine.

    .venv/bin/python bench/instructions.py [--gateway-root DIR ...] [--requests 500]
                                           [--log-level INFO]

wrk's requests per second swing by half from one round to the next when other work shares the
machine (bench/README, "How sound the latest (a) figures are"); the instructions a process runs
for a request do not. Each gateway (this checkout's, and one per ``--gateway-root``, a checkout
whose ``gateway`` package is imported instead) is started under callgrind with the memory cache,
24 tiles of the reference ImageServer's ``bluemarble`` are made L1 hits, callgrind's counters are
zeroed, ``--requests`` hits are sent one after the other on one keep-alive connection, and the
counters are dumped: instructions per request, for XYZ, WMTS REST and OGC API paths. The
baseline is ``bench/servers.py dict`` under callgrind on the same XYZ paths (one aiohttp handler
answering the same bytes and headers from a dict), and each figure is printed with its ratio to
it. ``--log-level`` is the gateway's (INFO, the default of ``serve``, writes an access line per
request; WARNING turns the access log off, as ``bench/cache.py`` runs it).

Needs ``valgrind`` and ``callgrind_control`` on the PATH (Debian: valgrind). Python's own
allocator is replaced by malloc (``PYTHONMALLOC=malloc``) as valgrind recommends. Takes about a
minute per gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACCEPT = "image/webp,image/*,*/*"
_TILES = [(x, y) for x in range(6) for y in range(4)]
PATHS = {
    "XYZ": [f"/tiles/bm/3/{x}/{y}.jpg" for x, y in _TILES],
    "WMTS REST": [f"/wmts/1.0.0/bm/default/WebMercatorQuad/3/{y}/{x}.jpg" for x, y in _TILES],
    "OGC API": [
        f"/ogcapi/collections/bm/map/tiles/WebMercatorQuad/3/{y}/{x}?f=jpg" for x, y in _TILES
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, seconds: float = 900.0) -> None:
    """Until ``url`` answers 200 (a process under callgrind starts 50 times slower)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                answer.read()
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"no answer from {url} within {seconds:.0f} s")


async def send(port: int, paths: list[str], count: int, *, hits: bool) -> None:
    """``count`` GETs of ``paths`` in turn on one connection; with ``hits``, each must be one."""
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            url = f"http://127.0.0.1:{port}{paths[n % len(paths)]}"
            async with session.get(url, headers={"Accept": ACCEPT}) as answer:
                await answer.read()
                if answer.status != 200 or (hits and answer.headers.get("X-Cache") != "HIT"):
                    raise SystemExit(f"{url}: {answer.status} {answer.headers.get('X-Cache')}")


class Counted:
    """A process under callgrind whose counters are zeroed and dumped around a load."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
            cwd=cwd,
            env={**env, "PYTHONMALLOC": "malloc"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def instructions(self, port: int, paths: list[str], count: int, *, hits: bool) -> float:
        """Instructions per request of ``count`` requests of ``paths``."""
        subprocess.run(
            ["callgrind_control", "-z", str(self.process.pid)], check=True, capture_output=True
        )
        asyncio.run(send(port, paths, count, hits=hits))
        before = set(self.out.parent.glob(self.out.name + ".*"))
        subprocess.run(
            ["callgrind_control", "-d", str(self.process.pid)], check=True, capture_output=True
        )
        deadline = time.monotonic() + 60
        while not (dumps := set(self.out.parent.glob(self.out.name + ".*")) - before):
            if time.monotonic() > deadline:
                raise SystemExit("callgrind wrote no dump")
            time.sleep(0.2)
        (dump,) = dumps
        for _ in range(100):
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1]) / count
            time.sleep(0.2)
        raise SystemExit(f"no totals in {dump}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--gateway-root", type=Path, action="append", default=[])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="instructions-"))
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "imageserver", "--port", str(upstream_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, dict[str, float]] = {}
    manifest: list[dict[str, object]] = []
    try:
        wait_for(
            f"http://127.0.0.1:{upstream_port}/arcgis/rest/services/bluemarble/ImageServer?f=json"
        )
        for number, root in enumerate([ROOT, *args.gateway_root]):
            port = free_port()
            config = work / f"gateway-{number}.yaml"
            layer = {
                "url": f"http://127.0.0.1:{upstream_port}/arcgis/rest/services/bluemarble/ImageServer"
            }
            config.write_text(
                yaml.safe_dump(
                    {
                        "server": {"port": port},
                        "cache": {"backend": "memory"},
                        "layers": {"bm": layer},
                    }
                )
            )
            env = {**os.environ, "PYTHONPATH": str(root.resolve())}
            command = [
                sys.executable,
                "-m",
                "gateway",
                "--log-level",
                args.log_level,
                "serve",
                "--config",
                str(config),
            ]
            gateway = Counted(command, root, env, work / f"gateway-{number}.out")
            try:
                wait_for(f"http://127.0.0.1:{port}/healthz")
                for paths in PATHS.values():
                    # A miss, then a hit that prepares the ready answer.
                    asyncio.run(send(port, paths, 2 * len(paths), hits=False))
                if not manifest:
                    manifest = record(port, work)
                results[str(root)] = {
                    front: gateway.instructions(port, paths, args.requests, hits=True)
                    for front, paths in PATHS.items()
                }
            finally:
                gateway.stop()
        (work / "manifest.json").write_text(json.dumps({"tiles": manifest}))
        port = free_port()
        baseline = Counted(
            [
                sys.executable,
                str(ROOT / "bench" / "servers.py"),
                "dict",
                "--port",
                str(port),
                "--manifest",
                str(work / "manifest.json"),
            ],
            ROOT,
            dict(os.environ),
            work / "dict.out",
        )
        try:
            wait_for(f"http://127.0.0.1:{port}{PATHS['XYZ'][0]}")
            floor = baseline.instructions(port, PATHS["XYZ"], args.requests, hits=False)
        finally:
            baseline.stop()
    finally:
        upstream.terminate()
    print(
        f"instructions per request, {args.requests} requests each (callgrind), "
        "and the ratio to the dict baseline"
    )
    print(f"{'dict baseline (XYZ paths)':60} {floor:>12,.0f}  1.00")
    for root, fronts in results.items():
        for front, count in fronts.items():
            print(f"{root + ' ' + front:60} {count:>12,.0f}  {count / floor:.2f}")


def record(port: int, work: Path) -> list[dict[str, object]]:
    """The XYZ tiles' bytes and headers as the gateway answers them, for the dict baseline."""
    tiles = []
    for number, path in enumerate(PATHS["XYZ"]):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"Accept": ACCEPT}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            body = answer.read()
            headers = {
                name: value
                for name, value in answer.headers.items()
                if name.lower() not in ("content-length", "date", "server", "x-request-id")
            }
        file = work / f"tile-{number}.bin"
        file.write_bytes(body)
        tiles.append({"path": path, "file": str(file), "headers": headers, "key": "", "skip": 0})
    return tiles


if __name__ == "__main__":
    main()
