"""Cache benchmark of the tile gateway against bare baselines, with pass/fail bounds.

One command (from the repository root)::

    .venv/bin/python bench/cache.py [--duration 5s] [--rounds 2] [--seed-zoom 0-7] ...

It starts everything it needs on free ports, on this machine: its own ``redis-server``
(``--save ''``), the reference ImageServer with an exportImage counter
(``bench/servers.py upstream``), gateways (``python -m gateway serve``, ``--log-level
WARNING`` unless stated) and the bare baselines (``bench/servers.py dict|redis|proxy``, one
process each, uvloop like the gateway). Then it measures, with ``wrk`` for the loads:

a. tile hits from L1 (24 warm tiles) against a bare aiohttp handler serving the same bytes
   and headers from a dict: requests/s ratio, bound >= 0.80, for XYZ, WMTS RESTful and OGC
   API tile paths of the same tiles (all with a browser's ``Accept``), each against the same
   baseline, and only when every answer of the runs was a 2xx ``X-Cache: HIT``;
b. tile hits from Redis with L1 off (``cache.l1_max_bytes: 0``) against a bare handler doing
   one redis-py ``GET`` of the gateway's entry per request: ratio, bound >= 0.85;
c. 500 requests for one cold tile, all written on 500 open connections before the first
   answer byte comes back (the ImageServer holds exportImage 1 s so they overlap the fetch):
   exportImage calls, bound exactly 1, with one gateway process and with ``--workers 2``
   sharing the Redis (both workers must have answered some);
d. cold misses with metatiles off (``meta_size: [1, 1]``), 1 connection: p50 through the
   gateway over p50 through a bare aiohttp proxy (one ``ClientSession.get`` per request, no
   cache) measured in the same rounds, bound <= 1.10 with a memory cache and <= 1.20 with
   Redis; the same exportImage calls straight to the ImageServer are measured too (ratios and
   milliseconds as information, no bound);
e. ``tile-gateway seed`` of zoom 0-7 of ``bluemarble`` with 4 x 4 metatiles and with 1 x 1:
   upstream calls, tiles and tiles/s from its summary (no bound);
f. resident memory (VmRSS) of the gateway process of (a), L1 = 64 MiB: idle, after the hit
   load, and after reading every seeded z0-7 tile through it so that L1 is full (no bound).

Every comparison runs its servers in an order that rotates by one each round (ABBA... for two);
figures compare medians. ``--gateway-root DIR`` runs the gateway (serve and seed) from another
checkout, e.g. a worktree of an older commit with its own ``.venv``, so that one script measures
before and after. It prints a Markdown report with the machine, the exact
commands and every figure, and keeps it with the raw outputs (wrk, logs, configs, path lists)
under ``bench/results/cache-<UTC timestamp>/`` (git-ignored). Exit status 0 when every bound
holds, 1 otherwise. See bench/README.md for the method and the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import (
    HIT_TILES,
    cold_tile,
    export_path,
    machine_description,
    parse_duration,
    tile_path,
    wrk_version,
)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PATHS_LUA = BENCH_DIR / "paths.lua"
LIST_LUA = BENCH_DIR / "list.lua"
SERVERS = BENCH_DIR / "servers.py"

LAYER = "bluemarble"
EXT = "jpg"
SERVICE_PATH = f"/arcgis/rest/services/{LAYER}/ImageServer"
# The demo layer's fixed exportImage parameters (config/demo.yaml), which export_path() sends.
EXPORT = {"interpolation": "RSP_BilinearInterpolation", "compressionQuality": 85}
L1_BYTES = 64 * 2**20
COLD_ZOOM = 9
# Response headers the server adds by itself: not copied into the baselines' answers.
AUTOMATIC_HEADERS = {"content-length", "date", "server", "connection", "keep-alive"}

BOUND_A = 0.80
BOUND_B = 0.85
BOUND_C = 1
# (d): cold-miss p50 through the gateway over p50 through the bare aiohttp proxy, by backend.
BOUND_D = {"memory": 1.10, "redis": 1.20}


# --------------------------------------------------------------------------- small helpers


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    """Status, headers (names lower-cased) and body of one GET."""

    status: int
    headers: dict[str, str]
    body: bytes


def fetch(
    url: str, method: str = "GET", timeout: float = 60.0, headers: dict[str, str] | None = None
) -> Answer:
    """One request to ``url`` (with request ``headers``); HTTP errors are answers too."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return Answer(response.status, headers, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def fetch_json(url: str, method: str = "GET") -> Any:
    """The JSON document at ``url``."""
    return json.loads(fetch(url, method).body)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB (from /proc/<pid>/status)."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def workers_of(pid: int) -> list[int]:
    """The multiprocessing workers of ``tile-gateway serve --workers`` process ``pid`` (its
    children running ``spawn_main``, not the resource tracker)."""
    return [
        child
        for child in children_of(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (one per SO_REUSEPORT worker)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        count += parts[1] == wanted and parts[3] == "0A"
    return count


def ms(microseconds: float) -> str:
    """Microseconds as milliseconds for the report."""
    return f"{microseconds / 1000:.2f} ms"


def mib(kib: float) -> str:
    """KiB as MiB for the report."""
    return f"{kib / 1024:.0f} MiB"


def mark(ok: bool) -> str:
    """The pass/fail mark of a bound."""
    return "✅ pass" if ok else "❌ FAIL"


def shell(command: Sequence[str]) -> str:
    """``command`` as one line to paste in a shell (paths relative to the repository)."""
    out = []
    for part in command:
        text = str(part).replace(str(ROOT) + "/", "")
        out.append(
            f"'{text}'" if (not text or any(c in text for c in " *?[]{}()$|;&<>'\"")) else text
        )
    return " ".join(out)


# --------------------------------------------------------------------------- processes


@dataclass
class Server:
    """A server process started by the benchmark."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    command: list[str]

    @property
    def pid(self) -> int:
        """Process id (of the parent, with several workers)."""
        return self.process.pid

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"


class Bench:
    """Everything one run uses: output folder, environment, started servers and commands."""

    def __init__(self, args: argparse.Namespace, out_dir: Path) -> None:
        self.args = args
        self.out = out_dir
        self.stack = ExitStack()
        self.commands: list[tuple[str, str]] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env.pop("TILE_GATEWAY_LOG_LEVEL", None)
        self.python = sys.executable
        # The gateway under test: this checkout, or --gateway-root DIR run from DIR with DIR's
        # own virtualenv (its python imports DIR's gateway package: cwd and PYTHONPATH are DIR).
        root = getattr(args, "gateway_root", None)
        self.gateway_root = Path(root).resolve() if root else ROOT
        self.gateway_python = self.python
        self.gateway_env = self.env
        if self.gateway_root != ROOT:
            venv_python = self.gateway_root / ".venv/bin/python"
            if not (self.gateway_root / "gateway/__main__.py").is_file():
                raise SystemExit(f"bench: no gateway package in {self.gateway_root}")
            if venv_python.exists():
                self.gateway_python = str(venv_python)
            self.gateway_env = {**self.env, "PYTHONPATH": str(self.gateway_root)}
        self.load_before = f"{os.getloadavg()[0]:.2f}"

    def note(self, message: str) -> None:
        """Progress on stderr."""
        print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    def pinned(self, command: list[str], cpus: str | None) -> list[str]:
        """``command`` under ``taskset -c cpus`` when pinning is on."""
        if cpus is None or not self.args.pin:
            return command
        return ["taskset", "-c", cpus, *command]

    def start(
        self,
        name: str,
        command: list[str],
        port: int,
        ready: Callable[[], bool],
        *,
        record: str | None = None,
        timeout: float = 120.0,
        gateway: bool = False,
    ) -> Server:
        """Start ``command`` (its output in ``<name>.log``), wait until ``ready()``, and stop it
        when the run ends (SIGTERM, then SIGKILL of its process group after 20 s). With
        ``gateway``, in the environment and folder of the gateway under test."""
        log = self.out / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.gateway_env if gateway else self.env,
                cwd=self.gateway_root if gateway else ROOT,
                start_new_session=True,
            )
        server = Server(name, process, port, log, command)
        self.stack.callback(self.stop, server)
        if record:
            self.commands.append((record, shell(command)))
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise SystemExit(f"bench: {name} exited ({process.returncode}); see {log}")
            try:
                if ready():
                    return server
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {name} not ready after {timeout:g} s; see {log}")
            time.sleep(0.2)

    def stop(self, server: Server) -> None:
        """Stop a server started by ``start`` (only that process and its own children)."""
        process = server.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def http_ready(self, url: str) -> Callable[[], bool]:
        """A readiness check: ``url`` answers 200."""
        return lambda: fetch(url, timeout=2).status == 200

    def gateway(
        self,
        name: str,
        config: dict[str, Any],
        *,
        workers: int = 1,
        log_level: str = "WARNING",
        cpus: str | None = None,
        record: str | None = None,
    ) -> Server:
        """Write ``config`` (its port filled in) and start ``python -m gateway serve``."""
        port = free_port()
        config = json.loads(json.dumps(config))
        config["server"] = {"host": "127.0.0.1", "port": port}
        path = self.out / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        command = [self.gateway_python, "-m", "gateway", "--log-level", log_level, "serve"]
        command += ["--config", str(path)]
        if workers > 1:
            command += ["--workers", str(workers)]
        return self.start(
            name,
            self.pinned(command, cpus),
            port,
            lambda: (
                listeners(port) >= workers
                and fetch(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
            ),
            record=record,
            gateway=True,
        )

    def baseline(
        self, name: str, kind: str, manifest: Path, redis_url: str | None, record: str
    ) -> Server:
        """Start a bare baseline server of ``bench/servers.py``."""
        port = free_port()
        command = [self.python, str(SERVERS), kind, "--port", str(port)]
        command += ["--manifest", str(manifest)]
        if redis_url:
            command += ["--redis-url", redis_url]
        return self.start(
            name,
            self.pinned(command, self.args.server_cpu),
            port,
            lambda: listeners(port) >= 1,
            record=record,
        )


def start_redis(bench: Bench) -> tuple[Any, str, str]:
    """The run's own ``redis-server`` (nothing saved, pinned with the load): a redis-py
    client, its URL and its version."""
    import redis as redis_py

    port = free_port()
    bench.start(
        "redis",
        bench.pinned(
            [
                bench.args.redis_server,
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            bench.args.load_cpu,
        ),
        port,
        lambda: redis_py.Redis(port=port).ping(),
        record="Redis of the run",
    )
    redis = redis_py.Redis(port=port)
    return redis, f"redis://127.0.0.1:{port}/0", f"Redis {redis.info('server')['redis_version']}"


def start_upstream(bench: Bench) -> Server:
    """The reference ImageServer with the exportImage counter (``bench/servers.py upstream``)."""
    port = free_port()
    return bench.start(
        "imageserver",
        [bench.python, str(SERVERS), "upstream", "--port", str(port)],
        port,
        bench.http_ready(f"http://127.0.0.1:{port}/_bench/stats"),
        record="reference ImageServer with exportImage counter",
    )


def upstream_stats(upstream: Server) -> dict[str, Any]:
    """The counters of ``bench/servers.py upstream`` (exportImage calls, bytes, kinds)."""
    return dict(fetch_json(f"{upstream.url}/_bench/stats"))


@dataclass(frozen=True)
class UpstreamUse:
    """What the ImageServer answered between two ``upstream_stats``: exportImage calls, bytes
    of their answers, and both by kind (format, size, SRs) with the latest query of each."""

    calls: int
    bytes: int
    kinds: dict[str, dict[str, Any]]

    @classmethod
    def between(cls, before: dict[str, Any], after: dict[str, Any]) -> UpstreamUse:
        """The use from counters ``before`` to counters ``after``."""
        kinds = {}
        for kind, now in after["kinds"].items():
            then = before["kinds"].get(kind, {"calls": 0, "bytes": 0})
            if now["calls"] > then["calls"]:
                kinds[kind] = {
                    "calls": now["calls"] - then["calls"],
                    "bytes": now["bytes"] - then["bytes"],
                    "example": now["example"],
                }
        return cls(
            after["export"] - before["export"],
            after["export_bytes"] - before["export_bytes"],
            kinds,
        )


def layer_config(upstream: Server, meta_size: tuple[int, int]) -> dict[str, Any]:
    """The benchmark's one layer: ``bluemarble`` of the reference ImageServer, as in the demo."""
    return {
        LAYER: {
            "url": f"{upstream.url}{SERVICE_PATH}",
            "formats": [EXT, "png"],
            "maxzoom": COLD_ZOOM,
            "export": EXPORT,
            "meta_size": list(meta_size),
        }
    }


def gateway_config(
    upstream: Server,
    redis_url: str | None,
    prefix: str,
    *,
    l1: int = L1_BYTES,
    meta_size: tuple[int, int] = (4, 4),
) -> dict[str, Any]:
    """A gateway config: Redis (or memory when ``redis_url`` is None), prefix, L1, metatiles."""
    cache: dict[str, Any] = {"prefix": prefix, "l1_max_bytes": l1}
    if redis_url:
        cache["redis_url"] = redis_url
    else:
        cache["backend"] = "memory"
    return {"cache": cache, "layers": layer_config(upstream, meta_size)}


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkRun:
    """One wrk run: what it loaded and what it measured."""

    label: str
    command: list[str]
    stats: dict[str, float]
    server_cpu: float
    wrk_cpu: float
    wall: float
    redis_hits: int | None = None
    load: float = 0.0  # 1-minute load average of the machine at the end of the run

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.stats["requests"] / (self.stats["duration_us"] / 1e6)

    @property
    def p50(self) -> float:
        """Median latency in microseconds."""
        return self.stats["lat_p50_us"]


def run_wrk(
    bench: Bench,
    name: str,
    label: str,
    server: Server,
    paths: Path,
    *,
    connections: int,
    threads: int,
    duration: str,
    script: Path = LIST_LUA,
    pids: Sequence[int] = (),
    redis: Any = None,
    headers: dict[str, str] | None = None,
) -> WrkRun:
    """Run wrk against ``server`` over the paths file (every request with ``headers``) and
    return what it measured; the server's CPU share is summed over ``pids`` (default: the
    server's own process)."""
    command = bench.pinned(
        [
            bench.args.wrk,
            "--latency",
            f"--threads={threads}",
            f"--connections={connections}",
            f"--duration={duration}",
            "--timeout=10s",
            *(f"--header={name}: {value}" for name, value in (headers or {}).items()),
            f"--script={script}",
            server.url,
            "--",
            str(paths),
        ],
        bench.args.load_cpu,
    )
    watched = list(pids) or [server.pid]
    before = sum(cpu_seconds(pid) for pid in watched)
    hits_before = int(redis.info("stats")["keyspace_hits"]) if redis is not None else 0
    started = time.monotonic()
    wrk_before = children_cpu_seconds()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    cpu = (sum(cpu_seconds(pid) for pid in watched) - before) / wall
    wrk_cpu = (children_cpu_seconds() - wrk_before) / wall
    hits = int(redis.info("stats")["keyspace_hits"]) - hits_before if redis is not None else None
    raw = result.stdout + result.stderr
    (bench.out / f"wrk-{name}.txt").write_text(shell(command) + "\n\n" + raw)
    match = re.search(r"^BENCH-JSON (\{.*\})$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"bench: wrk failed ({result.returncode}):\n{raw}")
    run = WrkRun(label, command, json.loads(match[1]), cpu, wrk_cpu, wall, hits, os.getloadavg()[0])
    bench.note(
        f"{name}: {run.rps:,.0f} req/s, p50 {ms(run.p50)}, p99 {ms(run.stats['lat_p99_us'])}, "
        f"server CPU {cpu * 100:.0f} %, wrk CPU {wrk_cpu * 100:.0f} %"
    )
    time.sleep(0.5)
    return run


def rotate(rounds: int, loads: dict[str, Callable[[int], WrkRun]]) -> dict[str, list[WrkRun]]:
    """``rounds`` runs of each load (called with the round number), the order shifted by one
    every round (ABBA... for two loads), so a drift of the machine hits all of them alike."""
    keys = list(loads)
    runs: dict[str, list[WrkRun]] = {key: [] for key in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            runs[key].append(loads[key](r))
    return runs


def write_paths(path: Path, paths: Sequence[str]) -> Path:
    """One request path per line; returns ``path``."""
    path.write_text("".join(f"{p}\n" for p in paths))
    return path


# --------------------------------------------------------------------------- (a) (b) (f)


@dataclass
class HitResult:
    """A hit comparison: gateway and baseline runs, the checks made, and whether they found
    every answer as it should be (``sound``: else the figure does not count)."""

    gateway: list[WrkRun]
    baseline: list[WrkRun]
    checks: list[str] = field(default_factory=list)
    sound: bool = True

    @property
    def ratio(self) -> float:
        """Median gateway requests/s over median baseline requests/s."""
        return statistics.median(r.rps for r in self.gateway) / statistics.median(
            r.rps for r in self.baseline
        )


def hit_paths() -> list[str]:
    """The paths of the 24 warm tiles (as bench/run.py)."""
    return [tile_path("", LAYER, *t, EXT) for t in HIT_TILES]


def wmts_path(z: int, x: int, y: int) -> str:
    """The WMTS RESTful path of XYZ tile ``z/x/y`` (TileRow ``y``, TileCol ``x``)."""
    return f"/wmts/1.0.0/{LAYER}/default/WebMercatorQuad/{z}/{y}/{x}.{EXT}"


def ogcapi_path(z: int, x: int, y: int) -> str:
    """The OGC API - Tiles path of XYZ tile ``z/x/y``, format by ``f``."""
    return f"/ogcapi/collections/{LAYER}/map/tiles/WebMercatorQuad/{z}/{y}/{x}?f={EXT}"


# The fronts whose L1 hits (a) measures: key, label, path of XYZ tile z/x/y.
FRONTS: dict[str, tuple[str, Callable[[int, int, int], str]]] = {
    "xyz": ("XYZ", lambda z, x, y: tile_path("", LAYER, z, x, y, EXT)),
    "wmts": ("WMTS REST", wmts_path),
    "ogcapi": ("OGC API", ogcapi_path),
}
A_TITLES = {
    "xyz": "XYZ `/tiles/...`, vs bare handler + dict",
    "wmts": "WMTS REST `/wmts/1.0.0/...`, vs the same bare handler",
    "ogcapi": "OGC API `/ogcapi/.../tiles/...?f=jpg` + Accept, vs the same bare handler",
}
# What a browser sends for an image (Firefox's Accept for <img>): every (a) request carries it,
# since OGC API ready answers are keyed by path, query and Accept.
BROWSER_ACCEPT = {"Accept": "image/avif,image/webp,image/png,image/*,*/*;q=0.8"}


def warm(
    server: Server, paths: Sequence[str], headers: dict[str, str] | None = None
) -> tuple[list[Answer], list[Answer]]:
    """Fetch every path twice (with request ``headers``); both lists of answers."""
    first = [fetch(server.url + p, headers=headers) for p in paths]
    second = [fetch(server.url + p, headers=headers) for p in paths]
    bad = sorted({a.status for a in first + second if a.status != 200})
    if bad:
        raise SystemExit(f"bench: warm-up of {server.name} answered {bad}")
    return first, second


def x_cache(answers: Sequence[Answer]) -> str:
    """``HIT x24``-style summary of the X-Cache headers of answers."""
    counts = Counter(a.headers.get("x-cache", "none") for a in answers)
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def all_hits(runs: Sequence[WrkRun]) -> tuple[bool, str]:
    """Whether every answer counted by bench/paths.lua in ``runs`` was a 2xx with ``X-Cache:
    HIT`` (as many as wrk completed), and the counts as text."""
    total = Counter[str]()
    for run in runs:
        total.update({k: int(run.stats.get(k, 0)) for k in ("requests", "hits", "non2xx")})
        total["other"] += int(
            sum(run.stats.get(k, 0) for k in ("misses", "no_header", "other_header"))
        )
    ok = total["hits"] == total["requests"] and total["non2xx"] == total["other"] == 0
    return ok, (
        f"{total['requests']:,} completed, X-Cache HIT {total['hits']:,}, other or no X-Cache "
        f"{total['other']:,}, non-2xx {total['non2xx']:,}: "
        + ("every answer a 2xx HIT" if ok else "NOT every answer a 2xx HIT")
    )


def write_manifest(
    bench: Bench,
    name: str,
    answers: Sequence[Answer],
    paths: Sequence[str],
    redis: Any,
    prefix: str,
) -> Path:
    """The baselines' manifest: the gateway's bytes and headers of each path, and the Redis
    key of the gateway's entry for it (with the length of the entry header before the bytes)."""
    folder = bench.out / name
    folder.mkdir(exist_ok=True)
    tiles = []
    for n, (path, answer) in enumerate(zip(paths, answers, strict=True)):
        file = folder / f"{n}.{EXT}"
        file.write_bytes(answer.body)
        headers = {k: v for k, v in answer.headers.items() if k not in AUTOMATIC_HEADERS}
        z, x, name_part = path.split("/")[-3:]
        y = name_part.split(".")[0]
        keys = list(
            redis.scan_iter(match=f"{prefix}:{LAYER}:*:WebMercatorQuad:{z}:{x}:{y}:1.{EXT}")
        )
        if len(keys) != 1:
            raise SystemExit(f"bench: expected one Redis entry for {path}, found {keys}")
        value = redis.get(keys[0])
        if not value.endswith(answer.body):
            raise SystemExit(f"bench: the Redis entry of {path} does not end with its bytes")
        tiles.append(
            {
                "path": path,
                "file": str(file),
                "headers": headers,
                "key": keys[0].decode(),
                "skip": len(value) - len(answer.body),
            }
        )
    manifest = bench.out / f"{name}.json"
    manifest.write_text(json.dumps({"tiles": tiles}, indent=1) + "\n")
    return manifest


def hit_runs(
    bench: Bench,
    key: str,
    targets: dict[str, tuple[Server, Path]],
    redis: Any,
    *,
    script: Path = LIST_LUA,
    headers: dict[str, str] | None = None,
) -> dict[str, list[WrkRun]]:
    """The hit load (``--duration``, ``--connections``, ``--threads``) on every target
    (server, paths file), ``--rounds`` rounds in rotating order; the runs by target."""
    args = bench.args

    def load(who: str, server: Server, paths_file: Path) -> Callable[[int], WrkRun]:
        return lambda r: run_wrk(
            bench,
            f"{key}-{who}-{r + 1}",
            who,
            server,
            paths_file,
            connections=args.connections,
            threads=args.threads,
            duration=args.duration,
            script=script,
            redis=redis,
            headers=headers,
        )

    return rotate(args.rounds, {who: load(who, *target) for who, target in targets.items()})


def measure_hits_l1(
    bench: Bench, upstream: Server, redis_url: str, redis: Any, prefix: str, fill: int
) -> tuple[dict[str, HitResult], dict[str, Any]]:
    """(a) and (f): the L1 gateway's XYZ, WMTS REST and OGC API hits against the dict
    baseline (XYZ paths); its RSS idle, after the hit load and after reading every tile of
    zoom 0..``fill`` (seeded in Redis) through it."""
    args = bench.args
    gateway = bench.gateway(
        "gateway-a",
        gateway_config(upstream, redis_url, prefix, l1=L1_BYTES),
        cpus=args.server_cpu,
        record="(a, f) gateway, L1 64 MiB, Redis L2",
    )
    memory: dict[str, Any] = {"idle": proc_status(gateway.pid)}
    paths = {key: [path(*t) for t in HIT_TILES] for key, (_, path) in FRONTS.items()}
    # XYZ first: its first fetches fill L1 from the seeded Redis, the other fronts find L1 full.
    warmed = {key: warm(gateway, front_paths, BROWSER_ACCEPT) for key, front_paths in paths.items()}
    xyz = warmed["xyz"][1]
    manifest = write_manifest(bench, "tiles-a", xyz, paths["xyz"], redis, prefix)
    baseline = bench.baseline(
        "baseline-dict", "dict", manifest, None, "(a) bare aiohttp handler, tiles from a dict"
    )
    check = warm(baseline, paths["xyz"], BROWSER_ACCEPT)[1]
    files = {key: write_paths(bench.out / f"paths-a-{key}.txt", p) for key, p in paths.items()}

    calls_before = upstream_stats(upstream)["export"]
    # bench/paths.lua counts every answer's status and X-Cache, on every side alike.
    runs = hit_runs(
        bench,
        "a",
        {"baseline": (baseline, files["xyz"]), **{key: (gateway, files[key]) for key in FRONTS}},
        redis,
        script=PATHS_LUA,
        headers=BROWSER_ACCEPT,
    )
    calls = upstream_stats(upstream)["export"] - calls_before
    results = {}
    for key in FRONTS:
        first, second = warmed[key]
        after = [fetch(gateway.url + p, headers=BROWSER_ACCEPT) for p in paths[key]]
        same = all(
            a.body == b.body for a, b in zip(second, check if key == "xyz" else xyz, strict=True)
        )
        counted = all_hits(runs[key])
        results[key] = HitResult(
            runs[key],
            runs["baseline"],
            [
                f"paths: `{paths[key][0]}` ... ({len(paths[key])} tiles), header "
                f"`Accept: {BROWSER_ACCEPT['Accept']}` on every request",
                f"warm-up through the gateway: first {x_cache(first)}"
                + (" (from the seeded Redis)" if key == "xyz" else " (the tiles already in L1)")
                + f", then {x_cache(second)}; after the runs {x_cache(after)}",
                (
                    f"baseline bytes == gateway bytes for all 24 tiles: {same}"
                    if key == "xyz"
                    else f"bytes == the gateway's XYZ bytes for all 24 tiles: {same}"
                ),
                f"answers during the runs (counted by bench/paths.lua): {counted[1]}",
                "Redis GETs during the gateway runs (purge poll included): "
                + ", ".join(str(r.redis_hits) for r in runs[key])
                + " (hits served by L1)",
                f"exportImage calls during all the (a) runs: {calls}",
            ],
            sound=same and counted[0] and calls == 0,
        )
    results["xyz"].checks.append(
        f"baseline answers during the runs (bench/paths.lua): {all_hits(runs['baseline'])[1]}"
    )
    memory["after_hits"] = proc_status(gateway.pid)
    memory["baseline_after_hits"] = proc_status(baseline.pid)
    bench.stop(baseline)

    # (f) fill L1: every tile of zoom 0..fill, which the 4 x 4 seed put in Redis.
    fill_paths = [
        tile_path("", LAYER, z, x, y, EXT)
        for z in range(fill + 1)
        for y in range(2**z)
        for x in range(2**z)
    ]
    random.Random(7).shuffle(fill_paths)
    fill_file = write_paths(bench.out / "paths-fill.txt", fill_paths)
    seconds = max(10, int(len(fill_paths) / 2000) + 5)
    fill_run = run_wrk(
        bench,
        "f-fill",
        "fill L1",
        gateway,
        fill_file,
        connections=bench.args.connections,
        threads=1,
        duration=f"{seconds}s",
        script=PATHS_LUA,
    )
    memory["after_fill"] = proc_status(gateway.pid)
    memory["fill"] = fill_run
    memory["fill_tiles"] = len(fill_paths)
    bench.stop(gateway)
    return results, memory


def measure_hits_redis(
    bench: Bench, upstream: Server, redis_url: str, redis: Any, prefix: str
) -> HitResult:
    """(b): the gateway with L1 off against one redis-py GET per request."""
    gateway = bench.gateway(
        "gateway-b",
        gateway_config(upstream, redis_url, prefix, l1=0),
        cpus=bench.args.server_cpu,
        record="(b) gateway, L1 off (l1_max_bytes 0), Redis",
    )
    paths = hit_paths()
    first, second = warm(gateway, paths)
    manifest = write_manifest(bench, "tiles-b", second, paths, redis, prefix)
    baseline = bench.baseline(
        "baseline-redis",
        "redis",
        manifest,
        redis_url,
        "(b) bare aiohttp handler, one redis-py GET per request",
    )
    check = warm(baseline, paths)[1]
    same = all(a.body == b.body for a, b in zip(second, check, strict=True))
    paths_file = write_paths(bench.out / "paths-hit.txt", paths)
    runs = hit_runs(
        bench, "b", {"gateway": (gateway, paths_file), "baseline": (baseline, paths_file)}, redis
    )
    result = HitResult(runs["gateway"], runs["baseline"])

    def per_request(runs: Sequence[WrkRun]) -> str:
        return ", ".join(f"{(r.redis_hits or 0) / r.stats['requests']:.3f}" for r in runs)

    result.checks = [
        f"warm-up through the gateway: {x_cache(first)}, then {x_cache(second)}",
        f"baseline bytes == gateway bytes for all 24 tiles: {same}",
        f"Redis GET hits per request: gateway {per_request(result.gateway)}; baseline "
        f"{per_request(result.baseline)} (wrk stops counting the requests in flight at its end)",
    ]
    bench.stop(gateway)
    bench.stop(baseline)
    return result


# --------------------------------------------------------------------------- (c)


@dataclass
class BurstResult:
    """What 500 concurrent requests for one cold tile gave."""

    tile: tuple[int, int, int]
    workers: int
    upstream_calls: int
    statuses: Counter[int]
    x_cache: Counter[str]
    same_bytes: bool
    all_sent_first: bool
    sent_ms: float
    first_byte_ms: float
    last_byte_ms: float
    per_worker: dict[int, int]
    outages: int
    outage_reasons: dict[str, int]


async def burst(port: int, path: str, count: int) -> tuple[list[tuple[float, bytes]], float, float]:
    """Open ``count`` connections, write one GET on each, then read every answer.

    Returns ``(first byte time, raw answer)`` per connection, the time the last request was
    written and the start time (``time.perf_counter`` seconds).
    """
    connections = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(count))
    )
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    for _, writer in connections:
        writer.write(request)
    await asyncio.gather(*(writer.drain() for _, writer in connections))
    sent = time.perf_counter()

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[float, bytes]:
        first = await reader.read(1)
        at = time.perf_counter()
        rest = await reader.read()
        writer.close()
        return at, first + rest

    answers = await asyncio.gather(*(answer(r, w) for r, w in connections))
    return list(answers), sent, started


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one raw HTTP/1.1 answer (Connection: close)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# An access-log line; with --workers the logger's name carries the worker's pid.
_ACCESS = re.compile(r"gateway\.access(?:\[(\d+)\])?: .*\"GET (\S+) HTTP")


def measure_burst(
    bench: Bench, upstream: Server, redis_url: str, workers: int, tile: tuple[int, int, int]
) -> BurstResult:
    """(c): ``bench.args.burst`` concurrent requests for one never-asked tile."""
    prefix = f"burst{workers}"
    gateway = bench.gateway(
        f"gateway-c{workers}",
        gateway_config(upstream, redis_url, prefix),
        workers=workers,
        log_level="INFO",  # the access log names the worker (pid) that answered
        record=f"(c) gateway, {workers} process(es), Redis, INFO (access log per worker)",
    )
    worker_pids = workers_of(gateway.pid) if workers > 1 else [gateway.pid]
    path = tile_path("", LAYER, *tile, EXT)
    fetch_json(f"{upstream.url}/_bench/delay?seconds={bench.args.upstream_delay}", "POST")
    before = upstream_stats(upstream)["export"]
    log_start = gateway.log.stat().st_size
    answers, sent, started = asyncio.run(burst(gateway.port, path, bench.args.burst))
    time.sleep(1.5)  # anything late (a second fetch, a lock poll) would show by now
    calls = upstream_stats(upstream)["export"] - before
    fetch_json(f"{upstream.url}/_bench/delay?seconds=0", "POST")
    parsed = [parse_answer(raw) for _, raw in answers]
    bodies = {body for status, _, body in parsed if status == 200}
    first_byte = min(at for at, _ in answers)
    last_byte = max(at for at, _ in answers)
    with open(gateway.log, "rb") as log:
        log.seek(log_start)
        text = log.read().decode(errors="replace")
    per_worker: Counter[int] = Counter()
    for match in _ACCESS.finditer(text):
        if match[2] == path:
            per_worker[int(match[1] or gateway.pid)] += 1
    outages = text.count(" unavailable (")
    reasons = Counter(re.findall(r"unavailable \((\w+) on", text))
    result = BurstResult(
        tile,
        workers,
        calls,
        Counter(status for status, _, _ in parsed),
        Counter(headers.get("x-cache", "none") for _, headers, _ in parsed),
        len(bodies) == 1,
        sent < first_byte,
        (sent - started) * 1000,
        (first_byte - started) * 1000,
        (last_byte - started) * 1000,
        {pid: per_worker.get(pid, 0) for pid in worker_pids},
        outages,
        dict(reasons),
    )
    bench.stop(gateway)
    return result


# --------------------------------------------------------------------------- (d)


@dataclass
class ColdResult:
    """Cold-miss latency through the gateway, straight to the ImageServer, and (optionally)
    through the bare proxy."""

    backend: str
    gateway: list[WrkRun]
    direct: list[WrkRun]
    proxy: list[WrkRun]
    upstream_calls: int
    gateway_requests: int
    checks: list[str] = field(default_factory=list)

    @staticmethod
    def p50(runs: Sequence[WrkRun]) -> float:
        """Median of the runs' p50, microseconds."""
        return statistics.median(r.p50 for r in runs)

    @property
    def ratio(self) -> float:
        """The figure: median gateway p50 over median bare-proxy p50."""
        return self.p50(self.gateway) / self.p50(self.proxy)

    @property
    def bound(self) -> float:
        """The figure's bound for this backend."""
        return BOUND_D[self.backend]


def measure_cold(
    bench: Bench,
    upstream: Server,
    redis_url: str | None,
    offset: int,
    proxy: Server,
) -> ColdResult:
    """(d): metatiles off, 1 connection, unique z=9 tiles. Direct, proxy and gateway runs
    rotate round by round; every run gets its own disjoint slice of the cold sequence."""
    backend = "redis" if redis_url else "memory"
    gateway = bench.gateway(
        f"gateway-d-{backend}",
        gateway_config(upstream, redis_url, f"cold-{backend}", meta_size=(1, 1)),
        record=f"(d) gateway, metatiles off (meta_size [1,1]), {backend} cache, L1 64 MiB",
    )
    per_run = bench.args.cold_list
    slots = iter(range(offset, offset + 3 * bench.args.rounds * per_run, per_run))
    calls = 0

    def exports() -> int:
        return int(upstream_stats(upstream)["export"])

    def load(who: str, server: Server) -> Callable[[int], WrkRun]:
        def one(r: int) -> WrkRun:
            nonlocal calls
            start = next(slots)
            tiles = [cold_tile(COLD_ZOOM, i) for i in range(start, start + per_run)]
            paths = [
                tile_path("", LAYER, *t, EXT)
                if who == "gateway"
                else export_path(SERVICE_PATH, *t, EXT)
                for t in tiles
            ]
            name = f"d-{backend}-{who}-{r + 1}"
            before = exports()
            run = run_wrk(
                bench,
                name,
                who,
                server,
                write_paths(bench.out / f"paths-{name}.txt", paths),
                connections=1,
                threads=1,
                duration=bench.args.cold_duration,
                script=PATHS_LUA,
            )
            if who == "gateway":
                calls += exports() - before
            return run

        return one

    runs = rotate(
        bench.args.rounds,
        {
            "direct": load("direct", upstream),
            "proxy": load("proxy", proxy),
            "gateway": load("gateway", gateway),
        },
    )
    result = ColdResult(
        backend,
        runs["gateway"],
        runs["direct"],
        runs["proxy"],
        calls,
        int(sum(r.stats["requests"] for r in runs["gateway"])),
    )
    every = [run for group in runs.values() for run in group]
    wraps = sum(r.stats.get("wraps", 0) for r in every)
    misses = sum(r.stats.get("misses", 0) for r in result.gateway)
    hits = sum(r.stats.get("hits", 0) for r in result.gateway)
    result.checks = [
        f"gateway answers X-Cache MISS {misses:,.0f}, HIT {hits:,.0f}; exportImage calls during "
        f"the gateway runs {calls:,} for {result.gateway_requests:,} completed requests (wrk "
        f"does not count the one in flight when it stops); path lists wrapped: {wraps:.0f}",
    ]
    bench.stop(gateway)
    return result


# --------------------------------------------------------------------------- (e)


@dataclass
class SeedResult:
    """The summary of one ``tile-gateway seed`` run, what the ImageServer counted meanwhile,
    and the run's wall time (process start to exit, seconds)."""

    meta: tuple[int, int]
    summary: dict[str, str]
    upstream: UpstreamUse
    wall: float
    command: str

    def number(self, name: str) -> float:
        """A numeric field of the summary (``tiles written``, ``upstream calls``...)."""
        return float(self.summary[name].split()[0])


def measure_seed(
    bench: Bench,
    upstream: Server,
    redis_url: str,
    meta: tuple[int, int],
    prefix: str,
    zoom: str,
    options: Sequence[str] = (),
) -> SeedResult:
    """(e): ``python -m gateway seed`` of zoom ``zoom`` on a fresh prefix, ``meta`` metatiles;
    ``options`` are more ``seed`` options (``--format``, ``--concurrency``...)."""
    name = f"seed-{meta[0]}x{meta[1]}"
    config = bench.out / f"{name}.yaml"
    config.write_text(
        json.dumps(gateway_config(upstream, redis_url, prefix, l1=0, meta_size=meta), indent=2)
        + "\n"
    )
    command = [bench.gateway_python, "-m", "gateway", "--log-level", "WARNING", "seed"]
    command += ["--config", str(config), "--layer", LAYER, "--zoom", zoom]
    command += ["--state", str(bench.out / f"{name}.state.json"), *options]
    bench.note(f"{name}: {shell(command)}")
    before = upstream_stats(upstream)
    started = time.monotonic()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=bench.gateway_env,
        cwd=bench.gateway_root,
        check=False,
    )
    wall = time.monotonic() - started
    after = upstream_stats(upstream)
    (bench.out / f"{name}.txt").write_text(shell(command) + "\n\n" + result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(
            f"bench: seed failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    summary = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            summary[key.strip()] = value.strip()
    bench.note(f"{name}: {summary}")
    return SeedResult(
        meta,
        summary,
        UpstreamUse.between(before, after),
        wall,
        shell(command),
    )


# --------------------------------------------------------------------------- report


def run_rows(title: str, runs: Sequence[WrkRun]) -> list[str]:
    """Markdown rows of wrk runs."""
    rows = []
    for n, run in enumerate(runs, 1):
        s = run.stats
        errors = sum(s.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
        rows.append(
            f"| {title} {n} | {run.rps:,.0f} | {ms(run.p50)} | {ms(s['lat_p99_us'])} | "
            f"{s['requests']:,.0f} | {s.get('err_status', 0):.0f} | {errors:.0f} | "
            f"{run.server_cpu * 100:.0f} % | {run.wrk_cpu * 100:.0f} % | {run.load:.2f} |"
        )
    return rows


RUN_HEADER = [
    "| Run | Requests/s | p50 | p99 | Requests | Non-2xx | Socket errors | Server CPU | wrk CPU "
    "| Load |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def per_round(top: Sequence[WrkRun], bottom: Sequence[WrkRun], p50: bool = False) -> str:
    """The ratio of each round's runs (requests/s, or p50 latency), as a list and its range."""
    values = [(t.p50 / b.p50) if p50 else (t.rps / b.rps) for t, b in zip(top, bottom, strict=True)]
    return f"{', '.join(f'{v:.2f}' for v in values)} (range {min(values):.2f}-{max(values):.2f})"


def per_cpu(hit: HitResult) -> str:
    """Requests per CPU second of the server, gateway over baseline (medians): what a run
    costs the server, whatever share of its CPU other work left it."""
    gateway = statistics.median(r.rps / r.server_cpu for r in hit.gateway if r.server_cpu)
    baseline = statistics.median(r.rps / r.server_cpu for r in hit.baseline if r.server_cpu)
    return (
        f"requests per server CPU second (information) gateway {gateway:,.0f}, baseline "
        f"{baseline:,.0f}, ratio {gateway / baseline:.2f}"
    )


def load_range(runs: Sequence[WrkRun]) -> str:
    """The 1-minute load average at the end of ``runs``: lowest and highest."""
    loads = [r.load for r in runs]
    return f"{min(loads):.2f}-{max(loads):.2f}"


def gateway_under_test(bench: Bench) -> str:
    """Which checkout the gateway processes ran from: folder, commit, uncommitted changes."""
    root = bench.gateway_root

    def git(*command: str) -> str:
        found = subprocess.run(
            ["git", "-C", str(root), *command], capture_output=True, text=True, check=False
        )
        return found.stdout.strip()

    commit = git("log", "-1", "--format=%h (%cs)") or "not a git checkout"
    last = git("log", "-1", "--format=%h", "--", "gateway")
    if last:
        commit += f", gateway/ as of {last}"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "gateway")
    where = "this checkout" if root == ROOT else f"`{root}` (`--gateway-root`)"
    return (
        f"{where}, commit {commit}"
        + (", with uncommitted changes under gateway/" if dirty else "")
        + f", run by `{shell([bench.gateway_python])}`"
    )


def report(
    bench: Bench,
    started: datetime,
    hits_l1: dict[str, HitResult],
    memory: dict[str, Any],
    hits_redis: HitResult,
    bursts: Sequence[BurstResult],
    colds: Sequence[ColdResult],
    seeds: Sequence[SeedResult],
    redis_version: str,
) -> tuple[str, bool]:
    """The Markdown report and whether every bound holds."""
    args = bench.args
    med = statistics.median
    ok_a = {key: hit.ratio >= BOUND_A and hit.sound for key, hit in hits_l1.items()}
    ok_b = hits_redis.ratio >= BOUND_B
    ok_c = [
        b.upstream_calls == BOUND_C
        and b.statuses == Counter({200: args.burst})
        and b.same_bytes
        and b.all_sent_first
        and all(n > 0 for n in b.per_worker.values())
        for b in bursts
    ]
    ok_d = [c.ratio <= c.bound for c in colds]
    ok = all(ok_a.values()) and ok_b and all(ok_c) and all(ok_d)
    pin = (
        f"`taskset`: wrk (every run) and Redis on CPU {args.load_cpu}, the servers under test "
        f"in (a) and (b) on CPU {args.server_cpu}, everything else unpinned"
        if args.pin
        else "no CPU pinning"
    )
    lines = [
        f"## Cache benchmark, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {machine_description()}. Load generator, Redis, ImageServer, gateways and "
        "baselines all share it; "
        f"load average before the run {bench.load_before}, after {os.getloadavg()[0]:.2f} "
        f"(at the end of each run: a {load_range([r for h in hits_l1.values() for r in h.gateway])}"
        f", b {load_range(hits_redis.gateway)}, d "
        f"{load_range([r for c in colds for r in c.gateway + c.direct + c.proxy])}; the "
        "benchmark's own wrk and server count in it).",
        f"- Gateway under test: {gateway_under_test(bench)}.",
        f"- wrk: {wrk_version(args.wrk)}; {redis_version}; {pin}.",
        f"- Hit loads (a, b): {args.threads} wrk thread(s), {args.connections} connections, "
        f"{args.duration} per run, {args.rounds} runs of each server in rotating order (ABBA "
        "for two) over the same 24 warm tiles (all of z=2, row 3 of z=3); figures are medians. "
        "(a): every request carries "
        f"`Accept: {BROWSER_ACCEPT['Accept']}`, and bench/paths.lua counts every answer.",
        f"- Cold misses (d): 1 connection, {args.cold_duration} per run, {args.rounds} runs "
        f"each, every request a z={COLD_ZOOM} tile never asked before (disjoint lists); direct, "
        "bare proxy and gateway in rotating order.",
        "- Gateways run `python -m gateway --log-level WARNING serve` (no access log), except "
        "in (c) (INFO, to see which worker answered); baselines have no access log either.",
        "",
        "| | Measurement | Gateway | Baseline | Figure | Bound | |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key, hit in hits_l1.items():
        g_a, b_a = med(r.rps for r in hit.gateway), med(r.rps for r in hit.baseline)
        lines.append(
            f"| a | Tile hits from L1, {A_TITLES[key]} (req/s) | {g_a:,.0f} | {b_a:,.0f} | "
            f"{hit.ratio:.2f} | ≥ {BOUND_A} | {mark(ok_a[key])} |"
        )
    g_b, b_b = med(r.rps for r in hits_redis.gateway), med(r.rps for r in hits_redis.baseline)
    lines.append(
        f"| b | Tile hits from Redis, L1 off, vs bare handler + 1 redis-py GET (req/s) | "
        f"{g_b:,.0f} | {b_b:,.0f} | {hits_redis.ratio:.2f} | ≥ {BOUND_B} | {mark(ok_b)} |"
    )
    for burst_result, good in zip(bursts, ok_c, strict=True):
        who = "1 process" if burst_result.workers == 1 else f"{burst_result.workers} processes"
        lines.append(
            f"| c | {args.burst} concurrent requests, one cold tile, {who}, shared Redis "
            f"(exportImage calls) | {burst_result.upstream_calls} | | "
            f"{burst_result.upstream_calls} | = {BOUND_C} | {mark(good)} |"
        )
    for cold, good in zip(colds, ok_d, strict=True):
        gateway_p50, proxy_p50 = cold.p50(cold.gateway), cold.p50(cold.proxy)
        direct_p50 = cold.p50(cold.direct)
        lines.append(
            f"| d | Cold-miss p50, metatiles off, {cold.backend} cache: gateway ÷ bare aiohttp "
            f"proxy | {ms(gateway_p50)} | {ms(proxy_p50)} | {cold.ratio:.2f} | "
            f"≤ {cold.bound:.2f} | {mark(good)} |"
        )
        # Information, no bound: both over the exportImage call itself.
        lines.append(
            f"| d | (information) the same, {cold.backend} cache: gateway ÷ direct exportImage; "
            f"bare proxy ÷ direct | {ms(gateway_p50)}; {ms(proxy_p50)} | {ms(direct_p50)} | "
            f"{gateway_p50 / direct_p50:.2f}; {proxy_p50 / direct_p50:.2f} | - | |"
        )
    for seed in seeds:
        lines.append(
            f"| e | Seed z{args.seed_zoom} `{LAYER}`, {seed.meta[0]}x{seed.meta[1]} metatiles: "
            f"upstream calls / tiles / tiles/s | {seed.number('upstream calls'):,.0f} calls | "
            f"{seed.number('tiles written'):,.0f} tiles | {seed.number('tiles/s'):,.1f} tiles/s "
            f"| - | |"
        )
    lines.append(
        f"| f | VmRSS of the gateway worker (L1 64 MiB): idle / after (a) / L1 filled | "
        f"{mib(memory['idle']['VmRSS'])} / {mib(memory['after_hits']['VmRSS'])} / "
        f"{mib(memory['after_fill']['VmRSS'])} | "
        f"{mib(memory['baseline_after_hits']['VmRSS'])} (dict baseline after a) | "
        f"peak {mib(memory['after_fill']['VmHWM'])} | - | |"
    )
    lines += ["", f"Overall: {'every bound holds' if ok else 'SOME BOUNDS FAIL'}.", ""]

    lines += ["### (a) Tile hits from L1: XYZ, WMTS REST, OGC API", "", *RUN_HEADER]
    for key, hit in hits_l1.items():
        lines += run_rows(f"gateway {FRONTS[key][0]}", hit.gateway)
    lines += run_rows("baseline (dict)", hits_l1["xyz"].baseline)
    for key, hit in hits_l1.items():
        lines += [
            "",
            f"{FRONTS[key][0]}: ratio per round {per_round(hit.gateway, hit.baseline)}; figure "
            f"{hit.ratio:.2f}; {per_cpu(hit)}.",
            "",
            *(f"- {c}" for c in hit.checks),
        ]
    lines.append("")

    lines += ["### (b) Tile hits from Redis, L1 off", "", *RUN_HEADER]
    lines += run_rows("gateway", hits_redis.gateway) + run_rows(
        "baseline (redis GET)", hits_redis.baseline
    )
    lines += [
        "",
        f"- ratio per round {per_round(hits_redis.gateway, hits_redis.baseline)}; "
        f"{per_cpu(hits_redis)}",
        *(f"- {c}" for c in hits_redis.checks),
        "",
    ]

    lines += [
        f"### (c) One cold tile, {args.burst} concurrent requests",
        "",
        f"The ImageServer held each exportImage {args.upstream_delay:g} s (`POST "
        "/_bench/delay`), so the requests overlap the one fetch; the client opened all "
        "connections, then wrote one request on each, then read the answers.",
        "",
        "| Gateway | Tile | exportImage calls | Statuses | X-Cache | Same bytes | Last request "
        "written | First answer byte | Last answer byte | Requests per worker (pid: n) | "
        '"cache unavailable" warnings logged |',
        "|---|---|---:|---|---|---|---:|---:|---:|---|---|",
    ]
    for b in bursts:
        who = "1 process" if b.workers == 1 else f"`--workers {b.workers}`"
        reasons = ", ".join(f"{k} x{v}" for k, v in b.outage_reasons.items())
        lines.append(
            f"| {who} | {'/'.join(map(str, b.tile))} | {b.upstream_calls} | "
            f"{dict(b.statuses)} | {dict(b.x_cache)} | {b.same_bytes} | {b.sent_ms:.0f} ms | "
            f"{b.first_byte_ms:.0f} ms | {b.last_byte_ms:.0f} ms | "
            f"{', '.join(f'{pid}: {n}' for pid, n in b.per_worker.items())} | "
            f"{b.outages}{f' ({reasons})' if reasons else ''} |"
        )
    lines += [
        "",
        "Times are from the moment the client started writing. A pass needs exactly one "
        f"exportImage call, {args.burst} answers 200 with the same bytes, every request written "
        "before the first answer byte, and (with workers) requests answered by every worker.",
        "",
    ]

    for cold in colds:
        lines += [f"### (d) Cold misses, metatiles off, {cold.backend} cache", "", *RUN_HEADER]
        lines += run_rows("gateway", cold.gateway) + run_rows("direct exportImage", cold.direct)
        lines += run_rows("bare proxy", cold.proxy)
        gateway_p50, proxy_p50 = cold.p50(cold.gateway), cold.p50(cold.proxy)
        direct_p50 = cold.p50(cold.direct)
        lines += [
            "",
            f"- p50 of the gateway runs: {', '.join(ms(r.p50) for r in cold.gateway)}; bare "
            f"proxy (one `ClientSession.get` per request, no cache, `bench/servers.py proxy`): "
            f"{', '.join(ms(r.p50) for r in cold.proxy)}; direct: "
            f"{', '.join(ms(r.p50) for r in cold.direct)}.",
            f"- gateway ÷ proxy of the medians **{cold.ratio:.2f}** (bound ≤ {cold.bound:.2f}); "
            f"per round {per_round(cold.gateway, cold.proxy, p50=True)}.",
            f"- information: gateway ÷ direct {gateway_p50 / direct_p50:.2f}, proxy ÷ direct "
            f"{proxy_p50 / direct_p50:.2f}; gateway - proxy "
            f"{(gateway_p50 - proxy_p50) / 1000:+.2f} ms (what the cache and coalescing add on "
            f"top of any aiohttp hop), proxy - direct {(proxy_p50 - direct_p50) / 1000:+.2f} ms, "
            f"gateway - direct {(gateway_p50 - direct_p50) / 1000:+.2f} ms; mean latency gateway "
            f"{ms(med(r.stats['lat_mean_us'] for r in cold.gateway))}, proxy "
            f"{ms(med(r.stats['lat_mean_us'] for r in cold.proxy))}, direct "
            f"{ms(med(r.stats['lat_mean_us'] for r in cold.direct))}.",
            *(f"- {c}" for c in cold.checks),
            "",
        ]

    lines += [
        "### (e) Seeding",
        "",
        "| Metatiles | Upstream calls (summary) | exportImage counted | Tiles written | Bytes | "
        "Elapsed | Tiles/s | Metatiles |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for seed in seeds:
        s = seed.summary
        lines.append(
            f"| {seed.meta[0]}x{seed.meta[1]} | {s['upstream calls']} | {seed.upstream.calls} | "
            f"{s['tiles written']} | {s['bytes']} | {s['elapsed']} | {s['tiles/s']} | "
            f"{s['metatiles']} |"
        )
    fill: WrkRun = memory["fill"]
    seed_bytes = seeds[0].number("bytes")
    s = fill.stats
    lines += [
        "",
        "### (f) Resident memory",
        "",
        "| Gateway process of (a) | VmRSS | VmHWM |",
        "|---|---:|---:|",
        f"| idle, after start | {mib(memory['idle']['VmRSS'])} | {mib(memory['idle']['VmHWM'])} |",
        f"| after the (a) hit load | {mib(memory['after_hits']['VmRSS'])} | "
        f"{mib(memory['after_hits']['VmHWM'])} |",
        f"| after reading all {memory['fill_tiles']:,} tiles of z0-{args.fill_zoom} through it "
        f"| {mib(memory['after_fill']['VmRSS'])} | {mib(memory['after_fill']['VmHWM'])} |",
        f"| dict baseline after the (a) load | {mib(memory['baseline_after_hits']['VmRSS'])} | "
        f"{mib(memory['baseline_after_hits']['VmHWM'])} |",
        "",
        f"- Fill run: {s['requests']:,.0f} requests in {s['duration_us'] / 1e6:.1f} s "
        f"({fill.rps:,.0f}/s), X-Cache HIT {s['hits']:,.0f} / MISS {s['misses']:,.0f}, "
        f"non-2xx {s['non2xx']:.0f}, list wrapped {s['wraps']:.0f}x (>= 1: every tile was read). "
        f"The seeded z0-{args.fill_zoom} tiles hold {seeds[0].summary['bytes']} of JPEG "
        + (
            "(with 512 B of bookkeeping per entry, more than the 64 MiB L1: L1 ends full)."
            if seed_bytes + 256 * seeds[0].number("tiles written") > L1_BYTES
            else "(less than the 64 MiB L1: L1 is NOT full; seed more zoom levels)."
        ),
        "",
        *commands_section(
            bench,
            [
                "# wrk, one of each kind (all of them are in the results folder, wrk-*.txt)",
                *(shell(hit.gateway[0].command) for hit in hits_l1.values()),
                shell(memory["fill"].command),
                shell(colds[0].gateway[0].command),
                shell(colds[0].direct[0].command),
                *(seed.command for seed in seeds),
            ],
        ),
    ]
    return "\n".join(lines) + "\n", ok


def commands_section(bench: Bench, more: Sequence[str]) -> list[str]:
    """The report's "Commands" section: the whole benchmark, every server it started, then
    the lines ``more``."""
    return [
        "### Commands",
        "",
        "```sh",
        "# the whole benchmark",
        shell([bench.python, *sys.argv]),
        *(f"# {what}\n{command}" for what, command in bench.commands),
        *more,
        "```",
    ]


# --------------------------------------------------------------------------- main


def add_hit_options(p: argparse.ArgumentParser) -> None:
    """The wrk load of the hit runs (also bench/peers.py's)."""
    p.add_argument("--duration", default="5s", help="wrk duration of each hit run (default 5s)")
    p.add_argument("--rounds", type=int, default=6, help="runs of each side per comparison (6)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections for hits (32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads for hits (1)")


def add_machine_options(p: argparse.ArgumentParser) -> None:
    """CPU pinning and the wrk and redis-server executables (also bench/peers.py's)."""
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the servers under test and wrk to separate CPUs (default on)",
    )
    p.add_argument("--server-cpu", default="1", help="CPU of the servers under test (1)")
    p.add_argument("--load-cpu", default="0", help="CPU of wrk and Redis (0)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="wrk executable")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")


def check_tools(args: argparse.Namespace, *more: str) -> None:
    """Exit unless wrk, redis-server, taskset (when pinning) and ``more`` are on the PATH."""
    for tool in (args.wrk, args.redis_server, *more):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} not found")
    if args.pin and shutil.which("taskset") is None:
        raise SystemExit("bench: taskset not found (or use --no-pin)")


def parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add_hit_options(p)
    p.add_argument("--cold-duration", default="4s", help="wrk duration of each cold run (4s)")
    p.add_argument("--cold-list", type=int, default=3000, help="tiles per cold run list (3000)")
    p.add_argument("--burst", type=int, default=500, help="concurrent requests in (c) (500)")
    p.add_argument(
        "--upstream-delay",
        type=float,
        default=1.0,
        help="seconds the ImageServer holds each exportImage during (c) (1.0)",
    )
    p.add_argument("--seed-zoom", default="0-7", help="zoom range seeded in (e) (0-7)")
    p.add_argument(
        "--cold-backends",
        default="redis,memory",
        help="cache backends of the (d) gateway, comma-separated (redis,memory)",
    )
    p.add_argument(
        "--gateway-root",
        type=Path,
        help="run the gateway (serve, seed) from this checkout instead of this one, with its "
        "own .venv/bin/python when it has one (e.g. a worktree of an older commit); the "
        "baselines, the ImageServer and this script stay this checkout's",
    )
    add_machine_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and print the report; 0 when every bound holds."""
    args = parser().parse_args(argv)
    check_tools(args)
    parse_duration(args.duration)
    if not set(args.cold_backends.split(",")) <= set(BOUND_D):
        raise SystemExit(f"bench: --cold-backends takes {', '.join(BOUND_D)}")
    first_zoom, _, last_zoom = args.seed_zoom.partition("-")
    args.fill_zoom = int(last_zoom or first_zoom)
    started = datetime.now(UTC)
    out_dir = RESULTS_DIR / f"cache-{started:%Y%m%dT%H%M%SZ}"
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, out_dir)
    with bench.stack:
        redis, redis_url, redis_version = start_redis(bench)
        upstream = start_upstream(bench)

        seeds = [
            measure_seed(bench, upstream, redis_url, (4, 4), "seed4", args.seed_zoom),
            measure_seed(bench, upstream, redis_url, (1, 1), "seed1", args.seed_zoom),
        ]
        hits_l1, memory = measure_hits_l1(
            bench, upstream, redis_url, redis, "seed4", args.fill_zoom
        )
        hits_redis = measure_hits_redis(bench, upstream, redis_url, redis, "seed4")
        rng = random.Random()
        start = rng.randrange(4**COLD_ZOOM)
        bursts = [
            measure_burst(bench, upstream, redis_url, 1, cold_tile(COLD_ZOOM, start)),
            measure_burst(bench, upstream, redis_url, 2, cold_tile(COLD_ZOOM, start + 1000)),
        ]
        proxy_port = free_port()
        proxy = bench.start(
            "proxy",
            [
                bench.python,
                str(SERVERS),
                "proxy",
                "--port",
                str(proxy_port),
                *("--upstream", upstream.url),
            ],
            proxy_port,
            lambda: listeners(proxy_port) >= 1,
            record="(d) bare aiohttp proxy, the baseline of cold misses",
        )
        colds = []
        offset = start + 2000
        for backend in args.cold_backends.split(","):
            colds.append(
                measure_cold(
                    bench, upstream, redis_url if backend == "redis" else None, offset, proxy
                )
            )
            offset += 3 * args.rounds * args.cold_list
        bench.stop(proxy)
        text, ok = report(
            bench, started, hits_l1, memory, hits_redis, bursts, colds, seeds, redis_version
        )
    (out_dir / "results.md").write_text(text)
    print(text)
    print(f"(raw outputs: {out_dir})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
