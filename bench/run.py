"""First benchmark of the tile gateway: cache hits, cold misses, and the ImageServer beneath.

One command (from the repository root)::

    .venv/bin/python bench/run.py [--gateway URL --imageserver URL]
                                  [--duration 10s] [--connections 32] [--threads 2]

Without URLs it starts ``tile-gateway demo`` on free ports (gateway, reference ImageServer and
in-memory cache in one process) and stops it at the end. It then runs ``wrk --latency`` four
times with the same load and prints a Markdown table:

1. gateway, cache hits: 24 tiles (all 16 of z=2, 8 of z=3), each fetched twice before the run;
2. ImageServer direct: the ``exportImage`` URLs of those 24 tiles (the baseline of 1);
3. gateway, cold misses: tiles of a deep zoom (z=9) never asked for before, each wrk thread
   with its own disjoint list, so no request repeats within the run or across runs;
4. ImageServer direct: the ``exportImage`` URLs of the same cold tiles (the baseline of 3).

Each row counts the ``X-Cache`` headers of the answers (``bench/paths.lua``) so the table shows
that a "hit" row really was served from the cache and a "miss" row really was not. Numbers
only: nothing passes or fails. Everything a run used (path lists, raw wrk output, the demo's
log, the table) is kept under ``bench/results/<timestamp>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "paths.lua"
RESULTS_DIR = BENCH_DIR / "results"
COLD_STATE = RESULTS_DIR / "cold-offsets.json"

# Half the side of the EPSG:3857 square (metres), as in the WebMercatorQuad TileMatrixSet.
R = 20037508.342789244
# exportImage format per tile extension, as the gateway sends it.
EXPORT_FORMAT = {"jpg": "jpg", "png": "png32"}
# The demo layer's fixed exportImage parameters (config/demo.yaml, layer bluemarble).
FIXED_PARAMS = "interpolation=RSP_BilinearInterpolation&compressionQuality=85"
# Odd, so i -> i * STRIDE mod 4**z is a bijection: it spreads consecutive tiles over the globe.
STRIDE = 104729
# The hit set: every tile of z=2 and the equatorial row of z=3.
HIT_TILES: tuple[tuple[int, int, int], ...] = tuple(
    [(2, x, y) for y in range(4) for x in range(4)] + [(3, x, 3) for x in range(8)]
)
# Assumed ceiling on cold requests per second when sizing the cold lists (a thread that runs
# out of its list wraps around, and the table says so).
COLD_RPS_CEILING = 1500


# --------------------------------------------------------------------------- tiles and URLs


def tile_bbox(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of WebMercatorQuad tile ``z/x/y`` in EPSG:3857 metres."""
    span = 2 * R / 2**z
    xmin = -R + x * span
    ymax = R - y * span
    return (xmin, ymax - span, xmin + span, ymax)


def export_path(service_path: str, z: int, x: int, y: int, ext: str) -> str:
    """Path and query of the ``exportImage`` call the gateway makes for tile ``z/x/y``."""
    bbox = ",".join(repr(float(v)) for v in tile_bbox(z, x, y))
    return (
        f"{service_path}/exportImage?bbox={bbox}&bboxSR=3857&imageSR=3857&size=256,256"
        f"&format={EXPORT_FORMAT[ext]}&f=image&{FIXED_PARAMS}"
    )


def tile_path(gateway_path: str, layer: str, z: int, x: int, y: int, ext: str) -> str:
    """Path of the gateway's XYZ tile ``z/x/y``."""
    return f"{gateway_path}/tiles/{layer}/{z}/{x}/{y}.{ext}"


