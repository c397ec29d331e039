"""What a seed is asked to do, and how it refuses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.grids import WEB_MERCATOR_QUAD

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


class SeedError(ValueError):
    """The seed cannot run as asked (unknown layer or TileMatrixSet, zoom outside the layer's
    range, a state file made for other arguments...); the message says why. Exit status 2."""


@dataclass(frozen=True)
class SeedOptions:
    """What to seed and how.

    ``zoom`` is an inclusive TileMatrix range; ``bbox`` ``(west, south, east, north)`` in degrees
    (``None``: the layer's data extent, else the whole matrix); ``format`` any layer format
    (``None``: the layer's first); ``style`` and ``time`` one of the layer's variants (``None``:
    its default style and time). At most ``concurrency`` metatiles are fetched from the upstream
    at once (exportImage calls in flight; never more than ``server.max_concurrent_exports``,
    see ``runner.run_seed``), while as many more are cut and stored; a
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
    style: str | None = None
    time: str | None = None
    concurrency: int = 4
    retries: int = 3
    backoff: float = 1.0
    state: Path | None = None
    resume: bool = False
    progress: bool = False
