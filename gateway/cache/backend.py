"""What a cache backend offers (``Backend``), and the guard that makes a backend outage a miss.

Two backends implement it: ``MemoryBackend`` (this process) and ``RedisBackend`` (shared by
every replica: single node, Sentinel or Cluster). The tile store (``TileCache``) puts its
in-process L1 in front of either; coalescing, purges and seeding use the same calls whatever
the backend, so nothing above ``cache/`` branches on where tiles live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, TypeVar

from redis.exceptions import RedisError

from gateway import metrics
from gateway.cache.codec import TileEntry

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a backend call may fail with: the server, the network, or a timeout.
FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class Backend(Protocol):
    """Tile entries by key, locks with leases and counters (see the two implementations).

    ``kind`` is ``memory`` or ``redis``; ``description`` names it for logs and status pages,
    never with a password. Reads of an unreachable backend are misses, writes are dropped.
    """

    kind: Literal["memory", "redis"]
    description: str

    @property
    def available(self) -> bool:
        """Whether the last call reached the backend (always, for memory)."""

    async def get(self, key: str) -> TileEntry | None:
        """The entry under ``key``, or ``None``."""

    async def get_many(self, keys: Sequence[str]) -> list[TileEntry | None]:
        """The entries under ``keys``, ``None`` where missing."""

    async def set_many(
        self, items: Sequence[tuple[str, TileEntry]], lifetime: int, unlock: tuple[str, str] | None
    ) -> bool:
        """Store entries for ``lifetime`` seconds, then release the lock ``unlock`` (key, token)
        if given and still held with that token; whether the backend was reached."""

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete keys; how many there were."""

    async def get_or_lock(
        self, key: str, lock_key: str, token: str, lease: float
    ) -> TileEntry | bool:
        """The entry under ``key`` if there is one (no lock taken), else whether the lock
        ``lock_key`` is now held with ``token`` for ``lease`` seconds."""

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Take the lock ``key`` for ``lease`` seconds unless someone holds it."""

    async def locked(self, key: str) -> bool:
        """Whether someone holds the lock ``key`` now."""

    async def unlock(self, key: str, token: str) -> bool:
        """Release the lock ``key`` if ``token`` still holds it; whether the backend was
        reached."""

    async def increment(self, key: str) -> int | None:
        """Add one to a counter; its new value, or ``None`` when unknown."""

    async def counters(self, keys: Sequence[str]) -> list[int] | None:
        """Values of counters (0 when unset); ``None`` when unknown."""

    async def announce(self, log_key: str, event: str | None, seq_key: str, length: int) -> None:
        """Push ``event`` (unless ``None``) on the list ``log_key``, kept ``length`` long, then
        add one to the counter ``seq_key``: other replicas see the count, then the event."""

    async def events(self, log_key: str, count: int) -> list[str]:
        """The newest ``count`` events of the list ``log_key``, newest first."""

    async def ping(self) -> bool:
        """Whether the backend answers now."""

    async def close(self) -> None:
        """Release the backend's connections."""


class Guard:
    """Runs backend calls so that a failure is a miss, never an error for the request.

    A failure is logged once when an outage starts and once when it ends; while it lasts the
    backend is left alone for ``retry_interval`` seconds between probes, so that requests do
    not each wait for a timeout (architecture.md: "A Redis failure is a cache miss, never a
    5xx"). ``description`` names the backend in those lines. ``on_outage`` is awaited when an
    outage starts: the backend drops its idle connections there, which may lead to a server
    that is gone (after a restart behind a NAT or load balancer they would fail one by one,
    each after a timeout, while new connections work: every such failure after the server is
    back would start a new outage and log it).
    """

    def __init__(
        self,
        description: str,
        retry_interval: float,
        on_outage: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.description = description
        self._retry_interval = retry_interval
        self._on_outage = on_outage
        self._down_since: float | None = None
        self._next_probe = 0.0

    @property
    def available(self) -> bool:
        """Whether the last call reached the backend."""
        return self._down_since is None

    async def call(self, operation: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        """``await call()``; on a failure (logged once per outage) or while the backend is
        left alone, ``default``.

        Hangs are bounded by the client's socket timeout (``cache.timeout``), not by a
        ``wait_for`` per call, which would cost a task on every cache read.
        """
        if self._down_since is not None and time.monotonic() < self._next_probe:
            return default
        try:
            result = await call()
        except FAILURES as exc:
            await self.failed(operation, exc)
            return default
        self.succeeded()
        return result

    async def failed(self, operation: str, exc: BaseException) -> None:
        """Record a failed ``operation`` (counted: ``metrics.cache_failed``): the outage starts
        (logged, marked in ``metrics.cache_unavailable``, then ``on_outage`` awaited) or goes
        on."""
        metrics.cache_failed(operation)
        now = time.monotonic()
        self._next_probe = now + self._retry_interval
        if self._down_since is not None:
            return
        self._down_since = now
        metrics.cache_unavailable(True)
        log.warning(
            "cache %s unavailable (%s on %s: %s); reads are misses and writes are dropped "
            "until it is back",
            self.description,
            type(exc).__name__,
            operation,
            exc,
        )
        if self._on_outage is not None:
            await self._on_outage()

    def succeeded(self) -> None:
        """Record a call that reached the backend: an outage, if any, ends (logged)."""
        if self._down_since is not None:
            log.warning(
                "cache %s available again after %.1f s",
                self.description,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            metrics.cache_unavailable(False)
