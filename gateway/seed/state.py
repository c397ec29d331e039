"""Progress of a seed in a JSON file, for ``--resume``."""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.seed.options import SeedError, SeedOptions
from gateway.seed.output import note

STATE_VERSION = 1


def default_state_path(options: SeedOptions, ext: str, cache: str, variant: str = "") -> Path:
    """``$XDG_STATE_HOME/tile-gateway/seed/<layer>-<tms>-z<a>-<b>-<ext>-<hash>.json`` (else
    under ``~/.local/state``); the hash covers the bbox, the ``cache`` (backend and prefix) and
    the ``variant`` token (style and time), so seeds of other areas, variants or caches never
    share a file."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    identity: list[object] = [options.layer, options.tms, list(options.zoom), ext, options.bbox]
    identity += [cache, variant] if variant else [cache]
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
                note(f"starting over: {path} is replaced (--resume continues from it)")
            return fresh
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            note(f"no saved state at {path}: starting from the beginning")
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
            note(f"layer {identity['layer']!r} was purged since {path} was saved: starting over")
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
