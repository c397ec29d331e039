"""Asynchronous geoprocessing jobs: status, messages, progress and cancellation.

A :class:`Job` is shared by the event loop (which answers status requests and cancels) and the
worker thread that runs it, so every change goes through its lock. The JSON it renders is the
ArcGIS REST "GP Job" resource (``docs/arcgis-rest.md`` §5.1): ``jobId``, ``jobStatus``,
``messages``, ``progress`` while executing, and relative ``paramUrl``s for results and inputs.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any


class JobStatus(enum.StrEnum):
    """The ``jobStatus`` values a job of this server goes through (§5.1)."""

    SUBMITTED = "esriJobSubmitted"
    WAITING = "esriJobWaiting"
    EXECUTING = "esriJobExecuting"
    SUCCEEDED = "esriJobSucceeded"
    FAILED = "esriJobFailed"
    CANCELLING = "esriJobCancelling"
    CANCELLED = "esriJobCancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class MessageType(enum.StrEnum):
    """``messages[].type`` of a job (§5.1)."""

    INFORMATIVE = "esriJobMessageTypeInformative"
    WARNING = "esriJobMessageTypeWarning"
    ERROR = "esriJobMessageTypeError"


class JobCancelled(Exception):
    """Raised in the worker at its next step once a cancel was asked for."""


class JobFailure(Exception):
    """A job cannot complete; ``str(exc)`` is the error message its client reads (it names
    inputs as the client gave them, never a server path)."""


def new_job_id() -> str:
    """``j`` + 32 hex digits, the shape of ArcGIS Server job ids (§5.1)."""
    return f"j{uuid.uuid4().hex}"


class Job:
    """One job of a GP task.

    Attributes:
        job_id: the id clients use in ``jobs/<jobId>``.
        inputs: input parameter name -> value as the client gave it (parsed JSON), served at
            ``jobs/<jobId>/inputs/<name>``.
        cancel_requested: set by :meth:`request_cancel`; the worker polls it between steps.
    """

    def __init__(self, inputs: Mapping[str, Any], *, step_delay: float, total_steps: int) -> None:
        """A submitted job; ``step_delay`` seconds are waited before each step (see
        :class:`~imageserver.config.JobsConfig`), ``total_steps`` is its progress scale."""
        self.job_id = new_job_id()
        self.inputs = dict(inputs)
        self.cancel_requested = threading.Event()
        self._lock = threading.Lock()
        self._status = JobStatus.SUBMITTED
        self._messages: list[dict[str, str]] = []
        self._result: dict[str, Any] | None = None
        self._step_delay = step_delay
        self._steps_done = 0
        self._total_steps = max(1, total_steps)
        self._percent = 0
        self._started: float | None = None
        self.message(MessageType.INFORMATIVE, "Submitted.")

    @property
    def status(self) -> JobStatus:
        """The current ``jobStatus``."""
        with self._lock:
            return self._status

    @property
    def result(self) -> dict[str, Any] | None:
        """The ``value`` of the ``result`` output once succeeded, else ``None``."""
        with self._lock:
            return self._result

    def message(self, kind: MessageType, text: str) -> None:
        """Append a job message."""
        with self._lock:
            self._messages.append({"type": kind.value, "description": text})

    def set_status(self, status: JobStatus) -> None:
        """Move to ``status``; entering ``esriJobExecuting`` records the start time, as the
        "Start Time" message of ArcGIS jobs does."""
        with self._lock:
            self._status = status
            if status is JobStatus.EXECUTING:
                self._started = time.monotonic()
                self._messages.append(
                    {
                        "type": MessageType.INFORMATIVE.value,
                        "description": f"Start Time: {time.strftime('%a %b %d %H:%M:%S %Y')}",
                    }
                )

    def succeed(self, value: dict[str, Any]) -> None:
        """Finish with ``value`` as the ``result`` output."""
        with self._lock:
            self._result = value
            self._status = JobStatus.SUCCEEDED
            elapsed = 0.0 if self._started is None else time.monotonic() - self._started
            self._messages.append(
                {
                    "type": MessageType.INFORMATIVE.value,
                    "description": f"Succeeded (Elapsed Time: {elapsed:.2f} seconds)",
                }
            )

    def fail(self, reason: str, task: str) -> None:
        """Finish as ``esriJobFailed`` with ``reason`` as an error message, followed by
        ArcGIS's closing line ``Failed to execute (<task>).``."""
        with self._lock:
            self._status = JobStatus.FAILED
            for text in (reason, f"Failed to execute ({task})."):
                self._messages.append({"type": MessageType.ERROR.value, "description": text})

    def request_cancel(self) -> bool:
        """Ask a waiting or executing job to stop: ``esriJobCancelling`` now,
        ``esriJobCancelled`` once the worker notices. Returns ``False`` (nothing changes)
        for a job that is submitted, finished or already cancelling: ArcGIS refuses to
        cancel those (§5.1)."""
        with self._lock:
            if self._status not in (JobStatus.WAITING, JobStatus.EXECUTING):
                return False
            self._status = JobStatus.CANCELLING
            self.cancel_requested.set()
            return True

    def cancelled(self) -> None:
        """Finish as ``esriJobCancelled``."""
        with self._lock:
            self._status = JobStatus.CANCELLED
            self._messages.append(
                {"type": MessageType.INFORMATIVE.value, "description": "Cancelled."}
            )

    def step(self, description: str | None = None) -> None:
        """Start the next step of the worker: wait the configured step delay (a cancel cuts it
        short), stop if cancelled, count progress and log ``description`` if given.

        Raises:
            JobCancelled: a cancel was asked for.
        """
        if self.cancel_requested.wait(self._step_delay):
            raise JobCancelled
        with self._lock:
            self._steps_done = min(self._steps_done + 1, self._total_steps)
            # Never backwards, though add_steps may grow the scale later.
            self._percent = max(self._percent, round(100 * self._steps_done / self._total_steps))
            if description is not None:
                self._messages.append(
                    {"type": MessageType.INFORMATIVE.value, "description": description}
                )

    def add_steps(self, count: int) -> None:
        """Grow the progress scale once the worker knows how many steps it needs (the
        reported percentage holds until the steps catch up)."""
        with self._lock:
            self._total_steps += count

    def to_json(self, *, return_messages: bool = True) -> dict[str, Any]:
        """The GP Job resource: ``messages`` only with ``return_messages`` (otherwise an empty
        list), ``progress`` only while executing, ``results`` once succeeded; ``paramUrl``s
        are relative to ``<task>/jobs/<jobId>/`` (§5.1)."""
        with self._lock:
            document: dict[str, Any] = {"jobId": self.job_id, "jobStatus": self._status.value}
            if self._status is JobStatus.EXECUTING:
                document["progress"] = {
                    "type": "default",
                    "message": "Executing...",
                    "percent": self._percent,
                }
            if self._status is JobStatus.SUCCEEDED:
                document["results"] = {"result": {"paramUrl": "results/result"}}
            document["inputs"] = {name: {"paramUrl": f"inputs/{name}"} for name in self.inputs}
            document["messages"] = [dict(m) for m in self._messages] if return_messages else []
            return document
