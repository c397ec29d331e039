"""Peers: the tile gateway measured side by side with MapProxy, and nginx as the floor.

One command (from the repository root)::

    .venv/bin/python bench/peers.py [--duration 5s] [--rounds 6] [--seed-zoom 0-6]
                                    [--seed-concurrency 4] [--mapproxy-venv DIR]

It installs MapProxy and gunicorn into a virtualenv of their own (``--mapproxy-venv``, by
default ``bench/results/mapproxy-venv``, kept between runs; never the project's), starts its
own ``redis-server`` and the reference ImageServer with an exportImage counter (``bench/servers.py
upstream``, shared by both sides), writes a MapProxy config for that ImageServer (an ``arcgis``
source, the ``GLOBAL_WEBMERCATOR`` grid, 4 x 4 metatiles without buffer, JPEG asked from the
source and stored at the gateway's JPEG quality, one ``file`` and one ``redis`` cache) and then:

1. seeds zoom ``--seed-zoom`` of ``bluemarble`` into empty caches: ``mapproxy-seed -c N`` into
   MapProxy's Redis cache, ``tile-gateway seed --format jpg --concurrency N`` into the
   gateway's Redis, and ``mapproxy-seed`` into MapProxy's file cache; tiles/s over each
   command's wall time, exportImage calls and the bytes of their answers as the ImageServer
   counted them;
2. serves the 24 warm tiles of ``bench/run.py`` from: the gateway (one process, uvloop) with
   its L1 memory cache, the gateway with L1 off (Redis), MapProxy under gunicorn (one sync
   worker) from its file cache and from its Redis cache, and nginx (one worker) serving the
   gateway's bytes of the same tiles as static files under the gateway's URL shape, and loads
   each with the same wrk settings as ``bench/cache.py`` (servers on one CPU, wrk and Redis on
   the other), round after round in rotating order.

It prints a Markdown report (and keeps it, a JSON file and every raw output under
``bench/results/peers-<UTC timestamp>/``) with the ratios gateway / MapProxy and the targets:
hits >= 5x MapProxy; seeding >= 1.2x MapProxy's tiles/s with no more upstream bytes. Exit
status 0 when every target holds, 1 otherwise. See bench/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cache import (
    EXPORT,
    L1_BYTES,
    LAYER,
    RESULTS_DIR,
    ROOT,
    RUN_HEADER,
    SERVICE_PATH,
    Answer,
    Bench,
    Server,
    UpstreamUse,
    WrkRun,
    add_hit_options,
    add_machine_options,
    check_tools,
    children_of,
    commands_section,
    free_port,
    gateway_config,
    hit_paths,
    listeners,
    mark,
    measure_seed,
    rotate,
    run_rows,
    run_wrk,
    shell,
    start_redis,
    start_upstream,
    upstream_stats,
    warm,
    write_paths,
    x_cache,
)
from PIL import Image, ImageChops, ImageStat
from run import HIT_TILES, machine_description, parse_duration, wrk_version

from gateway.config import LayerConfig

# Exact versions, so that a re-run measures the same MapProxy; redis-py is what MapProxy's
# redis cache imports.
MAPPROXY_REQUIREMENTS = ("MapProxy==7.0.0", "gunicorn==27.0.1", "redis==8.2.0")
DEFAULT_VENV = RESULTS_DIR / "mapproxy-venv"
# The gateway's defaults, which the MapProxy side copies so that both encode and expire alike.
JPEG_QUALITY = LayerConfig.model_fields["jpeg_quality"].default
TTL = LayerConfig.model_fields["ttl"].default
GRID = "webmercator"
MAPPROXY_CACHES = {"file": "bm_file", "redis": "bm_redis"}
PREFIX = "peers"

TARGET_HITS = 5.0
TARGET_SEED = 1.2
TARGET_BYTES = 1.0


# --------------------------------------------------------------------------- MapProxy


def install_mapproxy(bench: Bench, venv: Path) -> dict[str, str]:
    """MapProxy, gunicorn and redis-py in ``venv`` (created unless it already holds exactly
    ``MAPPROXY_REQUIREMENTS``); their installed versions."""
    stamp = venv / ".peers-requirements"
    wanted = "\n".join(MAPPROXY_REQUIREMENTS) + "\n"
    if not (stamp.exists() and stamp.read_text() == wanted):
        bench.note(f"installing {' '.join(MAPPROXY_REQUIREMENTS)} into {venv}")
        log = bench.out / "mapproxy-install.log"
        with open(log, "wb") as out:
            for command in (
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [
                    str(venv / "bin/python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    *MAPPROXY_REQUIREMENTS,
                ],
            ):
                if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
                    raise SystemExit(f"bench: {shell(command)} failed; see {log}")
        stamp.write_text(wanted)
    names = [r.split("==")[0] for r in MAPPROXY_REQUIREMENTS]
    found = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import importlib.metadata as m, json, sys; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))",
            *names,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(found.stdout))


def mapproxy_config(
    folder: Path, upstream: Server, redis_port: int, zoom: tuple[int, int]
) -> tuple[Path, Path]:
    """Write ``mapproxy.yaml`` and ``seed.yaml`` into ``folder``; their paths."""
    common = {
        "grids": [GRID],
        "sources": ["bluemarble"],
        # JPEG from the source and in the cache, cut from 4 x 4 metatiles without buffer, like
        # the gateway's defaults (MapProxy's own are PNG, 4 x 4 and an 80 px buffer).
        "format": "image/jpeg",
        "request_format": "image/jpeg",
        "meta_size": [4, 4],
        "meta_buffer": 0,
    }
    cache_dir = folder / "cache"
    config = {
        # /tiles/1.0.0/<cache>/<grid>/{z}/{x}/{y}.jpeg with the XYZ row order.
        "services": {"tms": {"use_grid_names": True, "origin": "nw"}},
        "globals": {
            "image": {"jpeg_quality": JPEG_QUALITY},
            "cache": {
                "base_dir": str(cache_dir),
                "lock_dir": str(folder / "locks"),
                "tile_lock_dir": str(folder / "tile-locks"),
            },
        },
        "sources": {
            # Keys besides url go into the exportImage query as they are: the gateway's fixed
            # parameters (MapProxy warns that it does not know them, and sends them).
            "bluemarble": {"type": "arcgis", "req": {"url": upstream.url + SERVICE_PATH, **EXPORT}}
        },
        "grids": {GRID: {"base": "GLOBAL_WEBMERCATOR"}},
        "caches": {
            MAPPROXY_CACHES["file"]: {
                **common,
                "cache": {"type": "file", "directory": str(cache_dir / MAPPROXY_CACHES["file"])},
            },
            MAPPROXY_CACHES["redis"]: {
                **common,
                # The gateway's tile ttl; MapProxy's default is 3600 s.
                "cache": {
                    "type": "redis",
                    "host": "127.0.0.1",
                    "port": redis_port,
                    "default_ttl": TTL,
                },
            },
        },
        "layers": [
            {"name": name, "title": name, "sources": [name]} for name in MAPPROXY_CACHES.values()
        ],
    }
    seeds = {
        name: {"caches": [name], "grids": [GRID], "levels": {"from": zoom[0], "to": zoom[1]}}
        for name in MAPPROXY_CACHES.values()
    }
    folder.mkdir(exist_ok=True)
    conf = folder / "mapproxy.yaml"
    conf.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    seed = folder / "seed.yaml"
    seed.write_text(json.dumps({"seeds": seeds}, indent=2) + "\n")
    return conf, seed


def mapproxy_path(cache: str, z: int, x: int, y: int) -> str:
    """MapProxy's tile service path of XYZ tile ``z/x/y`` of ``cache``."""
    return f"/tiles/1.0.0/{cache}/{GRID}/{z}/{x}/{y}.jpeg"


