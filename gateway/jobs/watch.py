"""Waiting on jobs without every client polling the upstream: one poller per job across
every replica, and every waiter of a replica woken by that replica's one watch of the job.

While a replica has waiters on a job (long polls, event streams) it runs one ``_Watch`` of
it. The watch that holds the job's lease (``JobStore.take_lease``: a Redis key with the
watch's own token, renewed as it goes) asks the upstream for the status, every
``poll_min`` seconds after a change and backing off by half again up to ``poll_max`` while
nothing changes, and keeps each change in the store with a new version. The watches of the
other replicas read that state from the store (a small GET) and take the lease over when it
lapses (its holder stopped or died). So 100 clients waiting on one job, on any number of
replicas, cause one status call per poll interval upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway import metrics
from gateway.errors import GPUnavailable, StoreUnavailable
from gateway.jobs.store import STATUSES, JobState, JobStore

log = logging.getLogger(__name__)

Poll = Callable[[str], Awaitable[dict[str, Any]]]
"""The upstream job JSON of a job id (tokens removed). Raises ``GPUnavailable``."""
# Backoff factor between polls that found no change.
_BACKOFF = 1.5
# The stages of a GP job's life (arcgis-rest.md section 5.1; ArcGIS REST "GP job"): a job
# never goes back to an earlier one, so an answer of an earlier stage than the one kept is a
# poll that was overtaken (a replica whose lease lapsed while its call was under way) and is
# not kept. Statuses outside this table are kept as changes.
_STAGES = {
    "esriJobNew": 0,
    "esriJobSubmitted": 1,
    "esriJobWaiting": 2,
    "esriJobExecuting": 3,
    "esriJobCancelling": 4,
    "esriJobSucceeded": 5,
    "esriJobFailed": 5,
    "esriJobTimedOut": 5,
    "esriJobCancelled": 5,
    "esriJobDeleting": 6,
    "esriJobDeleted": 7,
}


class _Watch:
    """One job watched by this replica: its latest ``state`` and the waiters it wakes."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.state: JobState | None = None
        self.waiters = 0
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None
        # Set once its loop has ended: a waiter that came later needs a new watch, or it
        # would see this one end under it and answer without a change.
        self.closing = False

    async def adopt(self, state: JobState) -> None:
        """Take ``state`` when its status differs from the one held, and wake the waiters."""
        if self.state is not None and self.state.status == state.status:
            return
        self.state = state
        async with self.changed:
            self.changed.notify_all()


