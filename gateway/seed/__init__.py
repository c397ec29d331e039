"""Seeding: fill the cache with a layer's tiles for a zoom range and area before clients ask
(``tile-gateway seed``), one exportImage call per metatile.

The walk is deterministic: TileMatrix by TileMatrix, then metatile rows, then columns, each
metatile aligned as ``TilePipeline.metatile_of`` aligns it, so a seeded metatile is exactly the
one a serving replica would fetch (``plan``). Every fetch goes through the pipeline's coalescing
(``TilePipeline.fetch_metatile``): a seed and the serving replicas sharing its Redis never ask
the upstream for the same metatile at the same time (``runner``). Metatiles are numbered
0..N-1 in walk order; a JSON state file keeps the low-water mark (every metatile below it is
finished), the finished ones above it and the failed ones, which is what ``--resume``
continues from (``state``). ``output`` is what the terminal shows.
"""

from gateway.seed.options import SeedError, SeedOptions
from gateway.seed.runner import run_seed

__all__ = ["SeedError", "SeedOptions", "run_seed"]