def start_mapproxy(bench: Bench, venv: Path, conf: Path) -> Server:
    """MapProxy under gunicorn, one worker of ``--gunicorn-worker-class``, pinned with the
    servers under test."""
    port = free_port()
    worker_class = bench.args.gunicorn_worker_class
    command = [
        str(venv / "bin/gunicorn"),
        *("--workers", "1", "--worker-class", worker_class),
        *("--bind", f"127.0.0.1:{port}"),
        # gunicorn 27 opens a control socket under ~/.gunicorn by default; nothing needs it.
        "--no-control-socket",
        f'mapproxy.wsgiapp:make_wsgi_app("{conf}")',
    ]
    return bench.start(
        "mapproxy",
        bench.pinned(command, bench.args.server_cpu),
        port,
        bench.http_ready(f"http://127.0.0.1:{port}/tms/1.0.0/"),
        record=f"MapProxy under gunicorn, one {worker_class} worker",
    )


def start_nginx(bench: Bench, nginx: str, tiles: dict[str, bytes]) -> Server:
    """nginx, one worker, serving ``tiles`` (request path -> bytes) as files; no access log."""
    folder = bench.out / "nginx"
    for path, body in tiles.items():
        file = folder / "root" / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body)
    temp = folder / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    # wrk keeps its connections open; nginx closes one after 1000 requests by default.
    keepalive_requests 1000000;
    types {{ image/jpeg jpg; }}
    client_body_temp_path {temp};
    server {{
        listen 127.0.0.1:{port};
        root {folder}/root;
    }}
}}
"""
    )
    command = [nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)]
    return bench.start(
        "nginx",
        bench.pinned(command, bench.args.server_cpu),
        port,
        lambda: listeners(port) >= 1,
        record="nginx, one worker, the gateway's bytes of the 24 tiles as static files",
    )


# --------------------------------------------------------------------------- seeding


@dataclass
class SeedRun:
    """One seed into an empty cache: tiles written, wall time of the command, what the
    ImageServer counted meanwhile."""

    who: str
    tiles: int
    wall: float
    upstream: UpstreamUse
    command: str
    own_figure: str = ""

    @property
    def tiles_per_s(self) -> float:
        """Tiles over the command's wall time (start-up included, on both sides)."""
        return self.tiles / self.wall

    @property
    def jpeg_qualities(self) -> list[str]:
        """The ``compressionQuality`` values of its JPEG exportImage calls (latest query of each
        kind; ``-`` where a JPEG call had none)."""
        return sorted(
            {
                parse_qs(urlsplit(use["example"]).query).get("compressionQuality", ["-"])[0]
                for kind, use in self.upstream.kinds.items()
                if kind.split()[0] in ("format=jpg", "format=jpeg")
            }
        )


