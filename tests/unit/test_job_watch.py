"""The job watch keeps a job's status moving forward: a poll answered after a newer status
was kept (a replica whose lease lapsed while its call was under way) does not take a job back
to an earlier stage, which a long poll would then report as a change."""

from __future__ import annotations

from typing import Any

from gateway.jobs.store import MemoryJobStore
from gateway.jobs.watch import Watches


async def _never(job_id: str) -> dict[str, Any]:
    raise AssertionError("no upstream call in this test")


def job(status: str) -> dict[str, Any]:
    return {"jobId": "j1", "jobStatus": status, "messages": []}


async def test_a_stale_status_does_not_take_a_job_back() -> None:
    store = MemoryJobStore(retention=60, limit=10)
    watches = Watches(store, _never, poll_min=0.1, poll_max=0.2, lease=1.0, sync=0.1)
    assert await watches.record("j1", job("esriJobWaiting"))
    assert await watches.record("j1", job("esriJobExecuting"))
    # The slower replica's answer from before: not kept.
    assert not await watches.record("j1", job("esriJobWaiting"))
    state = await store.state("j1")
    assert state is not None
    assert (state.status, state.version) == ("esriJobExecuting", 2)
    # Forward moves are kept, cancelling and after a finish too.
    assert await watches.record("j1", job("esriJobCancelling"))
    assert await watches.record("j1", job("esriJobCancelled"))
    assert not await watches.record("j1", job("esriJobExecuting"))
    assert await watches.record("j1", job("esriJobDeleted"))
    # A status outside the documented ones is a change.
    assert await watches.record("j1", job("esriJobSomethingNew"))
    await watches.close()
