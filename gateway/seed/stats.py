"""What one seed run did."""

from __future__ import annotations

from dataclasses import dataclass


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