def seed_mapproxy(
    bench: Bench,
    venv: Path,
    conf: Path,
    seed_conf: Path,
    upstream: Server,
    which: str,
    redis: Any,
) -> SeedRun:
    """``mapproxy-seed`` of MapProxy's ``which`` cache (``file`` or ``redis``)."""
    cache = MAPPROXY_CACHES[which]
    command = [str(venv / "bin/mapproxy-seed"), "-f", str(conf), "-s", str(seed_conf)]
    command += ["-c", str(bench.args.seed_concurrency), "--seed", cache]
    bench.note(f"seed-mapproxy-{which}: {shell(command)}")
    before = upstream_stats(upstream)
    started = time.monotonic()
    # cwd: mapproxy-seed may leave a progress file in its working directory.
    result = subprocess.run(command, capture_output=True, text=True, cwd=conf.parent, check=False)
    wall = time.monotonic() - started
    use = UpstreamUse.between(before, upstream_stats(upstream))
    (bench.out / f"seed-mapproxy-{which}.txt").write_text(
        shell(command) + "\n\n" + result.stdout + result.stderr
    )
    if result.returncode != 0:
        raise SystemExit(
            f"bench: mapproxy-seed failed ({result.returncode}); see {bench.out}/seed-mapproxy-"
            f"{which}.txt"
        )
    if which == "redis":
        tiles = sum(1 for _ in redis.scan_iter(match=f"{cache}_{GRID}-*", count=1000))
    else:
        tiles = sum(1 for _ in (conf.parent / "cache" / cache).rglob("*.jpeg"))
    run = SeedRun(f"MapProxy {which} cache", tiles, wall, use, shell(command))
    bench.note(f"seed-mapproxy-{which}: {tiles} tiles in {wall:.1f} s, {use.calls} calls")
    return run


def seed_gateway(bench: Bench, upstream: Server, redis_url: str) -> SeedRun:
    """``tile-gateway seed --format jpg`` into the gateway's (empty) Redis prefix."""
    result = measure_seed(
        bench,
        upstream,
        redis_url,
        (4, 4),
        PREFIX,
        bench.args.seed_zoom,
        ("--format", "jpg", "--concurrency", str(bench.args.seed_concurrency)),
    )
    return SeedRun(
        "gateway Redis cache",
        int(result.number("tiles written")),
        result.wall,
        result.upstream,
        result.command,
        f"its summary: {result.summary['tiles/s']} tiles/s over {result.summary['elapsed']}",
    )


# --------------------------------------------------------------------------- hits


