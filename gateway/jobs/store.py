"""Where jobs are remembered: their records (who owns them), their last status and the lease
of their one poller, in the cache's Redis (shared by every replica) or, without Redis, in
this process's memory.

Keys come from ``cache.keys.KeyLayout`` (``job``, ``job_status``, ``job_lease``); records and
statuses expire ``jobs.retention`` seconds after they were written (value and expiry in one
SET EX). Every call is a single-key command, so a Redis Cluster takes them as they are.
In memory at most ``jobs.max_memory_jobs`` jobs are kept, the oldest dropped first, and a
job is known to this process only: that is the limit of a gateway without Redis.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.cache.keys import KeyLayout
from gateway.cache.redis_client import make_client
from gateway.errors import StoreUnavailable

# Renew a lease only while it still holds our token; the same for a release.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job submitted through the gateway: its upstream ``job_id``, ``owner`` (``key:<API key
    name>``, ``sub:<JWT subject>`` or ``ip:<client address>``), ``upstream`` (the task URL),
    ``digest`` (SHA-256 of the forwarded parameters), ``submitted`` (epoch seconds),
    ``collection`` (the collection's name, when known) and ``publish`` (whether its result is
    to be published as a tile layer)."""

    job_id: str
    owner: str
    upstream: str
    digest: str
    submitted: float
    collection: str | None = None
    publish: bool = False

    def encode(self) -> str:
        """The record as JSON."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> JobRecord:
        """A record from ``encode``'s JSON. Raises ``ValueError`` for anything else."""
        try:
            return cls(**json.loads(text))
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not a job record: {exc}") from None


@dataclass(frozen=True, slots=True)
class JobState:
    """A job's status as the upstream gave it: its job JSON ``job`` (tokens removed),
    ``version``, which goes up by one at each change of ``status``, and when it was ``seen``
    (epoch seconds)."""

    version: int
    job: dict[str, Any]
    seen: float

    @property
    def status(self) -> str:
        """``jobStatus`` (``esriJob*``), ``""`` when the answer had none."""
        value = self.job.get("jobStatus")
        return value if isinstance(value, str) else ""

    @property
    def terminal(self) -> bool:
        """Whether the job can no longer change (arcgis-rest.md section 5.1)."""
        return self.status in TERMINAL

    def encode(self) -> str:
        """The state as JSON."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> JobState:
        """A state from ``encode``'s JSON. Raises ``ValueError`` for anything else."""
        try:
            return cls(**json.loads(text))
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not a job state: {exc}") from None


STATUSES = frozenset(
    (
        "esriJobNew",
        "esriJobSubmitted",
        "esriJobWaiting",
        "esriJobExecuting",
        "esriJobSucceeded",
        "esriJobFailed",
        "esriJobTimedOut",
        "esriJobCancelling",
        "esriJobCancelled",
        "esriJobDeleting",
        "esriJobDeleted",
    )
)
"""Every ``jobStatus`` the ArcGIS REST API documents (GP job resource; arcgis-rest.md
section 5.1): the bounded label values of ``metrics.job_status``."""
TERMINAL = frozenset(
    ("esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled", "esriJobDeleted")
)


