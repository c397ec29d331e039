"""Seeding: fill the cache with a layer's tiles for a zoom range and area before clients ask
(``tile-gateway seed``), one exportImage call per metatile.

The walk is deterministic: TileMatrix by TileMatrix, then metatile rows, then columns, each
metatile aligned as ``TilePipeline.metatile_of`` aligns it, so a seeded metatile is exactly the
one a serving replica would fetch. Every fetch goes through the pipeline's coalescing
(``TilePipeline.fetch_metatile``): a seed and the serving replicas sharing its Redis never ask
the upstream for the same metatile at the same time. Metatiles are numbered 0..N-1 in walk
order; a JSON state file keeps the low-water mark (every metatile below it is finished), the
finished ones above it and the failed ones, which is what ``--resume`` continues from.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import heapq
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gateway.cache.codec import TileEntry
from gateway.config import GatewayConfig
from gateway.grids import WEB_MERCATOR_QUAD, MetaTile, TileLimits
from gateway.purge import Purger
from gateway.resources import load_service_info, open_pipeline
from gateway.sources.imageserver import UpstreamError
from gateway.tiles import (
    TilePipeline,
    TileRequest,
    UnsupportedFormat,
)

log = logging.getLogger(__name__)

STATE_VERSION = 1
# The longest wait between two attempts at one metatile, in seconds.
BACKOFF_CAP = 60.0
# How often, in seconds, the state file is rewritten while the seed runs: a crash or a kill -9
# loses at most this much progress, and the file is not rewritten for every metatile.
SAVE_INTERVAL = 2.0
EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2

Outcome = Literal["done", "skipped", "failed"]


class SeedError(ValueError):
    """The seed cannot run as asked (unknown layer or TileMatrixSet, zoom outside the layer's
    range, a state file made for other arguments...); the message says why. Exit status 2."""


class _CacheFailure(Exception):
    """The cache could not be read, or did not keep the tiles just written: retried like an
    upstream failure, and never counted as seeded."""


@dataclass(frozen=True)
class SeedOptions:
    """What to seed and how.

    ``zoom`` is an inclusive TileMatrix range; ``bbox`` ``(west, south, east, north)`` in degrees
    (``None``: the layer's data extent, else the whole matrix); ``format`` ``png``/``jpg``
    (``None``: the layer's first). At most ``concurrency`` metatiles are fetched at once; a
    failed metatile is tried ``retries`` more times, waiting ``backoff`` seconds, then twice
    that, and so on up to ``BACKOFF_CAP``. ``state`` is the progress file (``None``: see
    ``default_state_path``); ``resume`` continues from it; ``progress`` shows the progress bar
    even when stderr is not a terminal.
    """

    layer: str
    zoom: tuple[int, int]
    tms: str = WEB_MERCATOR_QUAD
    bbox: tuple[float, float, float, float] | None = None
    format: str | None = None
    concurrency: int = 4
    retries: int = 3
    backoff: float = 1.0
    state: Path | None = None
    resume: bool = False
    progress: bool = False


@dataclass
class SeedStats:
    """What one run did: metatiles ``done`` (fetched by this run), ``skipped`` (already fresh,
    or fetched meanwhile by another process) and ``failed`` (after every retry); ``tiles`` and
    ``bytes`` written and checked in the cache; exportImage calls made (retries included);
    ``elapsed`` seconds."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    tiles: int = 0
    bytes: int = 0
    upstream_calls: int = 0
    elapsed: float = 0.0

    @property
    def tiles_per_second(self) -> float:
        """Tiles written per second of the run."""
        return self.tiles / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class _Level:
    """The metatiles of TileMatrix ``z`` met by the seed: ``cols`` x ``rows`` of them, the first
    being metatile column ``first_col``, row ``first_row`` (in metatiles, not tiles); ``offset``
    is the walk index of that first one."""

    z: int
    first_col: int
    first_row: int
    cols: int
    rows: int
    offset: int

    @property
    def count(self) -> int:
        return self.cols * self.rows


def seed_request(pipeline: TilePipeline, options: SeedOptions) -> TileRequest:
    """Check ``options`` against the configuration, without I/O; the request of the first
    TileMatrix's tile 0/0 (base TileMatrixSet, scale and extension resolved) that every
    metatile of the seed is addressed from.

    Raises ``SeedError`` for an unknown layer or TileMatrixSet, a format the layer does not
    offer, or a zoom range outside the layer's.
    """
    layer = pipeline.layers.get(options.layer)
    if layer is None:
        known = ", ".join(pipeline.layers)
        raise SeedError(f"unknown layer {options.layer!r} (configured: {known})")
    grid = layer.grids.get(options.tms)
    if grid is None:
        served = ", ".join(layer.grids)
        raise SeedError(
            f"layer {options.layer!r} is not served in TileMatrixSet {options.tms!r} "
            f"(it is in: {served})"
        )
    low, high = layer.zoom_range(grid)
    first, last = options.zoom
    if first > last:
        raise SeedError(f"zoom {first}-{last}: the first level must not be above the second")
    if first < low or last > high:
        raise SeedError(
            f"zoom {first}-{last} is outside {low}-{high}, the TileMatrix range of layer "
            f"{options.layer!r} in {options.tms}"
        )
    ext = options.format or layer.config.formats[0]
    try:
        return pipeline.resolve(options.layer, options.tms, first, 0, 0, ext)
    except UnsupportedFormat as exc:
        raise SeedError(str(exc)) from None


def _intersect(a: TileLimits | None, b: TileLimits | None) -> TileLimits | None:
    if a is None or b is None:
        return None
    limits = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return limits if limits[0] <= limits[1] and limits[2] <= limits[3] else None


class SeedPlan:
    """The metatiles of a seed in walk order, addressed by index ``0 .. total - 1``.

    ``template`` comes from ``seed_request``; ``zoom`` is the inclusive TileMatrix range and
    ``bbox`` (west, south, east, north, degrees) narrows the layer's data extent. Only
    metatiles holding a tile with data are walked: tiles outside the data extent are answered
    without the cache. Nothing is enumerated up front, so a plan of millions costs nothing.
    """

    def __init__(
        self,
        pipeline: TilePipeline,
        template: TileRequest,
        zoom: tuple[int, int],
        bbox: tuple[float, float, float, float] | None,
    ) -> None:
        self.pipeline = pipeline
        self.template = template
        layer = pipeline.layers[template.layer]
        grid = pipeline.grids[template.tms]
        # The same size metatile_of uses (upstream's maximum image included), so the columns
        # and rows here are the pipeline's metatile boundaries.
        self.meta_size = layer.meta_size(grid, template.scale)
        extent = None if bbox is None else grid.extent_from_wgs84(bbox)
        cols, rows = self.meta_size
        self.levels: list[_Level] = []
        offset = 0
        for z in range(zoom[0], zoom[1] + 1):
            limits = layer.limits(grid, z)
            if bbox is not None:
                limits = _intersect(limits, None if extent is None else grid.limits(extent, z))
            if limits is None:
                continue
            min_col, max_col, min_row, max_row = limits
            level = _Level(
                z,
                min_col // cols,
                min_row // rows,
                max_col // cols - min_col // cols + 1,
                max_row // rows - min_row // rows + 1,
                offset,
            )
            self.levels.append(level)
            offset += level.count
        self.total = offset
        self._offsets = [level.offset for level in self.levels]

    def metatile(self, index: int) -> tuple[TileRequest, MetaTile]:
        """The request of the first tile of metatile ``index`` and the metatile itself."""
        level = self.levels[bisect.bisect_right(self._offsets, index) - 1]
        row, col = divmod(index - level.offset, level.cols)
        request = replace(
            self.template,
            z=level.z,
            x=(level.first_col + col) * self.meta_size[0],
            y=(level.first_row + row) * self.meta_size[1],
        )
        return request, self.pipeline.metatile_of(request)

    def tile_keys(self, request: TileRequest, meta: MetaTile) -> list[str]:
        """The cache keys of every tile of ``meta`` (all stored by one fetch)."""
        return [self.pipeline.key(replace(request, x=x, y=y)) for x, y, _ in meta.crops()]


def default_state_path(options: SeedOptions, ext: str, cache: str) -> Path:
    """``$XDG_STATE_HOME/tile-gateway/seed/<layer>-<tms>-z<a>-<b>-<ext>-<hash>.json`` (else
    under ``~/.local/state``); the hash covers the bbox and the ``cache`` (backend and prefix),
    so seeds of other areas or other caches never share a file."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    identity = [options.layer, options.tms, list(options.zoom), ext, options.bbox, cache]
    digest = hashlib.blake2b(json.dumps(identity).encode(), digest_size=4).hexdigest()
    first, last = options.zoom
    name = f"{options.layer}-{options.tms}-z{first}-{last}-{ext}-{digest}.json"
    return root / "tile-gateway" / "seed" / name


@dataclass
class SeedState:
    """Progress of one seed, kept in the JSON file ``path``.

    ``identity`` names the walk (arguments, cache, metatile size, number of metatiles) and
    ``generation`` the layer's cache generation when the seed started. Every metatile index
    below ``mark`` is finished; ``above`` holds the finished ones at or above it (a handful:
    work is handed out in order), ``failed`` those that failed, wherever they are.
    """

    path: Path
    identity: dict[str, Any]
    generation: str
    mark: int = 0
    above: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)

    @classmethod
    def open(cls, path: Path, identity: dict[str, Any], generation: str, resume: bool) -> SeedState:
        """The saved state at ``path`` when ``resume``, else a new one.

        A missing file, or one saved under another generation of the layer (purged since: its
        tiles are gone), starts over with a note on stderr, as does not resuming when there is
        a file. Raises ``SeedError`` when the file is unreadable or was made for another walk.
        """
        fresh = cls(path, identity, generation)
        if not resume:
            if path.exists():
                _note(f"starting over: {path} is replaced (--resume continues from it)")
            return fresh
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            _note(f"no saved state at {path}: starting from the beginning")
            return fresh
        except (OSError, ValueError) as exc:
            raise SeedError(f"cannot read the state file {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise SeedError(f"{path} is not a seed state file of this version")
        saved = data.get("identity", {})
        if saved != identity:
            differences = "; ".join(
                f"{name} {saved.get(name)!r} there, {value!r} here"
                for name, value in identity.items()
                if saved.get(name) != value
            )
            raise SeedError(
                f"{path} was made for another seed ({differences}): run without --resume to "
                "start over, or name another --state"
            )
        if data.get("generation") != generation:
            _note(f"layer {identity['layer']!r} was purged since {path} was saved: starting over")
            return fresh
        try:
            mark = int(data["mark"])
            above = {int(index) for index in data["above"]}
            failed = {int(index) for index in data["failed"]}
        except (KeyError, TypeError, ValueError):
            raise SeedError(f"{path} is not a complete seed state file") from None
        return cls(path, identity, generation, mark, above, failed)

    @property
    def complete(self) -> int:
        """How many metatiles are finished without failure."""
        return self.mark + len(self.above) - len(self.failed)

    @property
    def unfinished(self) -> int:
        """How many metatiles were never finished (failed ones are finished)."""
        return int(self.identity["metatiles"]) - self.mark - len(self.above)

    def pending(self) -> Iterator[int]:
        """The indices still to seed, ascending: the failed ones, then the unfinished ones from
        the mark on. Reads ``above`` lazily, so it may be consumed while the seed runs."""
        total = int(self.identity["metatiles"])
        unfinished = (index for index in range(self.mark, total) if index not in self.above)
        return heapq.merge(sorted(self.failed), unfinished)

    def finish(self, index: int, ok: bool) -> None:
        """Record metatile ``index`` as finished, successfully or not."""
        if ok:
            self.failed.discard(index)
        else:
            self.failed.add(index)
        if index >= self.mark:
            self.above.add(index)
            while self.mark in self.above:
                self.above.remove(self.mark)
                self.mark += 1

    def save(self) -> None:
        """Write the file atomically (a temporary file renamed over it). Raises ``OSError``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": STATE_VERSION,
            "identity": self.identity,
            "generation": self.generation,
            "mark": self.mark,
            "above": sorted(self.above),
            "failed": sorted(self.failed),
        }
        temporary = self.path.with_name(f"{self.path.name}.tmp")
        temporary.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temporary, self.path)


