"""What a seed shows on the terminal: notes on stderr (above the progress bar) and the summary
on stdout."""

from __future__ import annotations

import sys

from tqdm import tqdm

from gateway.seed.stats import SeedStats


def note(message: str) -> None:
    """``message`` on stderr, printed above the progress bar when there is one."""
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


def summary(stats: SeedStats, complete: int, total: int, title: str, status: str) -> str:
    """The lines printed when a seed ends: ``title: status``, then what the run did, and
    ``complete`` of the plan's ``total`` metatiles finished without failure."""
    lines = [
        f"{title}: {status}",
        f"tiles written: {stats.tiles}",
        f"metatiles: {stats.done} done, {stats.skipped} skipped, {stats.failed} failed; "
        f"{complete} of {total} complete",
        f"upstream calls: {stats.upstream_calls}",
        f"bytes: {stats.bytes} ({_size(stats.bytes)})",
        f"errors: {stats.failed}",
        f"elapsed: {stats.elapsed:.1f} s",
        f"tiles/s: {stats.tiles_per_second:.1f}",
    ]
    return "\n".join(lines)