class JobStore(Protocol):
    """Records, states and leases of jobs (see the module docstring). Calls raise
    ``StoreUnavailable`` when Redis cannot be reached."""

    shared: bool

    async def save(self, record: JobRecord) -> None:
        """Keep ``record`` for the retention."""

    async def load(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, ``None`` when unknown or expired."""

    async def put_state(self, job_id: str, state: JobState) -> None:
        """Keep ``state`` as the job's last status."""

    async def state(self, job_id: str) -> JobState | None:
        """The job's last status kept, if any."""

    async def take_lease(self, job_id: str, token: str, seconds: float) -> bool:
        """Hold the job's poller lease with ``token`` for ``seconds``: taken when free,
        renewed when ``token`` holds it; whether ``token`` holds it now."""

    async def release_lease(self, job_id: str, token: str) -> None:
        """Give the lease up if ``token`` holds it."""

    async def close(self) -> None:
        """Release connections."""


class RedisJobStore:
    """Jobs in Redis at ``url`` under ``keys``, each call bounded by ``timeout`` seconds."""

    shared = True

    def __init__(self, url: str, keys: KeyLayout, retention: int, timeout: float) -> None:
        self._redis: Any = make_client(url, timeout, max_connections=20)
        self._keys = keys
        self._retention = retention

    async def _call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self._redis, command)(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"the job store does not answer ({type(exc).__name__})") from exc

    async def save(self, record: JobRecord) -> None:
        """SET EX the record."""
        await self._call("set", self._keys.job(record.job_id), record.encode(), ex=self._retention)

    async def load(self, job_id: str) -> JobRecord | None:
        """GET the record; a value that is not one counts as unknown."""
        value = await self._call("get", self._keys.job(job_id))
        try:
            return None if value is None else JobRecord.decode(value)
        except ValueError:
            return None

    async def put_state(self, job_id: str, state: JobState) -> None:
        """SET EX the state."""
        await self._call("set", self._keys.job_status(job_id), state.encode(), ex=self._retention)

    async def state(self, job_id: str) -> JobState | None:
        """GET the state; a value that is not one counts as none."""
        value = await self._call("get", self._keys.job_status(job_id))
        try:
            return None if value is None else JobState.decode(value)
        except ValueError:
            return None

    async def take_lease(self, job_id: str, token: str, seconds: float) -> bool:
        """SET NX PX, else a renewal when the lease is ours (compare-and-PEXPIRE)."""
        key, lease = self._keys.job_lease(job_id), int(seconds * 1000)
        if await self._call("set", key, token, nx=True, px=lease):
            return True
        return bool(await self._call("eval", _RENEW, 1, key, token, lease))

    async def release_lease(self, job_id: str, token: str) -> None:
        """Compare-and-DEL."""
        await self._call("eval", _RELEASE, 1, self._keys.job_lease(job_id), token)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


class MemoryJobStore:
    """Jobs in this process: at most ``limit`` records and states (the oldest dropped
    first), each expiring ``retention`` seconds after it was written; leases always held
    by whoever asks (one process, one poller per job already)."""

    shared = False

    def __init__(self, retention: int, limit: int) -> None:
        self._retention = retention
        self._limit = limit
        self._records: OrderedDict[str, tuple[float, JobRecord]] = OrderedDict()
        self._states: OrderedDict[str, tuple[float, JobState]] = OrderedDict()

    def _keep(self, table: OrderedDict[str, tuple[float, Any]], key: str, value: Any) -> None:
        table[key] = (time.monotonic() + self._retention, value)
        table.move_to_end(key)
        while len(table) > self._limit:
            table.popitem(last=False)

    @staticmethod
    def _get(table: OrderedDict[str, tuple[float, Any]], key: str) -> Any:
        found = table.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            del table[key]
            return None
        return found[1]

    async def save(self, record: JobRecord) -> None:
        """Keep the record."""
        self._keep(self._records, record.job_id, record)

    async def load(self, job_id: str) -> JobRecord | None:
        """The record, if kept and not expired."""
        record: JobRecord | None = self._get(self._records, job_id)
        return record

    async def put_state(self, job_id: str, state: JobState) -> None:
        """Keep the state."""
        self._keep(self._states, job_id, state)

    async def state(self, job_id: str) -> JobState | None:
        """The state, if kept and not expired."""
        state: JobState | None = self._get(self._states, job_id)
        return state

    async def take_lease(self, job_id: str, token: str, seconds: float) -> bool:
        """Always held: this process's watch is the only poller."""
        return True

    async def release_lease(self, job_id: str, token: str) -> None:
        """Nothing to release."""

    async def close(self) -> None:
        """Nothing to close."""