@dataclass
class Target:
    """A server loaded in the hit rounds: its paths, the processes doing its work, and its
    answers to the warm-up (with their X-Cache headers)."""

    key: str
    label: str
    server: Server
    paths: Path
    pids: list[int]
    answers: list[Answer]
    warm_up: str


def pixel_difference(a: bytes, b: bytes) -> float:
    """Mean absolute difference (0-255) of two images' RGB pixels."""
    with Image.open(io.BytesIO(a)) as first, Image.open(io.BytesIO(b)) as second:
        diff = ImageChops.difference(first.convert("RGB"), second.convert("RGB"))
    return statistics.fmean(ImageStat.Stat(diff).mean)


def quantization(data: bytes) -> Any:
    """The quantisation tables of a JPEG (equal tables: equal quality setting)."""
    with Image.open(io.BytesIO(data)) as image:
        return getattr(image, "quantization", None)


def measure_hits(
    bench: Bench, upstream: Server, redis_url: str, venv: Path, conf: Path
) -> tuple[dict[str, list[WrkRun]], list[str], int]:
    """Every hit target, warmed, then ``rounds`` wrk runs of each in rotating order; the runs,
    the checks made and the exportImage calls during the runs (0 when every answer was a
    hit)."""
    args = bench.args
    cpu = args.server_cpu
    before = upstream_stats(upstream)
    gw_l1 = bench.gateway(
        "gateway-l1",
        gateway_config(upstream, redis_url, PREFIX, l1=L1_BYTES),
        cpus=cpu,
        record="gateway, L1 64 MiB, Redis L2",
    )
    gw_redis = bench.gateway(
        "gateway-redis",
        gateway_config(upstream, redis_url, PREFIX, l1=0),
        cpus=cpu,
        record="gateway, L1 off (l1_max_bytes 0), Redis",
    )
    mapproxy = start_mapproxy(bench, venv, conf)
    gw_paths = hit_paths()
    # The first fetch of each tile fills the gateway's L1 from the seeded Redis; its bytes are
    # what nginx serves.
    gw_bytes = [a.body for a in warm(gw_l1, gw_paths)[1]]
    nginx = start_nginx(bench, args.nginx, dict(zip(gw_paths, gw_bytes, strict=True)))
    specs = [
        ("gateway-l1", "gateway, L1 memory", gw_l1, gw_paths, [gw_l1.pid]),
        ("gateway-redis", "gateway, Redis (L1 off)", gw_redis, gw_paths, [gw_redis.pid]),
        *(
            (
                f"mapproxy-{which}",
                f"MapProxy, {which} cache",
                mapproxy,
                [mapproxy_path(cache, *t) for t in HIT_TILES],
                children_of(mapproxy.pid),  # the gunicorn worker
            )
            for which, cache in MAPPROXY_CACHES.items()
        ),
        ("nginx", "nginx, static files", nginx, gw_paths, children_of(nginx.pid)),
    ]
    targets = []
    for key, label, server, paths, pids in specs:
        first, second = warm(server, paths)
        targets.append(
            Target(
                key,
                label,
                server,
                write_paths(bench.out / f"paths-{key}.txt", paths),
                pids,
                second,
                f"{x_cache(first)}, then {x_cache(second)}",
            )
        )
    warmed_stats = upstream_stats(upstream)

    def load(target: Target) -> Callable[[int], WrkRun]:
        return lambda r: run_wrk(
            bench,
            f"hits-{target.key}-{r + 1}",
            target.label,
            target.server,
            target.paths,
            connections=args.connections,
            threads=args.threads,
            duration=args.duration,
            pids=target.pids,
        )

    runs = rotate(args.rounds, {target.key: load(target) for target in targets})
    warmed = UpstreamUse.between(before, warmed_stats)
    during = UpstreamUse.between(warmed_stats, upstream_stats(upstream))
    for server in (gw_l1, gw_redis, mapproxy, nginx):
        bench.stop(server)
    return runs, hit_checks(targets, warmed, during), during.calls