class Seeder:
    """Runs a ``plan`` with a pool of ``options.concurrency`` workers, recording progress in
    ``state``; ``stop`` (or a signal through ``interrupt``) ends it early."""

    def __init__(
        self, pipeline: TilePipeline, plan: SeedPlan, state: SeedState, options: SeedOptions
    ) -> None:
        self.pipeline = pipeline
        self.plan = plan
        self.state = state
        self.options = options
        self.stats = SeedStats()
        self.signal: int | None = None
        self._layer = pipeline.layers[plan.template.layer]
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._bar: tqdm[Any] | None = None
        self._started = 0.0
        self._saved = 0.0

    @property
    def stopped(self) -> bool:
        """Whether the run was told to stop before the end."""
        return self._stopping.is_set()

    def stop(self, cancel: bool = False) -> None:
        """Take no new metatile; running ones finish, or are cancelled with ``cancel`` (they
        stay unfinished in the state, for ``--resume``)."""
        self._stopping.set()
        if cancel:
            for worker in self._workers:
                worker.cancel()

    def interrupt(self, signum: int) -> None:
        """Signal handler: the first signal stops taking work, the second cancels the rest."""
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = signum
            tqdm.write(
                f"tile-gateway seed: {name}: no new metatiles; finishing the running ones "
                "(send it again to cancel them)",
                file=sys.stderr,
            )
            self.stop()
        else:
            tqdm.write(f"tile-gateway seed: {name} again: cancelling", file=sys.stderr)
            self.stop(cancel=True)

    async def run(self) -> SeedStats:
        """Seed every pending metatile (or until stopped); the state is saved on the way out,
        whatever ends the run. Returns this run's statistics."""
        self._started = self._saved = time.monotonic()
        show = self.options.progress or sys.stderr.isatty()
        work = self.state.pending()
        bar: tqdm[Any] = tqdm(
            total=self.plan.total,
            initial=self.state.complete,
            unit="metatile",
            file=sys.stderr,
            disable=not show,
            dynamic_ncols=True,
        )
        # Log lines would tear the bar apart; through tqdm.write they print above it.
        with bar, logging_redirect_tqdm() if show else nullcontext():
            self._bar = bar
            try:
                async with asyncio.TaskGroup() as group:
                    self._workers = [
                        group.create_task(self._worker(work))
                        for _ in range(self.options.concurrency)
                    ]
            finally:
                self.stats.elapsed = time.monotonic() - self._started
                self.state.save()
        return self.stats

    async def _worker(self, work: Iterator[int]) -> None:
        # Workers share one iterator: ``next`` never awaits, so each index goes to one worker,
        # and only ``concurrency`` metatiles exist at a time however large the seed.
        while not self._stopping.is_set():
            index = next(work, None)
            if index is None:
                return
            outcome = await self._seed(index)
            if outcome is not None:
                self._finish(index, outcome)

    async def _seed(self, index: int) -> Outcome | None:
        """One metatile with retries; ``None`` when the run stopped while waiting to retry."""
        request, meta = self.plan.metatile(index)
        keys = self.plan.tile_keys(request, meta)
        attempt = 0
        while True:
            try:
                return await self._attempt(request, meta, keys)
            except (UpstreamError, _CacheFailure) as exc:
                reason = exc.message if isinstance(exc, UpstreamError) else str(exc)
                where = f"TileMatrix {meta.z} metatile at TileCol {meta.col0} TileRow {meta.row0}"
                if attempt >= self.options.retries:
                    log.warning("%s failed after %d attempt(s): %s", where, attempt + 1, reason)
                    return "failed"
                delay = min(BACKOFF_CAP, self.options.backoff * 2**attempt)
                attempt += 1
                log.info("%s: %s; retry %d in %g s", where, reason, attempt, delay)
                if await self._stopped_within(delay):
                    return None

    async def _attempt(self, request: TileRequest, meta: MetaTile, keys: list[str]) -> Outcome:
        cache = self.pipeline.cache
        entries = await cache.get_many(keys)
        if not cache.available:
            # Every tile would read as missing: fetching now would only load the upstream.
            raise _CacheFailure(f"the cache ({cache.description}) cannot be read")
        missing = [key for key, entry in zip(keys, entries, strict=True) if not self._fresh(entry)]
        if not missing:
            return "skipped"
        try:
            # Keyed on a missing tile, the fetch is skipped only if that tile turns fresh
            # meanwhile: another process fetched the metatile.
            _, produced = await self.pipeline.fetch_metatile(request, meta, missing[0])
        except UpstreamError:
            # Only this process's own exportImage call raises here (a waiter whose leader
            # failed takes the lock and calls for itself).
            self.stats.upstream_calls += 1
            raise
        if not produced:
            return "skipped"  # another process fetched it meanwhile
        self.stats.upstream_calls += 1
        # The cache swallows write failures (a miss, never an error, when serving); a seed must
        # know, and reading the tiles back also gives their size.
        stored = await cache.get_many(keys)
        if not all(self._fresh(entry) for entry in stored):
            raise _CacheFailure(f"the cache ({cache.description}) did not keep the tiles")
        self.stats.tiles += len(stored)
        self.stats.bytes += sum(len(entry.data) for entry in stored if entry is not None)
        return "done"

    def _fresh(self, entry: TileEntry | None) -> bool:
        return entry is not None and time.time() - entry.created < self._layer.config.ttl

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _finish(self, index: int, outcome: Outcome) -> None:
        if outcome == "done":
            self.stats.done += 1
        elif outcome == "skipped":
            self.stats.skipped += 1
        else:
            self.stats.failed += 1
        self.state.finish(index, outcome != "failed")
        now = time.monotonic()
        if self._bar is not None:
            rate = self.stats.tiles / max(now - self._started, 1e-9)
            self._bar.set_postfix_str(f"{rate:.1f} tiles/s", refresh=False)
            self._bar.update(1)
        if now - self._saved >= SAVE_INTERVAL:
            self._saved = now
            self.state.save()