def cold_tile(z: int, index: int) -> tuple[int, int, int]:
    """The ``index``-th tile (any integer, taken modulo 4**z) of the cold sequence of zoom z."""
    count = 4**z
    k = (index % count) * STRIDE % count
    return (z, k % 2**z, k // 2**z)


def cold_lists(
    z: int, offset: int, threads: int, per_thread: int
) -> list[list[tuple[int, int, int]]]:
    """Disjoint tile lists, one per wrk thread: thread t gets indices offset + t + m*threads."""
    return [
        [cold_tile(z, offset + t + m * threads) for m in range(per_thread)] for t in range(threads)
    ]


@dataclass(frozen=True)
class Target:
    """An HTTP server to load: ``origin`` is what wrk connects to, ``path`` the URL path prefix."""

    origin: str
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        """Split ``url`` into origin and path (without the trailing slash)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SystemExit(f"bench: not an http(s) URL: {url!r}")
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"))


# --------------------------------------------------------------------------- HTTP helpers


@dataclass(frozen=True)
class Answer:
    """Status, ``X-Cache`` header (``None`` when absent) and body of one GET."""

    status: int
    x_cache: str | None
    body: bytes


def fetch(url: str, timeout: float = 60.0) -> Answer:
    """GET ``url``; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Answer(response.status, response.headers.get("X-Cache"), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers.get("X-Cache"), exc.read())


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Demo:
    """A ``tile-gateway demo`` subprocess started by the benchmark."""

    process: subprocess.Popen[bytes]
    log_path: Path
    gateway: str
    imageserver: str


@contextmanager
def start_demo(out_dir: Path, log_level: str, timeout: float = 180.0) -> Iterator[Demo]:
    """Run ``tile-gateway demo`` on free ports until the block ends; its output goes to a log.

    ``log_level`` is passed as ``--log-level`` (``INFO``, the default, writes access logs).
    """
    exe = Path(sys.executable).parent / "tile-gateway"
    command = [str(exe) if exe.exists() else (shutil.which("tile-gateway") or "tile-gateway")]
    gateway_port, imageserver_port = free_port(), free_port()
    command += [
        f"--log-level={log_level}",
        "demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(gateway_port),
        "--imageserver-port",
        str(imageserver_port),
    ]
    log_path = out_dir / "demo.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    print(f"Starting: {' '.join(command)}", file=sys.stderr)
    try:
        deadline = time.monotonic() + timeout
        while "Viewer: " not in log_path.read_text(errors="replace"):
            if process.poll() is not None:
                raise SystemExit(
                    f"bench: tile-gateway demo exited with {process.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: no 'Viewer:' line from tile-gateway demo in {timeout}s")
            time.sleep(0.2)
        yield Demo(
            process,
            log_path,
            f"http://127.0.0.1:{gateway_port}",
            f"http://127.0.0.1:{imageserver_port}/arcgis/rest/services/bluemarble/ImageServer",
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- wrk


@dataclass
class Row:
    """One wrk run and what it measured."""

    key: str
    label: str
    origin: str
    paths_arg: str
    cold: bool = False
    command: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    raw: str = ""
    server_cpu: float | None = None
    wrk_cpu: float | None = None
    access: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Measured duration of the run."""
        return self.stats["duration_us"] / 1e6

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.stats["requests"] / self.seconds


def wrk_version(wrk: str) -> str:
    """First line of ``wrk --version`` (it exits with status 1, by design)."""
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    line = (result.stdout or result.stderr).splitlines()[0]
    return line.split(" Copyright", 1)[0].strip()


def run_wrk(row: Row, wrk: str, args: argparse.Namespace, demo: Demo | None) -> None:
    """Run wrk for ``row`` and fill in its command, stats and CPU use."""
    script = (
        LUA_SCRIPT.relative_to(Path.cwd()) if LUA_SCRIPT.is_relative_to(Path.cwd()) else LUA_SCRIPT
    )
    row.command = [
        wrk,
        "--latency",
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={args.duration}",
        f"--timeout={args.timeout}",
        f"--script={script}",
        row.origin,
        "--",
        row.paths_arg,
    ]
    print(f"[{row.key}] {row.label}: {' '.join(row.command)}", file=sys.stderr)
    log_start = demo.log_path.stat().st_size if demo else 0
    server_before = process_cpu_seconds(demo.process.pid) if demo else 0.0
    wrk_before = children_cpu_seconds()
    started = time.monotonic()
    result = subprocess.run(row.command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if demo:
        row.server_cpu = (process_cpu_seconds(demo.process.pid) - server_before) / wall
    row.wrk_cpu = (children_cpu_seconds() - wrk_before) / wall
    row.raw = result.stdout + result.stderr
    match = re.search(r"^BENCH-JSON (\{.*\})$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"bench: wrk failed ({result.returncode}):\n{row.raw}")
    row.stats = json.loads(match[1])
    if demo:
        time.sleep(1.0)  # let the requests still in flight when wrk stopped finish and log
        row.access = count_access_log(demo.log_path, log_start)


_ACCESS = re.compile(r'"GET (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) .*"(?P<agent>[^"]*)"$')


def count_access_log(log_path: Path, start: int) -> dict[str, int]:
    """Count the demo's access-log lines written after byte ``start``, by kind.

    Keys: ``tiles`` / ``tiles_non2xx`` (gateway tile requests), ``export`` / ``export_non2xx``
    (exportImage requests) and ``export_by_gateway`` (those whose User-Agent is the gateway's
    client, i.e. the gateway's upstream calls).
    """
    counts = dict.fromkeys(
        ("tiles", "tiles_non2xx", "export", "export_non2xx", "export_by_gateway"), 0
    )
    with open(log_path, "rb") as log:
        log.seek(start)
        text = log.read().decode(errors="replace")
    for line in text.splitlines():
        match = _ACCESS.search(line)
        if match is None:
            continue
        ok = match["status"].startswith("2")
        if "/tiles/" in match["path"]:
            counts["tiles"] += 1
            counts["tiles_non2xx"] += not ok
        elif "/exportImage" in match["path"]:
            counts["export"] += 1
            counts["export_non2xx"] += not ok
            counts["export_by_gateway"] += match["agent"].startswith("tile-gateway")
    return counts


# --------------------------------------------------------------------------- report


def machine_description() -> str:
    """CPU model, core count, memory and OS of this machine."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 2**20:.1f} GiB RAM"
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, {cores} cores available{memory}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def ms(microseconds: float) -> str:
    """A latency in milliseconds, 3 significant-ish digits."""
    value = microseconds / 1000
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def percent(value: float | None) -> str:
    """A CPU share (1.0 = one core) as a percentage, or a dash."""
    return "-" if value is None else f"{value * 100:.0f} %"


def table(rows: Sequence[Row]) -> str:
    """The Markdown results table."""
    lines = [
        "| # | Row | Requests/s | p50 | p99 | Requests | Non-2xx | Socket errors "
        "(connect/read/write/timeout) | X-Cache HIT / MISS / none | Server CPU | wrk CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for number, row in enumerate(rows, 1):
        s = row.stats
        errors = (
            f"{s['err_connect']:.0f}/{s['err_read']:.0f}/{s['err_write']:.0f}"
            f"/{s['err_timeout']:.0f}"
        )
        wrapped = f" (lists wrapped {s['wraps']:.0f}x: repeats!)" if row.cold and s["wraps"] else ""
        lines.append(
            f"| {number} | {row.label}{wrapped} | {row.rps:,.0f} | {ms(s['lat_p50_us'])} | "
            f"{ms(s['lat_p99_us'])} | {s['requests']:,.0f} | {s['non2xx']:.0f} | {errors} | "
            f"{s['hits']:,.0f} / {s['misses']:,.0f} / {s['no_header']:,.0f} | "
            f"{percent(row.server_cpu)} | {percent(row.wrk_cpu)} |"
        )
    return "\n".join(lines)


def ratios(pairs: Sequence[tuple[str, Row, Row]]) -> str:
    """The Markdown table of gateway/direct ratios for each pair of rows."""
    lines = [
        "| Pair | Requests/s gateway/direct | p50 gateway/direct | p99 gateway/direct |",
        "|---|---:|---:|---:|",
    ]
    for name, gateway, direct in pairs:
        lines.append(
            f"| {name} | {gateway.rps / direct.rps:.2f} | "
            f"{gateway.stats['lat_p50_us'] / direct.stats['lat_p50_us']:.2f} | "
            f"{gateway.stats['lat_p99_us'] / direct.stats['lat_p99_us']:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_duration(text: str) -> float:
    """Seconds in a wrk duration such as ``10s``, ``2m`` or ``500ms`` (bare numbers: seconds)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match[2]]
    return float(match[1]) * scale


def parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--gateway", help="gateway base URL (default: start tile-gateway demo)")
    p.add_argument(
        "--imageserver",
        help="the layer's ImageServer service URL, .../arcgis/rest/services/<name>/ImageServer",
    )
    p.add_argument("--layer", default="bluemarble", help="gateway layer (default %(default)s)")
    p.add_argument("--format", default="jpg", choices=sorted(EXPORT_FORMAT), help="tile format")
    p.add_argument("--cold-zoom", type=int, default=9, help="zoom of the cold tiles (default 9)")
    p.add_argument("--duration", default="10s", help="wrk duration per row (default 10s)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--timeout", default="10s", help="wrk request timeout (default 10s)")
    p.add_argument(
        "--demo-log-level",
        default="INFO",
        help="--log-level of the demo started without URLs (default %(default)s, as shipped:\n"
        "access logs on, which the checks count; WARNING turns them off)",
    )
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="wrk executable")
    return p


def next_cold_offset(key: str, z: int, fresh: bool) -> int:
    """Where the cold sequence starts: random for a fresh gateway, else after the last run's."""
    state: dict[str, int] = {}
    if COLD_STATE.exists():
        state = json.loads(COLD_STATE.read_text())
    if fresh or key not in state:
        return random.randrange(4**z)
    return state[key]


def save_cold_offset(key: str, offset: int) -> None:
    """Remember where the next run against the same gateway starts its cold sequence."""
    state: dict[str, int] = json.loads(COLD_STATE.read_text()) if COLD_STATE.exists() else {}
    state[key] = offset
    COLD_STATE.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


def write_paths(path: Path, paths: Sequence[str]) -> None:
    """One request path per line."""
    path.write_text("".join(f"{p}\n" for p in paths))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the report."""
    args = parser().parse_args(argv)
    if (args.gateway is None) != (args.imageserver is None):
        raise SystemExit("bench: give both --gateway and --imageserver, or neither")
    if args.threads < 1 or args.connections < args.threads:
        raise SystemExit("bench: need --threads >= 1 and --connections >= --threads")
    seconds = parse_duration(args.duration)
    wrk = args.wrk
    if args.cold_zoom < 4:
        raise SystemExit("bench: --cold-zoom must be 4 or more (z=2 and z=3 hold the hit tiles)")
    if shutil.which(wrk) is None:
        raise SystemExit(f"bench: wrk not found ({wrk!r})")

    started_at = datetime.now(UTC)
    out_dir = RESULTS_DIR / started_at.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.gateway is None:
        with start_demo(out_dir, args.demo_log_level) as demo:
            report = bench(
                args, wrk, seconds, out_dir, started_at, demo.gateway, demo.imageserver, demo
            )
    else:
        report = bench(
            args, wrk, seconds, out_dir, started_at, args.gateway, args.imageserver, None
        )
    (out_dir / "results.md").write_text(report)
    print(report)
    print(f"\n(Raw wrk output, path lists and logs: {out_dir})", file=sys.stderr)


def bench(
    args: argparse.Namespace,
    wrk: str,
    seconds: float,
    out_dir: Path,
    started_at: datetime,
    gateway_url: str,
    imageserver_url: str,
    demo: Demo | None,
) -> str:
    """Warm up, run the four wrk rows, check the X-Cache mix, and return the Markdown report."""
    gateway = Target.parse(gateway_url)
    imageserver = Target.parse(imageserver_url)
    ext, layer, z = args.format, args.layer, args.cold_zoom

    def gw_url(tile: tuple[int, int, int]) -> str:
        return gateway.origin + tile_path(gateway.path, layer, *tile, ext)

    def is_url(tile: tuple[int, int, int]) -> str:
        return imageserver.origin + export_path(imageserver.path, *tile, ext)

    # Warm-up: every hit tile once through the gateway (expect MISS), then once more (HIT);
    # the same tiles straight from the ImageServer once, so both sides start warm.
    first = [fetch(gw_url(t)) for t in HIT_TILES]
    second = [fetch(gw_url(t)) for t in HIT_TILES]
    direct = [fetch(is_url(t)) for t in HIT_TILES]
    bad = [a.status for a in first + second + direct if a.status != 200]
    if bad:
        raise SystemExit(f"bench: warm-up requests failed with statuses {sorted(set(bad))}")

    def mix(answers: Sequence[Answer]) -> str:
        found: dict[str, int] = {}
        for answer in answers:
            found[answer.x_cache or "none"] = found.get(answer.x_cache or "none", 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in sorted(found.items()))

    # Cold lists: one per wrk thread, disjoint, sized for COLD_RPS_CEILING requests/s (a run
    # against an external gateway only uses up, for the next run, the part it reached).
    state_key = f"{gateway.origin}{gateway.path}|{layer}|{ext}|z{z}"
    offset = next_cold_offset(state_key, z, fresh=demo is not None)
    per_thread = min(
        max(1000, int(COLD_RPS_CEILING * seconds / args.threads)), 4**z // (2 * args.threads)
    )
    lists = cold_lists(z, offset, args.threads, per_thread)
    for t, tiles in enumerate(lists):
        write_paths(
            out_dir / f"cold-gateway.{t}.txt",
            [tile_path(gateway.path, layer, *tile, ext) for tile in tiles],
        )
        write_paths(
            out_dir / f"cold-direct.{t}.txt",
            [export_path(imageserver.path, *tile, ext) for tile in tiles],
        )
    write_paths(
        out_dir / "hit-gateway.txt", [tile_path(gateway.path, layer, *t, ext) for t in HIT_TILES]
    )
    write_paths(
        out_dir / "hit-direct.txt", [export_path(imageserver.path, *t, ext) for t in HIT_TILES]
    )

    rows = [
        Row(
            "gw-hit",
            "Gateway, cache hits (24 warm tiles)",
            gateway.origin,
            str(out_dir / "hit-gateway.txt"),
        ),
        Row(
            "is-hit",
            "ImageServer direct, exportImage of the same 24 tiles",
            imageserver.origin,
            str(out_dir / "hit-direct.txt"),
        ),
        Row(
            "gw-cold",
            f"Gateway, cold misses (new z={z} tiles)",
            gateway.origin,
            str(out_dir / "cold-gateway.{id}.txt"),
            cold=True,
        ),
        Row(
            "is-cold",
            f"ImageServer direct, exportImage of the same z={z} tiles",
            imageserver.origin,
            str(out_dir / "cold-direct.{id}.txt"),
            cold=True,
        ),
    ]
    for row in rows:
        run_wrk(row, wrk, args, demo)
        (out_dir / f"wrk-{row.key}.txt").write_text(" ".join(row.command) + "\n\n" + row.raw)
        time.sleep(1.0)

    # After the runs: the warm tiles are still hits; the first cold tile of each thread is a hit
    # now (the run cached it); a cold tile past what the run reached is still a miss.
    reached = int(rows[2].stats["max_thread_sent"])
    after_hits = [fetch(gw_url(t)) for t in HIT_TILES[:4]]
    # The second: wrk calls request() once in thread 0 to validate the script before the run,
    # so thread 0's first path is never sent.
    cold_second = [fetch(gw_url(tiles[1])) for tiles in lists]
    # Thread t asked for indices offset + t + m*threads, m < reached: this one it never did.
    untouched_index = offset + args.threads * min(reached, per_thread)
    untouched = fetch(gw_url(cold_tile(z, untouched_index)))
    sample = cold_tile(z, offset)
    gw_bytes, is_bytes = fetch(gw_url(sample)).body, fetch(is_url(sample)).body
    if demo is None:
        save_cold_offset(state_key, untouched_index + 1)

    checks = [
        f"- Warm-up of the 24 hit tiles through the gateway: first request {mix(first)}; "
        f"second {mix(second)}.",
        f"- After the runs: 4 warm tiles {mix(after_hits)}; the second cold tile of each thread "
        f"{mix(cold_second)} (cached by the run); a z={z} tile beyond the lists "
        f"{mix([untouched])}.",
        f"- Cold tile {'/'.join(map(str, sample))}: gateway bytes "
        f"{'==' if gw_bytes == is_bytes else '!='} direct exportImage bytes "
        f"({len(gw_bytes)} / {len(is_bytes)} bytes).",
        f"- Cold lists: {args.threads} x {per_thread:,} tiles from index {offset} of the z={z} "
        f"sequence; in row 3 the busiest thread sent {reached:,} requests.",
    ]
    if demo is not None and args.demo_log_level.upper() in ("DEBUG", "INFO"):
        for row in rows:
            a = row.access
            checks.append(
                f"- Demo access log during `{row.key}`: {a['tiles']:,} tile answers "
                f"({a['tiles_non2xx']} non-2xx), {a['export']:,} exportImage answers "
                f"({a['export_non2xx']} non-2xx, {a['export_by_gateway']:,} of them asked by the "
                f"gateway); wrk saw {row.stats['misses']:,.0f} X-Cache MISS."
            )

    commands = "\n".join(" ".join(row.command) for row in rows)
    setup = (
        "`tile-gateway demo` started by bench/run.py (gateway, reference ImageServer and "
        f"in-memory cache in one Python process), --log-level {args.demo_log_level}"
        if demo is not None
        else f"gateway {gateway_url}, ImageServer {imageserver_url}"
    )
    return "\n".join(
        [
            f"## Tile gateway benchmark, {started_at:%Y-%m-%d %H:%M} UTC",
            "",
            f"- Machine: {machine_description()}",
            "- Load generator and servers share this machine.",
            f"- wrk: {wrk_version(wrk)}; {args.threads} threads, {args.connections} connections, "
            f"{args.duration} per row, timeout {args.timeout}",
            f"- Servers: {setup}",
            f"- Tiles: layer `{layer}`, format `{ext}`; server and wrk CPU are shares of one core "
            "over the run.",
            "",
            table(rows),
            "",
            ratios(
                [
                    ("Cache hits (1 vs 2)", rows[0], rows[1]),
                    ("Cold misses (3 vs 4)", rows[2], rows[3]),
                ]
            ),
            "",
            "Checks:",
            "",
            *checks,
            "",
            "wrk commands (path lists in the results folder):",
            "",
            "```",
            commands,
            "```",
        ]
    )


if __name__ == "__main__":
    main()
