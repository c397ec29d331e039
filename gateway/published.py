"""Published layers: the ImageServer a succeeded CreateImageCollection job made, served as a
tile layer by every replica within seconds (README, "Jobs").

A published layer is a name, the upstream ImageServer URL (no token) and the credential set
of the jobs' upstream. They are kept in the cache's Redis, a hash ``KeyLayout
.published_layers`` and a change counter ``published_seq``, which every replica polls every
``cache.purge_poll`` seconds like purges (``gateway.purge``): a change makes it add or remove
``Layer`` objects in its ``TilePipeline`` (``add_layer``, ``remove_layer``), built with the
configured layers' machinery; the documents listing layers follow ``layers_version``. At
start-up the published layers are read back, so they survive a restart. Without Redis they
live in this process's memory only. A configured layer's name is never published over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.cache.keys import KeyLayout
from gateway.cache.redis_client import make_client
from gateway.config import LAYER_NAME, GatewayConfig, LayerConfig
from gateway.errors import GPUnavailable, StoreUnavailable
from gateway.periodic import Periodic
from gateway.tiles import TilePipeline, load_service_info

log = logging.getLogger(__name__)
_FAILURES = (RedisError, OSError, TimeoutError)


class JobResults(Protocol):
    """The jobs relay, as publishing sees it (``gateway.jobs.JobsRelay``)."""

    async def result_service(self, job_id: str) -> tuple[str | None, str]:
        """The collection name (if known) and the result ImageServer URL of a succeeded
        job. Raises ``LookupError``, ``ValueError``, ``GPUnavailable``, ``StoreUnavailable``."""


class PublishRefused(ValueError):
    """A layer that cannot be published or unpublished: HTTP ``status`` (400, 404, 409) and
    the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PublishedLayer:
    """A published layer: its ``name``, the upstream ImageServer ``url``, the ``credentials``
    set whose token it gets, the ``job_id`` that made it and when it was ``published``
    (epoch seconds)."""

    name: str
    url: str
    credentials: str | None
    job_id: str | None
    published: float

    def layer_config(self) -> LayerConfig:
        """The layer's configuration: the defaults of a configured layer, titled by name."""
        return LayerConfig(url=self.url, credentials=self.credentials, title=self.name)

    def describe(self) -> dict[str, Any]:
        """What the admin API says of it (no upstream URL)."""
        return {"name": self.name, "jobId": self.job_id, "published": self.published}


class _Registry:
    """The published layers in Redis at ``url`` (``None``: in memory)."""

    def __init__(self, url: str | None, keys: KeyLayout, timeout: float) -> None:
        self._keys = keys
        self._redis: Any = make_client(url, timeout, max_connections=4) if url else None
        self._memory: dict[str, str] = {}
        self._seq = 0

    async def put(self, layer: PublishedLayer) -> None:
        text = json.dumps(asdict(layer), separators=(",", ":"))
        if self._redis is None:
            self._memory[layer.name] = text
            self._seq += 1
            return
        await self._redis.hset(self._keys.published_layers, layer.name, text)
        await self._redis.incr(self._keys.published_seq)

    async def delete(self, name: str) -> bool:
        if self._redis is None:
            found = self._memory.pop(name, None) is not None
            self._seq += found
            return found
        found = bool(await self._redis.hdel(self._keys.published_layers, name))
        if found:
            await self._redis.incr(self._keys.published_seq)
        return found

    async def seq(self) -> int:
        if self._redis is None:
            return self._seq
        return int(await self._redis.get(self._keys.published_seq) or 0)

    async def all(self) -> dict[str, PublishedLayer]:
        raw = (
            self._memory
            if self._redis is None
            else await self._redis.hgetall(self._keys.published_layers)
        )
        layers = {}
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else key
            try:
                layers[name] = PublishedLayer(**json.loads(value))
            except (ValueError, TypeError) as exc:
                log.warning("published layer %r skipped: %s", name, exc)
        return layers

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