def _note(message: str) -> None:
    tqdm.write(f"tile-gateway seed: {message}", file=sys.stderr)


def _size(count: int) -> str:
    """``count`` bytes for people: ``812 B``, ``3.4 MiB``."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def _summary(seeder: Seeder, title: str, status: str) -> str:
    stats, state = seeder.stats, seeder.state
    lines = [
        f"{title}: {status}",
        f"tiles written: {stats.tiles}",
        f"metatiles: {stats.done} done, {stats.skipped} skipped, {stats.failed} failed; "
        f"{state.complete} of {seeder.plan.total} complete",
        f"upstream calls: {stats.upstream_calls}",
        f"bytes: {stats.bytes} ({_size(stats.bytes)})",
        f"errors: {stats.failed}",
        f"elapsed: {stats.elapsed:.1f} s",
        f"tiles/s: {stats.tiles_per_second:.1f}",
    ]
    return "\n".join(lines)


async def run_seed(
    config: GatewayConfig, options: SeedOptions, *, handle_signals: bool = False
) -> int:
    """Seed as ``options`` says, print the summary on stdout, return the exit status.

    0: every metatile seeded; 1: some failed after their retries (kept in the state file for
    ``--resume``) or the cache cannot be reached; 2: bad arguments (message on stderr); 128 +
    the signal number when SIGINT (130) or SIGTERM (143) stopped it. Those two signals are
    handled only with ``handle_signals`` (the command line, in the main thread); otherwise a
    cancellation of the caller's task still saves the state, then propagates.
    """
    async with open_pipeline(config, l1=False, agent="tile-gateway/0.1 (seed)") as pipeline:
        try:
            template = seed_request(pipeline, options)
        except SeedError as exc:
            _note(str(exc))
            return EXIT_USAGE
        cache = pipeline.cache
        if not await cache.ping():
            _note(f"the cache ({cache.description}) cannot be reached")
            return EXIT_ERRORS
        if cache.backend == "memory":
            _note("the cache is this process's memory: the tiles are gone when the seed ends")
        purger = Purger(pipeline)
        await purger.start()  # seed under the generation the serving replicas use
        layer = pipeline.layers[options.layer]
        await load_service_info([layer], config.server.startup_timeout)
        plan = SeedPlan(pipeline, template, options.zoom, options.bbox)
        identity = {
            "layer": options.layer,
            "tms": options.tms,
            "format": template.ext,
            "zoom": list(options.zoom),
            "bbox": None if options.bbox is None else list(options.bbox),
            "cache": f"{cache.description} prefix {pipeline.prefix}",
            "meta_size": list(plan.meta_size),
            "metatiles": plan.total,
        }
        path = options.state or default_state_path(options, template.ext, identity["cache"])
        generation = layer.generation
        try:
            state = SeedState.open(path, identity, generation, options.resume)
            state.save()  # a state file that cannot be written is an error now, not at Ctrl-C
        except SeedError as exc:
            _note(str(exc))
            return EXIT_USAGE
        except OSError as exc:
            _note(f"cannot write the state file {path}: {exc.strerror or exc}")
            return EXIT_USAGE
        if plan.total == 0:
            _note("nothing to seed: no tile of these TileMatrices meets the layer's data and bbox")
        seeder = Seeder(pipeline, plan, state, options)
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for signum in signals:
            loop.add_signal_handler(signum, seeder.interrupt, signum)
        # Replicas may purge the layer while the seed runs: later metatiles then go under the
        # new generation, as the replicas will ask for them.
        purger.start_watching(config.cache.purge_poll)
        try:
            await seeder.run()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            await purger.stop_watching()
    if layer.generation != generation:
        _note(
            f"layer {options.layer!r} was purged during the seed: the tiles seeded before the "
            "purge are gone; run the seed again"
        )
    title = (
        f"seed {options.layer} {options.tms} z{options.zoom[0]}-{options.zoom[1]} {template.ext}"
    )
    if seeder.stopped and state.unfinished:
        print(_summary(seeder, title, "interrupted"))
        print(f"state: {path} (continue with --resume)")
        return 128 + (seeder.signal or signal.SIGINT)
    if state.failed:
        print(_summary(seeder, title, f"{len(state.failed)} metatile(s) failed"))
        print(f"state: {path} (--resume retries the failed metatiles)")
        return EXIT_ERRORS
    path.unlink(missing_ok=True)  # nothing left to resume
    print(_summary(seeder, title, "complete"))
    return EXIT_OK
