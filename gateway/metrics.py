"""Prometheus metrics: the gateway's counters, histograms and gauges, and their exposition.

Every other room reports through the small functions here (``tile_answered``,
``upstream_call``, ``cache_failed``...) and never touches prometheus-client itself; this room
imports no other room of the gateway.

Label values are bounded: layer and credential names come from the configuration, fronts and
operations are names fixed in the code, statuses are HTTP status codes, cache results are
``HIT``/``MISS``/``STALE`` (``NONE`` for an answer without a tile). A path, a token or a
client's identity is never a label (its values would grow without bound and leak secrets).

Several worker processes (``serve --workers N``) share one view through prometheus-client's
multiprocess mode: the parent sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh folder before it
starts the workers, each worker writes its values to files there, and whichever worker answers
``GET /metrics`` reads them all (``MultiProcessCollector``). The variable must be set before
this module is imported, which a spawned worker does after it inherited it. See
https://prometheus.github.io/client_python/multiprocess/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable that turns prometheus-client's multiprocess mode on."""

_PREFIX = "tile_gateway_"

TILE_REQUESTS = Counter(
    _PREFIX + "tile_requests",
    "Tile answers by layer, front (tiles, wmts, ogcapi), HTTP status and cache result "
    "(HIT, MISS, STALE; NONE for an error without a tile).",
    ["layer", "front", "status", "cache"],
)
HTTP_REQUESTS = Counter(
    _PREFIX + "http_requests",
    "Every answer by front (tiles, wmts, ogcapi, admin, proxy, root) and HTTP status.",
    ["front", "status"],
)
UPSTREAM_CALLS = Counter(
    _PREFIX + "upstream_calls",
    "Upstream calls by layer, operation (exportImage) and outcome (ok, error, timeout, busy).",
    ["layer", "operation", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    _PREFIX + "upstream_call_seconds",
    "Duration of upstream calls in seconds, by layer and operation, whatever their outcome.",
    ["layer", "operation"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
UPSTREAM_IN_FLIGHT = Gauge(
    _PREFIX + "upstream_calls_in_flight",
    "Upstream calls started and not yet answered, by layer (summed over live workers).",
    ["layer"],
    multiprocess_mode="livesum",
)
COALESCED_WAITERS = Gauge(
    _PREFIX + "coalesced_waiters",
    "Tile misses waiting now for another request's upstream call (here or on another "
    "replica), by layer (summed over live workers).",
    ["layer"],
    multiprocess_mode="livesum",
)
METATILE_BYTES = Histogram(
    _PREFIX + "metatile_bytes",
    "Size in bytes of the metatile images fetched from the upstream (one per exportImage "
    "call that answered an image), by layer.",
    ["layer"],
    buckets=(4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
)
COALESCED_WAITS = Counter(
    _PREFIX + "coalesced_waits",
    "Tile misses answered by another request's upstream call (here or on another replica) "
    "instead of their own, by layer.",
    ["layer"],
)
CACHE_ERRORS = Counter(
    _PREFIX + "cache_errors",
    "Failed calls to the shared cache (each a miss or a dropped write), by operation.",
    ["operation"],
)
CACHE_DOWN = Gauge(
    _PREFIX + "cache_unavailable",
    "1 while a worker has the shared cache marked unavailable (its breaker open), else 0; "
    "the highest over live workers.",
    multiprocess_mode="livemax",
)
L1_BYTES = Gauge(
    _PREFIX + "l1_bytes",
    "Bytes held by the in-process tile cache (tiles plus a fixed overhead per entry), summed "
    "over live workers; as of its last change.",
    multiprocess_mode="livesum",
)
L1_ENTRIES = Gauge(
    _PREFIX + "l1_entries",
    "Entries in the in-process tile cache, summed over live workers; as of its last change.",
    multiprocess_mode="livesum",
)
JOB_STATUSES = Counter(
    _PREFIX + "job_statuses",
    "Jobs that reached a status (ArcGIS jobStatus: esriJobSubmitted, esriJobExecuting, "
    "esriJobSucceeded...; other for one outside the documented set), each change counted once "
    "by the replica that recorded it.",
    ["status"],
)
TOKEN_RENEWALS = Counter(
    _PREFIX + "token_renewals",
    "Upstream token renewals by credential set (config name) and outcome (ok, failed).",
    ["credentials", "outcome"],
)
PURGES = Counter(
    _PREFIX + "purges",
    "Purges done by this gateway, by layer and kind (layer: a whole layer; tiles: a range).",
    ["layer", "kind"],
)
RATE_LIMITED = Counter(
    _PREFIX + "rate_limited_requests",
    "Requests refused 429 by a rate limit, by route group (tiles, proxy, admin).",
    ["group"],
)


# The labelled children of the per-request counters, kept: ``labels()`` on every request
# (a lock and a dict look-up in prometheus-client) costs a tile hit several percent. The label
# values are bounded (config names, statuses), so is this.
@lru_cache(maxsize=8192)
def _tile_requests(layer: str, front: str, status: int, cache: str) -> Any:
    return TILE_REQUESTS.labels(layer, front, str(status), cache)


@lru_cache(maxsize=1024)
def _http_requests(front: str, status: int) -> Any:
    return HTTP_REQUESTS.labels(front, str(status))


def tile_answered(layer: str, front: str, status: int, cache: str) -> None:
    """Count a tile answer of ``layer`` by ``front`` with HTTP ``status`` and ``cache`` result
    (``HIT``, ``MISS``, ``STALE`` or ``NONE``)."""
    _tile_requests(layer, front, status, cache).inc()


def answered(front: str, status: int) -> None:
    """Count any answer of ``front`` with HTTP ``status``."""
    _http_requests(front, status).inc()


@contextmanager
def upstream_call(layer: str, operation: str) -> Iterator[UpstreamCall]:
    """Time an upstream ``operation`` of ``layer`` for the body of the ``with``, counted in
    flight meanwhile; its outcome is ``ok`` unless the body sets ``call.outcome`` or raises
    (then the exception's ``outcome`` when it has one, as ``errors.UpstreamError`` does:
    ``timeout``, ``busy``; else ``error``)."""
    call = UpstreamCall()
    in_flight = UPSTREAM_IN_FLIGHT.labels(layer)
    in_flight.inc()
    start = time.perf_counter()
    try:
        yield call
    except BaseException as exc:
        if call.outcome == "ok":
            call.outcome = getattr(exc, "outcome", "error")
        raise
    finally:
        call.seconds = time.perf_counter() - start
        in_flight.dec()
        UPSTREAM_SECONDS.labels(layer, operation).observe(call.seconds)
        UPSTREAM_CALLS.labels(layer, operation, call.outcome).inc()


class UpstreamCall:
    """One upstream call being timed: ``outcome`` (``ok``, ``error``, ``timeout``, ``busy``)
    and, once it ended, its duration in ``seconds``."""

    __slots__ = ("outcome", "seconds")

    def __init__(self) -> None:
        self.outcome = "ok"
        self.seconds = 0.0


@contextmanager
def waiting(layer: str) -> Iterator[None]:
    """Count a miss of ``layer`` among the coalesced waiters for the body of the ``with``
    (while it waits for another request's upstream call)."""
    waiters = COALESCED_WAITERS.labels(layer)
    waiters.inc()
    try:
        yield
    finally:
        waiters.dec()


def metatile_fetched(layer: str, size: int) -> None:
    """Record a metatile image of ``size`` bytes fetched from the upstream for ``layer``."""
    METATILE_BYTES.labels(layer).observe(size)


def coalesced_wait(layer: str) -> None:
    """Count a miss of ``layer`` answered by another request's upstream call."""
    COALESCED_WAITS.labels(layer).inc()


def cache_failed(operation: str) -> None:
    """Count a failed shared-cache ``operation`` (a name from the code: get, set_many...)."""
    CACHE_ERRORS.labels(operation).inc()


def cache_unavailable(down: bool) -> None:
    """Record whether this worker has the shared cache marked unavailable."""
    CACHE_DOWN.set(1 if down else 0)


def l1_held(size: int, entries: int) -> None:
    """Record the in-process cache's ``size`` in bytes and its number of ``entries``."""
    L1_BYTES.set(size)
    L1_ENTRIES.set(entries)


def job_status(status: str) -> None:
    """Count a job reaching ``status`` (an ``esriJob*`` name or ``other``: the caller bounds
    it)."""
    JOB_STATUSES.labels(status).inc()


def token_renewed(credentials: str, ok: bool) -> None:
    """Count a token renewal of the credential set named ``credentials``."""
    TOKEN_RENEWALS.labels(credentials, "ok" if ok else "failed").inc()


def purged(layer: str, whole: bool) -> None:
    """Count a purge of ``layer``: all of it (``whole``) or a range of tiles."""
    PURGES.labels(layer, "layer" if whole else "tiles").inc()


def rate_limited(group: str) -> None:
    """Count a request of route ``group`` refused by its rate limit."""
    RATE_LIMITED.labels(group).inc()


def exposition() -> bytes:
    """Every metric in the Prometheus text format (version 0.0.4): this process's, or with
    ``PROMETHEUS_MULTIPROC_DIR`` set, every worker's of the run, read from that folder."""
    if os.environ.get(MULTIPROC_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def handle(request: web.Request) -> web.Response:
    """``GET /metrics``: ``exposition()`` as ``text/plain; version=0.0.4``, never cached."""
    return web.Response(
        body=exposition(),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )


def worker_ended(pid: int) -> None:
    """Drop the live gauges of the ended worker ``pid`` (multiprocess mode; the parent calls
    this when a worker ends)."""
    if os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(pid)