class Watches:
    """The watches of this replica over ``store``; ``poll`` asks the upstream. The lease
    lasts ``lease`` seconds; a watch without the lease reads the store every ``sync``
    seconds."""

    def __init__(
        self,
        store: JobStore,
        poll: Poll,
        poll_min: float,
        poll_max: float,
        lease: float,
        sync: float,
    ) -> None:
        self._store = store
        self._poll = poll
        self._poll_min = poll_min
        self._poll_max = poll_max
        self._lease = lease
        self._sync = sync
        self._watches: dict[str, _Watch] = {}
        self._closed = False

    @contextlib.asynccontextmanager
    async def _joined(self, job_id: str) -> AsyncIterator[_Watch]:
        watch = self._watches.get(job_id)
        if watch is None or watch.closing or watch.task is None or watch.task.done():
            watch = self._watches[job_id] = _Watch(job_id)
            watch.task = asyncio.create_task(self._run(watch))
        watch.waiters += 1
        try:
            yield watch
        finally:
            watch.waiters -= 1
            if watch.waiters == 0:
                async with watch.changed:
                    # Wake the watch's loop: with no one waiting it gives up the lease.
                    watch.changed.notify_all()

    async def _wait(self, watch: _Watch, until: Callable[[], bool], timeout: float) -> None:
        """Wait for ``until()`` or the watch's end, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        async with watch.changed:
            while not until() and watch.task is not None and not watch.task.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.changed.wait(), left)

    async def wait_change(self, job_id: str, timeout: float) -> JobState | None:
        """The job's status at its next change after the first status this replica had of
        it, or at the ``timeout`` (seconds); at once when the job is finished. ``None`` when
        no status could be had in time."""
        deadline = time.monotonic() + timeout
        async with self._joined(job_id) as watch:
            await self._wait(watch, lambda: watch.state is not None, timeout)
            first = watch.state
            if first is None or first.terminal:
                return first
            await self._wait(
                watch,
                lambda: watch.state is not None and watch.state.status != first.status,
                deadline - time.monotonic(),
            )
            return watch.state

    async def states(self, job_id: str, idle: float) -> AsyncIterator[JobState]:
        """The job's states as they change, from the current one to a finished one; ends
        early after ``idle`` seconds without a change."""
        async with self._joined(job_id) as watch:
            last: JobState | None = None
            while True:
                seen = last
                await self._wait(
                    watch,
                    lambda seen=seen: (
                        watch.state is not None
                        and (seen is None or watch.state.status != seen.status)
                    ),
                    idle,
                )
                state = watch.state
                if state is None or (last is not None and state.status == last.status):
                    return
                last = state
                yield state
                if state.terminal:
                    return

    async def _run(self, watch: _Watch) -> None:
        """Poll (holding the lease) or follow the store (without it) while anyone waits."""
        token = secrets.token_hex(16)
        interval = self._poll_min
        held = False
        try:
            # The last status the gateway relayed is what a change is a change from; a
            # finished job's is all there is to know (no upstream call then).
            with contextlib.suppress(StoreUnavailable):
                stored = await self._store.state(watch.job_id)
                if stored is not None:
                    await watch.adopt(stored)
            while (
                watch.waiters > 0
                and not self._closed
                and not (watch.state is not None and watch.state.terminal)
            ):
                try:
                    held = await self._store.take_lease(watch.job_id, token, self._lease)
                    if held:
                        changed = await self.record(watch.job_id, await self._poll(watch.job_id))
                        interval = (
                            self._poll_min if changed else min(self._poll_max, interval * _BACKOFF)
                        )
                        pause = interval
                    else:
                        stored = await self._store.state(watch.job_id)
                        if stored is not None:
                            await watch.adopt(stored)
                        pause = self._sync
                except (StoreUnavailable, GPUnavailable) as exc:
                    log.warning("jobs: watching %s: %s", watch.job_id, exc)
                    interval = min(self._poll_max, interval * _BACKOFF)
                    pause = interval
                if watch.state is not None and watch.state.terminal:
                    break
                async with watch.changed:
                    # Woken early when the last waiter leaves.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            watch.changed.wait_for(lambda: watch.waiters == 0), pause
                        )
        finally:
            watch.closing = True
            if held:
                with contextlib.suppress(StoreUnavailable):
                    await self._store.release_lease(watch.job_id, token)
            async with watch.changed:
                watch.changed.notify_all()
            if self._watches.get(watch.job_id) is watch:
                del self._watches[watch.job_id]

    async def record(self, job_id: str, job: dict[str, Any]) -> bool:
        """Keep the job JSON ``job`` (tokens removed) as the job's state when its status
        differs from the one kept and is not of an earlier stage (``_STAGES``: a stale poll),
        with the next version, and hand it to this replica's watch of the job; a change is
        counted by its status (``metrics.job_status``, a status outside ``STATUSES`` as
        ``other``). Whether it changed. Raises ``StoreUnavailable``."""
        stored = await self._store.state(job_id)
        state = JobState(1 if stored is None else stored.version + 1, job, time.time())
        changed = stored is None or (
            stored.status != state.status and not _earlier(state.status, stored.status)
        )
        if changed:
            await self._store.put_state(job_id, state)
            metrics.job_status(state.status if state.status in STATUSES else "other")
        watch = self._watches.get(job_id)
        if watch is not None:
            await watch.adopt(state if changed or stored is None else stored)
        return changed

    async def close(self) -> None:
        """Stop every watch (at shutdown). The flag ends a watch even when its cancellation
        is lost in a Redis call (on Python 3.11 it may come out as a timeout, which the watch
        takes for a store failure)."""
        self._closed = True
        tasks = [watch.task for watch in self._watches.values() if watch.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _earlier(status: str, than: str) -> bool:
    """Whether ``status`` is a stage of a job's life before ``than`` (``_STAGES``)."""
    stage, other = _STAGES.get(status), _STAGES.get(than)
    return stage is not None and other is not None and stage < other
