"""Purging cached tiles, on this replica and every other one sharing the cache: a purge spec
turned into keys through the tile pipeline (layers, TileMatrixSets, key layout), and into
records the replicas read through ``cache.generations``.

A whole layer is purged by one generation increment: the layer's keys carry the generation,
so new requests use new keys and the old entries age out by their TTL. A purge limited by
TileMatrixSet, zoom range or bbox deletes exactly the keys computed from the grid, in batches
of pipelined DELs (never KEYS or FLUSHDB), yielding to the event loop after each batch. Every
replica polls two small counters and drops purged entries from its in-process L1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from gateway import metrics
from gateway.cache.generations import LOG_LENGTH, PurgeRecords
from gateway.errors import UnknownLayer, UnknownTileMatrixSet
from gateway.grids import Grid, parse_bbox, parse_zoom
from gateway.periodic import Periodic
from gateway.tiles import TilePipeline

log = logging.getLogger(__name__)

# A partial purge larger than this is refused: a whole-layer purge does it in one increment.
MAX_KEYS = 2_000_000
_BATCH = 10_000


class PurgeTooLarge(ValueError):
    """The purge would delete more keys than ``MAX_KEYS``."""


@dataclass(frozen=True)
class PurgeSpec:
    """What to purge: a ``layer``, optionally only TileMatrixSet ``tms``, TileMatrix levels
    ``zoom`` (inclusive range), the tiles meeting ``bbox`` (west, south, east, north,
    degrees), the variants of ``style`` and those at ``time`` (one of the layer's time
    values; ``tiles.variants``). A spec with none of these options is a whole-layer purge,
    every variant included; a partial one without ``style`` or ``time`` reaches every style
    or time value the layer offers."""

    layer: str
    tms: str | None = None
    zoom: tuple[int, int] | None = None
    bbox: tuple[float, float, float, float] | None = None
    style: str | None = None
    time: str | None = None

    @classmethod
    def parse(
        cls,
        layer: str,
        tms: str | None = None,
        zoom: str | None = None,
        bbox: str | None = None,
        style: str | None = None,
        time: str | None = None,
    ) -> PurgeSpec:
        """A spec from command-line style text (see ``grids.parse_zoom``, ``grids.parse_bbox``).

        Raises ``ValueError`` naming the bad part.
        """
        return cls(
            layer,
            tms or None,
            parse_zoom(zoom) if zoom else None,
            parse_bbox(bbox) if bbox else None,
            style or None,
            time or None,
        )

    @property
    def whole_layer(self) -> bool:
        """Whether this purges every tile of the layer."""
        return (
            self.tms is None
            and self.zoom is None
            and self.bbox is None
            and self.style is None
            and self.time is None
        )


@dataclass(frozen=True)
class PurgeResult:
    """What a purge did: the layer's new ``generation`` (whole-layer purges), or how many keys
    were computed and how many of them existed (``deleted``)."""

    layer: str
    generation: str | None = None
    keys: int = 0
    deleted: int = 0


class Purger:
    """Runs purges for ``pipeline`` and keeps this replica in step with the others' purges."""

    def __init__(self, pipeline: TilePipeline) -> None:
        self.pipeline = pipeline
        self.records = PurgeRecords(pipeline.cache.store, pipeline.keys)
        self._seq = 0
        # A foreign value in our key space skips one sync, not the watching. ``sync`` is looked
        # up at each step (the lambda), so a replaced ``sync`` (tests do) is the one called.
        self._watching = Periodic(
            lambda: self.sync(), (ValueError, KeyError), "purge sync skipped a malformed entry"
        )

    def check(self, spec: PurgeSpec) -> None:
        """Raise ``UnknownLayer``, ``UnknownTileMatrixSet`` or ``ValueError`` (``VariantRefused``
        for a style or time the layer does not offer) for a bad spec."""
        layer = self.pipeline.layers.get(spec.layer)
        if layer is None:
            raise UnknownLayer(spec.layer)
        if spec.tms is not None and spec.tms not in layer.grids:
            raise UnknownTileMatrixSet(spec.layer, spec.tms, tuple(layer.grids))
        if spec.zoom is not None and spec.zoom[0] > spec.zoom[1]:
            raise ValueError("the zoom range must be low-high")
        if spec.bbox is not None:
            west, south, east, north = spec.bbox
            if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
                raise ValueError("bbox must be west,south,east,north in degrees")
        layer.variants.tokens(spec.style, spec.time)

    def _ranges(self, spec: PurgeSpec) -> Iterator[tuple[Grid, int, tuple[int, int, int, int]]]:
        """``(base grid, TileMatrix, (min col, max col, min row, max row))`` of every tile block
        ``spec`` covers: each base TileMatrixSet of the layer (or of ``tms``), each TileMatrix
        in range, the tiles meeting ``bbox``."""
        layer = self.pipeline.layers[spec.layer]
        names = [spec.tms] if spec.tms is not None else list(layer.grids)
        bases: dict[str, Grid] = {}
        for name in names:
            base = self.pipeline.grids[layer.grids[name].base]
            bases[base.identifier] = base
        for grid in bases.values():
            low, high = layer.zoom_range(grid)
            if spec.zoom is not None:
                low, high = max(low, spec.zoom[0]), min(high, spec.zoom[1])
            extent = None if spec.bbox is None else grid.extent_from_wgs84(spec.bbox)
            if spec.bbox is not None and extent is None:
                continue
            for z in range(low, high + 1):
                if extent is None:
                    width, height = grid.matrix_sizes[z]
                    yield grid, z, (0, width - 1, 0, height - 1)
                    continue
                found = grid.limits(extent, z)
                if found is not None:
                    yield grid, z, found

    def keys(self, spec: PurgeSpec) -> Iterator[str]:
        """Every cache key of the tiles ``spec`` covers (see ``_ranges``), at scales 1 and 2,
        in every format of the layer, in each variant it names (``LayerVariants.tokens``)."""
        layer = self.pipeline.layers[spec.layer]
        keys = self.pipeline.keys
        variants = layer.variants.tokens(spec.style, spec.time)
        for grid, z, (col_min, col_max, row_min, row_max) in self._ranges(spec):
            for y in range(row_min, row_max + 1):
                for x in range(col_min, col_max + 1):
                    for scale in (1, 2):
                        for ext in layer.config.formats:
                            for variant in variants:
                                yield keys.tile(
                                    spec.layer,
                                    layer.generation,
                                    grid.identifier,
                                    z,
                                    x,
                                    y,
                                    scale,
                                    ext,
                                    variant,
                                )

    def count(self, spec: PurgeSpec) -> int:
        """How many keys ``keys(spec)`` gives, computed from the tile blocks without listing
        them (a purge's size is known before any key is made)."""
        layer = self.pipeline.layers[spec.layer]
        per_tile = 2 * len(layer.config.formats) * len(layer.variants.tokens(spec.style, spec.time))
        return per_tile * sum(
            (col_max - col_min + 1) * (row_max - row_min + 1)
            for _grid, _z, (col_min, col_max, row_min, row_max) in self._ranges(spec)
        )

    async def purge(self, spec: PurgeSpec) -> PurgeResult:
        """Purge what ``spec`` names, here and (through the cache) on every replica.

        Raises what ``check`` raises, and ``PurgeTooLarge`` for a partial purge of more than
        ``MAX_KEYS`` keys.
        """
        self.check(spec)
        layer = self.pipeline.layers[spec.layer]
        cache = self.pipeline.cache
        if spec.whole_layer:
            counter = await self.records.purge_layer(spec.layer)
            self._adopt_generation(spec.layer, layer.purges + 1 if counter is None else counter)
            await self.records.announce(None)
            metrics.purged(spec.layer, whole=True)
            return PurgeResult(spec.layer, generation=layer.generation)
        if self.count(spec) > MAX_KEYS:
            raise PurgeTooLarge(
                f"more than {MAX_KEYS} tiles: narrow the zoom range or bbox, or purge the layer"
            )
        computed = deleted = 0
        for batch in _batched(self.keys(spec), _BATCH):
            computed += len(batch)
            deleted += await cache.delete_many(batch)
            # The memory backend deletes without awaiting anything: yield, so that requests
            # (health probes among them) are answered between slices of a long purge.
            await asyncio.sleep(0)
        await self.records.announce(asdict(spec))
        metrics.purged(spec.layer, whole=False)
        return PurgeResult(spec.layer, keys=computed, deleted=deleted)

    def _adopt_generation(self, name: str, purges: int) -> None:
        layer = self.pipeline.layers[name]
        if purges == layer.purges:
            return
        layer.set_purges(purges)
        l1 = self.pipeline.cache.l1
        if l1 is not None:
            start = self.pipeline.keys.layer_tiles(name)
            l1.discard_where(lambda key: key.startswith(start))

    async def sync(self) -> None:
        """Adopt the replicas' purges: new generations, and partial purges dropped from this
        replica's L1. A gap longer than the log drops the whole L1.

        Whole-layer purges count in ``seq`` without a log event, so the newest ``missed``
        events may include older ones already applied: dropping keys twice is harmless. This
        replica's own purges come back here too, which keeps purges made concurrently
        elsewhere from being skipped.
        """
        cache = self.pipeline.cache
        if not cache.shared:
            return
        names = list(self.pipeline.layers)
        found = await self.records.read(names)
        if found is None:
            return
        purges, seq = found
        for name, count in zip(names, purges, strict=True):
            self._adopt_generation(name, count)
        if seq <= self._seq:
            return
        missed = seq - self._seq
        self._seq = seq
        if cache.l1 is None:
            return
        if missed > LOG_LENGTH:
            cache.l1.discard_where(lambda _key: True)
            return
        for event in await self.records.events(missed):
            spec = PurgeSpec(
                event["layer"],
                event.get("tms"),
                tuple(event["zoom"]) if event.get("zoom") else None,
                tuple(event["bbox"]) if event.get("bbox") else None,
                event.get("style"),
                event.get("time"),
            )
            if spec.layer in self.pipeline.layers:
                for batch in _batched(self.keys(spec), _BATCH):
                    cache.l1.discard(batch)
                    await asyncio.sleep(0)

    async def start(self) -> None:
        """Read the current generations and purge count (at start-up)."""
        if not self.pipeline.cache.shared:
            return
        found = await self.records.read([])
        if found is not None:
            self._seq = found[1]
        await self.sync()

    def start_watching(self, interval: float) -> None:
        """``sync`` every ``interval`` seconds in a task, until ``stop_watching``."""
        self._watching.start(interval)

    async def stop_watching(self) -> None:
        """End the watching task and wait for it."""
        await self._watching.stop()


def _batched(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
