"""The GP job record on its own: progress, cancellation, and its JSON (docs/arcgis-rest.md
§5.1)."""

from __future__ import annotations

import pytest

from imageserver.jobs import Job, JobCancelled, JobStatus


def executing(total_steps: int) -> Job:
    job = Job({"inputRasters": {"uris": ["a.tif"]}}, step_delay=0, total_steps=total_steps)
    job.set_status(JobStatus.EXECUTING)
    return job


def test_progress_never_goes_back_when_the_worker_finds_more_steps() -> None:
    job = executing(total_steps=3)
    job.step()
    assert job.to_json()["progress"]["percent"] == 33
    job.add_steps(2)  # the mosaic's strips, known once the inputs are open
    assert job.to_json()["progress"]["percent"] == 33
    percents = []
    for _ in range(4):
        job.step()
        percents.append(job.to_json()["progress"]["percent"])
    assert percents == [40, 60, 80, 100]


def test_a_cancel_stops_the_worker_at_its_next_step() -> None:
    job = executing(total_steps=3)
    assert job.request_cancel()
    assert job.status is JobStatus.CANCELLING
    assert "progress" not in job.to_json()
    with pytest.raises(JobCancelled):
        job.step()
    assert not job.request_cancel()  # already cancelling


def test_a_submitted_or_finished_job_cannot_be_cancelled() -> None:
    job = Job({}, step_delay=0, total_steps=1)
    assert not job.request_cancel()
    job.succeed({"url": "/x", "itemId": "1"})
    assert not job.request_cancel()
    assert job.to_json()["results"] == {"result": {"paramUrl": "results/result"}}


def test_job_json() -> None:
    job = executing(total_steps=2)
    document = job.to_json(return_messages=False)
    assert document["jobId"] == job.job_id and document["jobStatus"] == "esriJobExecuting"
    assert document["inputs"] == {"inputRasters": {"paramUrl": "inputs/inputRasters"}}
    assert document["messages"] == []
    job.fail("a.tif: no such raster", "CreateImageCollection")
    assert job.to_json()["messages"][-2:] == [
        {"type": "esriJobMessageTypeError", "description": "a.tif: no such raster"},
        {
            "type": "esriJobMessageTypeError",
            "description": "Failed to execute (CreateImageCollection).",
        },
    ]