def hit_checks(targets: Sequence[Target], warmed: UpstreamUse, during: UpstreamUse) -> list[str]:
    """What the report says about the hit targets: same tiles, same quality, where from."""
    by_key = {t.key: t for t in targets}
    gateway = by_key["gateway-l1"].answers
    lines = [
        f"exportImage calls during the warm-ups: {warmed.calls} (0 when the seeds covered the "
        f"24 tiles); during the runs: {during.calls} (must be 0: every answer a cache hit, else "
        "the hit figures do not count)",
        "X-Cache of the gateways' warm-ups: "
        + "; ".join(f"{t.label}: {t.warm_up}" for t in targets if t.key.startswith("gateway")),
        "nginx bytes == the gateway's bytes for all 24 tiles: "
        + str(all(a.body == b.body for a, b in zip(gateway, by_key["nginx"].answers, strict=True))),
    ]
    for key in ("gateway-redis", *(f"mapproxy-{w}" for w in MAPPROXY_CACHES)):
        answers = by_key[key].answers
        diffs = [pixel_difference(a.body, b.body) for a, b in zip(gateway, answers, strict=True)]
        same_tables = all(
            quantization(a.body) == quantization(b.body)
            for a, b in zip(gateway, answers, strict=True)
        )
        lines.append(
            f"{by_key[key].label} vs gateway L1, same 24 tiles: mean absolute pixel difference "
            f"max {max(diffs):.2f}, mean {statistics.fmean(diffs):.2f} (0-255); same JPEG "
            f"quantisation tables (same quality): {same_tables}"
        )
    lines.append(
        "mean tile size: "
        + ", ".join(
            f"{t.label} {statistics.fmean(len(a.body) for a in t.answers):,.0f} B" for t in targets
        )
    )
    return lines


# --------------------------------------------------------------------------- report


def median_rps(runs: Sequence[WrkRun]) -> float:
    """Median requests/s of runs."""
    return statistics.median(r.rps for r in runs)


