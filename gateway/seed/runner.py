"""Running a seed: a pool of workers over the plan, retries with backoff, signals, the state
saved on the way out, and ``run_seed``, the command's body."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Literal

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gateway.cache.codec import TileEntry
from gateway.config import GatewayConfig
from gateway.errors import UpstreamError
from gateway.grids import MetaTile
from gateway.purge import Purger
from gateway.seed.options import EXIT_ERRORS, EXIT_OK, EXIT_USAGE, SeedError, SeedOptions
from gateway.seed.output import note, summary
from gateway.seed.plan import SeedPlan, seed_request
from gateway.seed.state import SeedState, default_state_path
from gateway.seed.stats import SeedStats
from gateway.sources.http import ExportLimit
from gateway.tiles import Layer, TilePipeline, TileRequest, load_service_info, open_pipeline

log = logging.getLogger(__name__)

# The longest wait between two attempts at one metatile, in seconds.
BACKOFF_CAP = 60.0
# Metatiles worked on per exportImage call allowed at once: while one waits for the upstream,
# another is cut and stored, so the upstream never waits for the seed's own work.
WORKERS_PER_CALL = 2
# How often, in seconds, the state file is rewritten while the seed runs: a crash or a kill -9
# loses at most this much progress, and the file is not rewritten for every metatile.
SAVE_INTERVAL = 2.0

Outcome = Literal["done", "skipped", "failed"]


class CacheFailure(Exception):
    """The cache could not be read, or did not keep the tiles just written: retried like an
    upstream failure, and never counted as seeded."""


class Seeder:
    """Runs a ``plan`` with a pool of ``WORKERS_PER_CALL`` x ``options.concurrency`` workers
    (the pipeline's upstream pool allows ``options.concurrency`` exportImage calls at once),
    recording progress in
    ``state``; ``stop`` (or a signal through ``interrupt``) ends it early."""

    def __init__(
        self, pipeline: TilePipeline, plan: SeedPlan, state: SeedState, options: SeedOptions
    ) -> None:
        self.pipeline, self.plan, self.state, self.options = pipeline, plan, state, options
        self.stats = SeedStats()
        # The signal that stopped the run, if one did.
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
                        for _ in range(WORKERS_PER_CALL * self.options.concurrency)
                    ]
            finally:
                self.stats.elapsed = time.monotonic() - self._started
                self.state.save()
        return self.stats

    async def _worker(self, work: Iterator[int]) -> None:
        # Workers share one iterator: ``next`` never awaits, so each index goes to one worker,
        # and only so many metatiles exist at a time however large the seed.
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
        attempt = 0
        while True:
            try:
                return await self._attempt(request, meta)
            except (UpstreamError, CacheFailure) as exc:
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

    async def _attempt(self, request: TileRequest, meta: MetaTile) -> Outcome:
        cache = self.pipeline.cache
        # One generation for the whole attempt: a whole-layer purge meanwhile must not make
        # the fetch store keys other than those looked for here.
        generation = self.pipeline.generation(request)
        keys = self.pipeline.metatile_keys(request, meta, generation)
        entries = await cache.get_many(keys)
        if not cache.available:
            # Every tile would read as missing: fetching now would only load the upstream.
            raise CacheFailure(f"the cache ({cache.description}) cannot be read")
        missing = [key for key, entry in zip(keys, entries, strict=True) if not self._fresh(entry)]
        if not missing:
            return "skipped"
        try:
            # Keyed on a missing tile, the fetch is skipped only if that tile turns fresh
            # meanwhile: another process fetched the metatile.
            _, produced = await self.pipeline.fetch_metatile(request, meta, missing[0], generation)
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
            raise CacheFailure(f"the cache ({cache.description}) did not keep the tiles")
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


async def run_seed(
    config: GatewayConfig, options: SeedOptions, *, handle_signals: bool = False
) -> int:
    """Seed as ``options`` says, print the summary on stdout, return the exit status.

    0: every metatile seeded; 1: some failed after their retries (kept in the state file for
    ``--resume``) or the cache cannot be reached; 2: bad arguments (message on stderr); 128 +
    the signal number when SIGINT (130) or SIGTERM (143) stopped it. Those two signals are
    handled only with ``handle_signals`` (the command line, in the main thread); otherwise a
    cancellation of the caller's task still saves the state, then propagates.

    The seed keeps to ``server.max_concurrent_exports`` like the serving replicas: a higher
    ``concurrency`` is lowered to it (with a note). Its calls wait for a slot as long as it
    takes, never failing for a busy upstream: the workers bound how many wait.
    """
    limit = config.server.max_concurrent_exports
    if options.concurrency > limit:
        note(
            f"--concurrency {options.concurrency} is above server.max_concurrent_exports: "
            f"seeding with {limit} exportImage calls at once"
        )
        options = replace(options, concurrency=limit)
    async with open_pipeline(
        config,
        l1=False,
        agent="tile-gateway/0.1 (seed)",
        upstream_connections=options.concurrency,
        exports=ExportLimit(options.concurrency),
    ) as pipeline:
        layer = pipeline.layers.get(options.layer)
        if layer is not None and _times_from_service(layer):
            # Its time values are the service's: read before --time is checked against them.
            await load_service_info([layer], config.server.startup_timeout)
        try:
            template = seed_request(pipeline, options)
        except SeedError as exc:
            note(str(exc))
            return EXIT_USAGE
        cache = pipeline.cache
        if not await cache.ping():
            note(f"the cache ({cache.description}) cannot be reached")
            return EXIT_ERRORS
        if cache.backend == "memory":
            note("the cache is this process's memory: the tiles are gone when the seed ends")
        purger = Purger(pipeline)
        await purger.start()  # seed under the generation the serving replicas use
        layer = pipeline.layers[options.layer]
        if not _times_from_service(layer):
            await load_service_info([layer], config.server.startup_timeout)
        plan = SeedPlan(pipeline, template, options.zoom, options.bbox)
        identity = {
            "layer": options.layer,
            "tms": options.tms,
            "format": template.ext,
            "zoom": list(options.zoom),
            "bbox": None if options.bbox is None else list(options.bbox),
            # The normalised variant: equal styles and times share a state file.
            **({"variant": template.variant} if template.variant else {}),
            "cache": f"{cache.description} prefix {pipeline.keys.prefix}",
            "meta_size": list(plan.meta_size),
            "metatiles": plan.total,
        }
        path = options.state or default_state_path(
            options, template.ext, identity["cache"], template.variant
        )
        generation = layer.generation
        try:
            state = SeedState.open(path, identity, generation, options.resume)
            state.save()  # a state file that cannot be written is an error now, not at Ctrl-C
        except SeedError as exc:
            note(str(exc))
            return EXIT_USAGE
        except OSError as exc:
            note(f"cannot write the state file {path}: {exc.strerror or exc}")
            return EXIT_USAGE
        if plan.total == 0:
            note("nothing to seed: no tile of these TileMatrices meets the layer's data and bbox")
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
        note(
            f"layer {options.layer!r} was purged during the seed: the tiles seeded before the "
            "purge are gone; run the seed again"
        )
    title = (
        f"seed {options.layer} {options.tms} z{options.zoom[0]}-{options.zoom[1]} {template.ext}"
    )
    if seeder.stopped and state.unfinished:
        print(summary(seeder.stats, state.complete, plan.total, title, "interrupted"))
        print(f"state: {path} (continue with --resume)")
        return 128 + (seeder.signal or signal.SIGINT)
    if state.failed:
        print(
            summary(
                seeder.stats,
                state.complete,
                plan.total,
                title,
                f"{len(state.failed)} metatile(s) failed",
            )
        )
        print(f"state: {path} (--resume retries the failed metatiles)")
        return EXIT_ERRORS
    path.unlink(missing_ok=True)  # nothing left to resume
    print(summary(seeder.stats, state.complete, plan.total, title, "complete"))
    return EXIT_OK


def _times_from_service(layer: Layer) -> bool:
    """Whether ``layer`` reads its time values from the service (``time.from_service``)."""
    return layer.config.time is not None and layer.config.time.from_service
