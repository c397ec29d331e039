"""Purge records in the cache: each layer's count of whole-layer purges (its generation), the
count of every purge, and the log of partial purges, which replicas read to drop purged tiles
from their L1 (keys: ``cache.keys.KeyLayout``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.cache.backend import Backend
from gateway.cache.keys import KeyLayout

# Partial purges kept in the log: a replica further behind than this drops its whole L1.
LOG_LENGTH = 1000


class PurgeRecords:
    """The purge counters and log of the layers under ``keys``, in ``store``."""

    def __init__(self, store: Backend, keys: KeyLayout) -> None:
        self.store = store
        self.keys = keys

    async def purge_layer(self, layer: str) -> int | None:
        """Count a whole-layer purge of ``layer``: its new purge count (``None`` when the
        cache cannot be reached)."""
        return await self.store.increment(self.keys.generation(layer))

    async def read(self, layers: Sequence[str]) -> tuple[list[int], int] | None:
        """The purge count of each of ``layers`` and the count of every purge; ``None`` when
        the cache cannot be reached."""
        counters = await self.store.counters(
            [self.keys.generation(layer) for layer in layers] + [self.keys.purge_seq]
        )
        return None if counters is None else (counters[:-1], counters[-1])

    async def announce(self, event: dict[str, Any] | None) -> None:
        """Count a purge, with ``event`` (a partial purge, as JSON-ready data) in the log: the
        event is written before the count moves, so a replica that sees the count finds it."""
        text = None if event is None else json.dumps(event)
        await self.store.announce(self.keys.purge_log, text, self.keys.purge_seq, LOG_LENGTH)

    async def events(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` partial purges, newest first.

        Raises ``ValueError`` for an entry that is not a JSON object (a foreign value).
        """
        events = [json.loads(text) for text in await self.store.events(self.keys.purge_log, count)]
        if not all(isinstance(event, dict) for event in events):
            raise ValueError("the purge log holds a value that is not a purge event")
        return events