def mb(n: float) -> str:
    """Bytes as MB (10^6), or kB below 1 MB, for the report."""
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def report(
    bench: Bench,
    started: datetime,
    versions: dict[str, str],
    redis_version: str,
    seeds: dict[str, SeedRun],
    runs: dict[str, list[WrkRun]],
    checks: list[str],
    hit_upstream_calls: int,
) -> tuple[str, dict[str, Any], bool]:
    """The Markdown report, the JSON document and whether every target holds."""
    args = bench.args
    rps = {key: median_rps(r) for key, r in runs.items()}
    hit_pairs = [
        ("gateway-l1", "mapproxy-file", "Hits: gateway L1 memory vs MapProxy file cache"),
        ("gateway-l1", "mapproxy-redis", "Hits: gateway L1 memory vs MapProxy Redis cache"),
        ("gateway-redis", "mapproxy-redis", "Hits: gateway Redis (L1 off) vs MapProxy Redis cache"),
    ]
    gw_seed, mp_seed = seeds["gateway"], seeds["mapproxy-redis"]
    expected = sum(4**z for z in range(args.zoom[0], args.zoom[1] + 1))
    # A seed that did not write every tile of the zoom range is no figure to compare.
    seeds_complete = all(seed.tiles == expected for seed in seeds.values())
    # Both sides must ask the upstream for JPEG at one quality, else bytes and time differ by it.
    same_quality = len({tuple(seed.jpeg_qualities) for seed in seeds.values()}) == 1
    seed_ratio = gw_seed.tiles_per_s / mp_seed.tiles_per_s
    bytes_ratio = gw_seed.upstream.bytes / mp_seed.upstream.bytes
    figures: list[dict[str, Any]] = []
    for gw, mp, title in hit_pairs:
        ratio = rps[gw] / rps[mp]
        figures.append(
            {
                "measurement": f"{title} (req/s)",
                "gateway": rps[gw],
                "mapproxy": rps[mp],
                "ratio": ratio,
                "nginx": rps["nginx"],
                "target": f">= {TARGET_HITS:g}",
                "ok": ratio >= TARGET_HITS and hit_upstream_calls == 0,
            }
        )
    figures += [
        {
            "measurement": f"Seeding z{args.seed_zoom}, Redis caches (tiles/s over wall time)",
            "gateway": gw_seed.tiles_per_s,
            "mapproxy": mp_seed.tiles_per_s,
            "ratio": seed_ratio,
            "target": f">= {TARGET_SEED:g}",
            "ok": seed_ratio >= TARGET_SEED and seeds_complete and same_quality,
        },
        {
            "measurement": "Seeding: upstream bytes (exportImage answers)",
            "gateway": gw_seed.upstream.bytes,
            "mapproxy": mp_seed.upstream.bytes,
            "ratio": bytes_ratio,
            "target": f"<= {TARGET_BYTES:g}",
            "ok": bytes_ratio <= TARGET_BYTES and seeds_complete and same_quality,
        },
        {
            "measurement": "Seeding: exportImage calls",
            "gateway": gw_seed.upstream.calls,
            "mapproxy": mp_seed.upstream.calls,
            "ratio": gw_seed.upstream.calls / mp_seed.upstream.calls,
            "target": None,
            "ok": None,
        },
    ]
    ok = all(f["ok"] for f in figures if f["ok"] is not None)

    def cell(figure: dict[str, Any], side: str) -> str:
        value = figure[side]
        if "bytes" in figure["measurement"]:
            return mb(value)
        return f"{value:,.1f}" if "tiles/s" in figure["measurement"] else f"{value:,.0f}"

    pin = (
        f"`taskset`: wrk and Redis on CPU {args.load_cpu}, the servers under test of the hit "
        f"runs on CPU {args.server_cpu}; the seeds, the ImageServer and MapProxy's seed workers "
        "unpinned"
        if args.pin
        else "no CPU pinning"
    )
    lines = [
        f"## Peers: the gateway and MapProxy side by side, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {machine_description()}; load average before the run {bench.load_before}, "
        f"after {os.getloadavg()[0]:.2f}.",
        f"- wrk: {wrk_version(args.wrk)}; {redis_version}; {pin}.",
        "- MapProxy side: "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
        + f" in `{shell([str(args.mapproxy_venv)])}`; gunicorn 1 {args.gunicorn_worker_class} "
        "worker, no access log.",
        f"- Hit loads: {args.threads} wrk thread(s), {args.connections} connections, "
        f"{args.duration} per run, {args.rounds} runs of each server in rotating order, over "
        "the 24 warm tiles (all of z=2, row 3 of z=3); figures are medians.",
        f"- Seeds: zoom {args.seed_zoom} of `{LAYER}`, whole world, 4x4 metatiles without "
        f"buffer, JPEG quality {JPEG_QUALITY}, concurrency {args.seed_concurrency} on both "
        "sides, each into an empty cache of the run's own Redis; tiles/s = tiles written / "
        "wall time of the command.",
        "",
        "| Measurement | Gateway | MapProxy | Gateway ÷ MapProxy | nginx (floor) | Target | |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for f in figures:
        floor = f"{f['nginx']:,.0f}" if "nginx" in f else ""
        target = f["target"].replace(">=", "≥").replace("<=", "≤") if f["target"] else "-"
        verdict = mark(f["ok"]) if f["ok"] is not None else ""
        lines.append(
            f"| {f['measurement']} | {cell(f, 'gateway')} | {cell(f, 'mapproxy')} | "
            f"{f['ratio']:.2f} | {floor} | {target} | {verdict} |"
        )
    lines += [
        "",
        "Floor: nginx served "
        f"{rps['nginx']:,.0f} req/s; as a share of it, gateway L1 "
        f"{rps['gateway-l1'] / rps['nginx']:.0%}, gateway Redis "
        f"{rps['gateway-redis'] / rps['nginx']:.0%}, MapProxy file "
        f"{rps['mapproxy-file'] / rps['nginx']:.0%}, MapProxy Redis "
        f"{rps['mapproxy-redis'] / rps['nginx']:.0%}.",
        "",
        f"Overall: {'every target holds' if ok else 'SOME TARGETS MISSED'}.",
        "",
        "### Hit runs",
        "",
        *RUN_HEADER,
    ]
    for key, key_runs in runs.items():
        lines += run_rows(key, key_runs)
    lines += ["", *(f"- {c}" for c in checks), ""]
    lines += [
        "### Seeds",
        "",
        "| Seed | Tiles | Wall time | Tiles/s | exportImage calls | Upstream bytes | Note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for seed in seeds.values():
        lines.append(
            f"| {seed.who} | {seed.tiles:,} | {seed.wall:.1f} s | {seed.tiles_per_s:,.1f} | "
            f"{seed.upstream.calls:,} | {mb(seed.upstream.bytes)} | {seed.own_figure} |"
        )
    lines += [
        "",
        f"Zoom {args.seed_zoom} has {expected:,} tiles (both sides must write them all); "
        "written: "
        + ", ".join(f"{seed.who} {seed.tiles:,}" for seed in seeds.values())
        + " (gateway: its summary; MapProxy: keys in Redis, files on disk).",
        "",
        "exportImage calls of each seed by kind, with the latest query of each kind:",
        "",
        "| Seed | Kind | Calls | Bytes | Example query |",
        "|---|---|---:|---:|---|",
    ]
    for seed in seeds.values():
        for kind, use in seed.upstream.kinds.items():
            lines.append(
                f"| {seed.who} | {kind} | {use['calls']:,} | {mb(use['bytes'])} | "
                f"`{use['example']}` |"
            )
    lines += [
        "",
        "JPEG quality asked upstream (`compressionQuality` of the JPEG exportImage calls): "
        + ", ".join(f"{seed.who} {'/'.join(seed.jpeg_qualities)}" for seed in seeds.values())
        + (
            ": the same on both sides (the gateway sends its layer's `export.compressionQuality`,"
            " MapProxy the same value from its source's `req`)"
            if same_quality
            else ": NOT the same, so the seeding targets do not count"
        )
        + ".",
        "",
        *commands_section(
            bench,
            [
                *(f"# seed, {seed.who}\n{seed.command}" for seed in seeds.values()),
                "# wrk, one run of each server (all of them are in the results folder, wrk-*.txt)",
                *(shell(key_runs[0].command) for key_runs in runs.values()),
            ],
        ),
    ]
    document = {
        "started": started.isoformat(),
        "machine": machine_description(),
        "wrk": wrk_version(args.wrk),
        "redis": redis_version,
        "mapproxy_side": versions,
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "figures": figures,
        "ok": ok,
        "hit_runs": {
            key: [{"rps": r.rps, **r.stats, "server_cpu": r.server_cpu} for r in key_runs]
            for key, key_runs in runs.items()
        },
        "seeds": {
            key: {**asdict(seed), "tiles_per_s": seed.tiles_per_s} for key, seed in seeds.items()
        },
        "checks": checks,
    }
    return "\n".join(lines) + "\n", document, ok


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add_hit_options(p)
    p.add_argument("--seed-zoom", default="0-6", help="zoom range seeded on both sides (0-6)")
    p.add_argument(
        "--seed-concurrency",
        type=int,
        default=4,
        help="metatiles at once: the gateway's --concurrency, mapproxy-seed's -c (4)",
    )
    p.add_argument(
        "--mapproxy-venv",
        type=Path,
        default=DEFAULT_VENV,
        help=f"virtualenv for MapProxy and gunicorn (default {DEFAULT_VENV.relative_to(ROOT)})",
    )
    p.add_argument(
        "--gunicorn-worker-class",
        default="sync",
        choices=("sync", "gthread"),
        help="MapProxy's gunicorn worker: sync (no keep-alive) or gthread (keep-alive) (sync)",
    )
    p.add_argument("--nginx", default="nginx", help="nginx executable (nginx)")
    add_machine_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run both sides, print the report; 0 when every target holds."""
    args = parser().parse_args(argv)
    check_tools(args, args.nginx)
    parse_duration(args.duration)
    first, _, last = args.seed_zoom.partition("-")
    args.zoom = (int(first), int(last or first))
    args.mapproxy_venv = args.mapproxy_venv.resolve()
    started = datetime.now(UTC)
    out_dir = RESULTS_DIR / f"peers-{started:%Y%m%dT%H%M%SZ}"
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, out_dir)
    versions = install_mapproxy(bench, args.mapproxy_venv)
    with bench.stack:
        redis, redis_url, redis_version = start_redis(bench)
        upstream = start_upstream(bench)
        redis_port = urlsplit(redis_url).port or 6379
        conf, seed_conf = mapproxy_config(out_dir / "mapproxy", upstream, redis_port, args.zoom)
        # The two seeds of the target back to back; MapProxy's file seed, no target's
        # figure, last.
        venv = args.mapproxy_venv
        seeds = {
            "mapproxy-redis": seed_mapproxy(bench, venv, conf, seed_conf, upstream, "redis", redis)
        }
        seeds["gateway"] = seed_gateway(bench, upstream, redis_url)
        seeds["mapproxy-file"] = seed_mapproxy(
            bench, venv, conf, seed_conf, upstream, "file", redis
        )
        runs, checks, hit_calls = measure_hits(bench, upstream, redis_url, venv, conf)
        text, document, ok = report(
            bench, started, versions, redis_version, seeds, runs, checks, hit_calls
        )
    (out_dir / "results.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(text)
    print(f"(raw outputs: {out_dir})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