class Publisher:
    """Publishes layers into ``pipeline`` and keeps this replica in step with the others'
    (module docstring)."""

    def __init__(self, pipeline: TilePipeline, config: GatewayConfig) -> None:
        cache = config.cache
        url = cache.redis_url if cache.effective_backend == "redis" else None
        self._registry = _Registry(url, KeyLayout(cache.prefix), cache.timeout)
        self._pipeline = pipeline
        self._configured = frozenset(config.layers)
        self._timeout = config.server.startup_timeout
        self._credentials = config.jobs.service.credentials if config.jobs is not None else None
        self._published: dict[str, PublishedLayer] = {}
        self._seq: int | None = None
        self._lock = asyncio.Lock()
        self._watching = Periodic(
            lambda: self.sync(), _FAILURES, "published layers not synchronised"
        )
        # The jobs relay whose succeeded jobs are published (when ``jobs`` is configured).
        self.relay: JobResults | None = None

    @property
    def published(self) -> dict[str, PublishedLayer]:
        """The layers this replica serves as published, by name."""
        return dict(self._published)

    async def publish(self, name: str, url: str, job_id: str | None) -> PublishedLayer:
        """Publish the ImageServer at ``url`` (no token in it) as layer ``name`` on every
        replica; served here before this returns. Raises ``PublishRefused`` (400 for a name
        or URL that cannot be a layer's, 409 for a configured layer's name)."""
        if not LAYER_NAME.match(name):
            raise PublishRefused(
                400, f"{name!r} is no layer name: letters, digits, '_', '-' or '.'"
            )
        if name in self._configured:
            raise PublishRefused(409, f"{name!r} is a configured layer")
        layer = PublishedLayer(name, url, self._credentials, job_id, time.time())
        try:
            layer.layer_config()
        except ValueError as exc:
            raise PublishRefused(400, f"the result is no ImageServer URL: {exc}") from None
        try:
            await self._registry.put(layer)
            await self.sync()
        except _FAILURES as exc:
            raise PublishRefused(
                503, f"the layer store does not answer ({type(exc).__name__})"
            ) from None
        return layer

    async def publish_job(self, job_id: str, name: str | None = None) -> PublishedLayer:
        """Publish the ImageServer that succeeded job ``job_id`` made, as layer ``name`` (by
        default the collection's name, else the service's). Raises ``PublishRefused``: 404
        for a job not recorded or no jobs relay, 409 for a job not succeeded, 400 for a
        result that is no ImageServer or a bad name, 502/503 when the upstream or the job
        store fails."""
        if self.relay is None:
            raise PublishRefused(404, "no jobs are relayed by this gateway (no jobs: section)")
        try:
            collection, url = await self.relay.result_service(job_id)
        except LookupError as exc:
            raise PublishRefused(404, str(exc)) from None
        except ValueError as exc:
            raise PublishRefused(409, str(exc)) from None
        except GPUnavailable as exc:
            raise PublishRefused(exc.status, exc.message) from None
        except StoreUnavailable as exc:
            raise PublishRefused(503, str(exc)) from None
        # ".../rest/services/[<folder>/]<name>/ImageServer": the name before the type.
        service = url.rstrip("/").split("/")[-2]
        return await self.publish(name or collection or service, url, job_id)

    async def unpublish(self, name: str) -> None:
        """Stop serving the published layer ``name`` on every replica. Raises
        ``PublishRefused`` (409 for a configured layer, 404 for an unknown one)."""
        if name in self._configured:
            raise PublishRefused(409, f"{name!r} is a configured layer, not a published one")
        try:
            found = await self._registry.delete(name)
            await self.sync()
        except _FAILURES as exc:
            raise PublishRefused(
                503, f"the layer store does not answer ({type(exc).__name__})"
            ) from None
        if not found:
            raise PublishRefused(404, f"no published layer {name!r}")

    async def sync(self) -> None:
        """Serve what the registry holds: new and changed layers added (their service info
        read first, so that documents show their extent), removed ones dropped."""
        async with self._lock:
            seq = await self._registry.seq()
            if seq == self._seq:
                return
            wanted = await self._registry.all()
            for name, spec in wanted.items():
                if name in self._configured or self._published.get(name) == spec:
                    continue
                layer = self._pipeline.build_layer(name, spec.layer_config())
                await load_service_info([layer], self._timeout)
                self._pipeline.add_layer(layer)
                self._published[name] = spec
                log.info("published layer %s served", name)
            for name in set(self._published) - set(wanted):
                self._pipeline.remove_layer(name)
                del self._published[name]
                log.info("published layer %s removed", name)
            self._seq = seq

    async def start(self, interval: float) -> None:
        """Serve the published layers now (at start-up), then ``sync`` every ``interval``
        seconds until ``stop``."""
        try:
            await self.sync()
        except _FAILURES as exc:
            log.warning("published layers unavailable at start-up: %s", exc)
        self._watching.start(interval)

    async def stop(self) -> None:
        """End the watching and close the registry's connections."""
        await self._watching.stop()
        await self._registry.close()
