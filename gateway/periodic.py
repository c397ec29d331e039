"""A step repeated every few seconds in the background: how each replica follows what the
others changed in Redis (purges, published layers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """``step()`` every ``interval`` seconds in a task, from ``start`` until ``stop``; an
    exception of ``failures`` is logged as ``what: <error>`` and the next step comes as
    planned.

    ``stop`` sets a flag besides cancelling the task: on Python 3.11 a cancel that meets a
    redis-py timeout in the same turn can come out as a ``TimeoutError``, which a step would
    take for a failure, and without the flag the loop would go on.
    """

    def __init__(
        self,
        step: Callable[[], Awaitable[object]],
        failures: tuple[type[Exception], ...],
        what: str,
    ) -> None:
        self._step = step
        self._failures = failures
        self._what = what
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self, interval: float) -> None:
        """Start stepping every ``interval`` seconds (the first step after one interval)."""
        self._stopped = False
        self._task = asyncio.create_task(self._run(interval))

    async def stop(self) -> None:
        """End the task and wait for it; nothing happens when it was never started."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._stopped:
                return
            try:
                await self._step()
            except self._failures as exc:
                log.warning("%s: %s", self._what, exc)
