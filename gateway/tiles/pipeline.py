"""The tile pipeline: tile request -> cache -> exportImage on the layer's source (or the
source's own tile cache, ``tiles.servicecache``) -> cache.

Every protocol front turns its URL into a ``TileRequest`` (``TilePipeline.resolve``) and calls
``TilePipeline.get_tile``; this is where the cache and the upstream meet, so the same cache
entry serves every protocol asking for the same tile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

from gateway import metrics, terrain
from gateway.cache.coalesce import SingleFlight
from gateway.cache.codec import TileEntry, strong_etag
from gateway.cache.keys import KeyLayout
from gateway.cache.store import TileCache
from gateway.config import GatewayConfig, LayerConfig
from gateway.credentials import CredentialProviders
from gateway.errors import UpstreamError
from gateway.grids import GridRegistry, MetaTile, metatile
from gateway.imaging import (
    EXPORT_FORMATS,
    MEDIA_TYPES,
    UndecodableImage,
    check_image,
    sniff_format,
)
from gateway.logs import EXCHANGE
from gateway.sources.http import ExportLimit, UpstreamPool
from gateway.tiles.address import TileAddresses, TileRequest
from gateway.tiles.layer import Layer, build_layer, build_layers

log = logging.getLogger(__name__)

CacheStatus = Literal["HIT", "MISS", "STALE"]


@dataclass(frozen=True, slots=True)
class TileResult:
    """A tile answer: the entry, and ``HIT`` (no upstream call made for this request),
    ``MISS`` (this request called the upstream) or ``STALE`` (served past its freshness)."""

    entry: TileEntry
    cache_status: CacheStatus


class TilePipeline:
    """Finds tiles in the cache or makes them, a metatile per exportImage call.

    ``layers`` maps layer names to ready layers; ``cache`` is the tile store; ``keys`` its key
    layout; ``grids`` every TileMatrixSet known; ``lock_lease`` the seconds a replica may hold
    a metatile's lock.

    Layers may be added and removed while the pipeline runs (``add_layer``, ``remove_layer``:
    published GP results); ``layers_version`` counts those changes, so that documents listing
    the layers are built again.
    """

    def __init__(
        self,
        layers: dict[str, Layer],
        cache: TileCache,
        keys: KeyLayout,
        grids: GridRegistry,
        lock_lease: float = 30.0,
    ) -> None:
        self.layers = layers
        self.cache = cache
        self.keys = keys
        self.grids = grids
        self.flight = SingleFlight(cache, lock_lease)
        # The credential providers of the configuration (set by ``open_pipeline``).
        self.credentials: CredentialProviders | None = None
        # The checked request of a tile address (``tiles.address.TileAddresses.resolve``).
        self.resolve = TileAddresses(layers).resolve
        self._refreshes: set[asyncio.Task[None]] = set()
        self.layers_version = 0
        # Makes a ready layer of a layer config (set by ``open_pipeline``).
        self.builder: Callable[[str, LayerConfig], Layer] | None = None

    def build_layer(self, name: str, config: LayerConfig) -> Layer:
        """A ready layer ``name`` of ``config``, through this pipeline's upstream sessions and
        credential providers, not yet served (see ``add_layer``)."""
        assert self.builder is not None  # open_pipeline sets it
        return self.builder(name, config)

    def add_layer(self, layer: Layer) -> None:
        """Serve ``layer`` from now on (replacing a layer of its name)."""
        self.layers[layer.name] = layer
        self.layers_version += 1

    def remove_layer(self, name: str) -> None:
        """Stop serving layer ``name``: its tiles leave the in-process tier at once (ready
        answers are served from there before any front runs); those in Redis age out by
        their TTL."""
        if self.layers.pop(name, None) is None:
            return
        self.layers_version += 1
        l1 = self.cache.l1
        if l1 is not None:
            start = self.keys.layer_tiles(name)
            l1.discard_where(lambda key: key.startswith(start))

    def generation(self, request: TileRequest) -> str:
        """The current generation of the request's layer (``Layer.generation``).

        A request takes it once and builds its tile key, its metatile's lock key and the keys
        its fetch stores with it: a whole-layer purge in the middle of the request then changes
        none of them, so its fetch still answers it and its waiters (stored under the old
        generation, which new requests no longer read).
        """
        return self.layers[request.layer].generation

    def _place(
        self, request: TileRequest, col: int, row: int, generation: str | None
    ) -> tuple[str, str, str, int, int, int, int, str, str]:
        """What a key of ``request`` at TileCol ``col``, TileRow ``row`` is made of: layer,
        generation (the layer's current one when ``None``), TileMatrixSet, TileMatrix, col,
        row, scale, extension, variant token."""
        return (
            request.layer,
            generation or self.generation(request),
            request.tms,
            request.z,
            col,
            row,
            request.scale,
            request.ext,
            request.variant,
        )

    def key(self, request: TileRequest, generation: str | None = None) -> str:
        """The cache key of ``request`` in ``generation`` (the layer's current one if ``None``)."""
        return self.keys.tile(*self._place(request, request.x, request.y, generation))

    @property
    def prepares(self) -> bool:
        """Whether fronts can keep prepared answers (see ``prepare``): there is an L1."""
        return self.cache.l1 is not None

    def prepared(self, key: str) -> tuple[TileEntry, object] | None:
        """The entry under ``key`` in the in-process tier with what a front prepared from it
        (see ``prepare``), or ``None``: a hit that touches nothing but memory."""
        l1 = self.cache.l1
        return None if l1 is None else l1.prepared(key)

    def prepare(self, key: str, entry: TileEntry, prepared: object) -> bool:
        """Keep ``prepared`` (e.g. an answer's headers) with the in-process entry under ``key``
        while it is still ``entry``; it goes when the entry goes (expiry, eviction, purge,
        refresh). Whether it was kept."""
        l1 = self.cache.l1
        return l1 is not None and l1.prepare(key, entry, prepared)

    async def get_tile(self, request: TileRequest) -> TileResult:
        """The tile for a request from ``resolve``: an empty tile outside the data extent
        (no I/O), else a fresh cached one, else a stale one inside ``stale_while_revalidate``
        (refreshed in the background), else from the upstream through coalescing; when the
        upstream fails, a stale one inside ``stale_if_error``.

        A miss answered by another request's upstream call counts as a coalesced wait
        (``metrics.coalesced_wait``). Only validated images that decode completely are stored.
        Raises ``UpstreamError``
        (502/504, or ``UpstreamBusy`` 503 when the upstream's exportImage slots are taken) when
        the upstream fails and no stale copy may stand in; nothing is cached then.
        """
        layer = self.layers[request.layer]
        grid = self.grids[request.tms]
        if not layer.has_data(grid, request.z, request.x, request.y):
            return TileResult(layer.empty_entry(request.ext, grid.tile_size * request.scale), "HIT")
        generation = self.generation(request)
        key = self.key(request, generation)
        config = layer.config
        entry = await self.cache.get(key, config.lifetime)
        age = 0.0
        if entry is not None:
            age = time.time() - entry.created
            if age < config.ttl:
                return TileResult(entry, "HIT")
            if age < config.ttl + config.stale_while_revalidate:
                self._refresh_later(request, key, generation)
                return TileResult(entry, "STALE")
        try:
            fresh, produced = await self._fetch(request, key, generation)
        except UpstreamError:
            if entry is not None and age < config.ttl + config.stale_if_error:
                return TileResult(entry, "STALE")
            raise
        if not produced:
            metrics.coalesced_wait(request.layer)
        return TileResult(fresh, "MISS" if produced else "HIT")

    def lock_key(self, request: TileRequest, meta: MetaTile, generation: str | None = None) -> str:
        """The coalescing lock of the metatile ``meta`` of ``request`` in ``generation`` (the
        layer's current one if ``None``)."""
        return self.keys.lock(*self._place(request, meta.col0, meta.row0, generation))

    def metatile_of(self, request: TileRequest) -> MetaTile:
        """The metatile that holds the requested tile (see ``grids.metatile``)."""
        layer = self.layers[request.layer]
        grid = self.grids[request.tms]
        return metatile(
            grid,
            request.z,
            request.x,
            request.y,
            layer.meta_size(grid, request.scale),
            layer.config.meta_buffer,
            request.scale,
        )

    def metatile_keys(
        self, request: TileRequest, meta: MetaTile, generation: str | None = None
    ) -> list[str]:
        """The cache keys of every tile of ``meta`` in ``generation`` (the layer's current one
        if ``None``), all stored by one fetch."""
        return [self.key(replace(request, x=x, y=y), generation) for x, y, _ in meta.crops()]

    def serving_metatile(self, request: TileRequest) -> MetaTile:
        """The metatile a served request fetches: its own tile alone where the upstream's tile
        cache holds it (``Layer.cache_level``: one cached tile per upstream call, nothing to
        cut), else ``metatile_of``."""
        layer = self.layers[request.layer]
        if layer.cache_level(request.tms, request.z, request.scale) is None:
            return self.metatile_of(request)
        grid = self.grids[request.tms]
        return metatile(grid, request.z, request.x, request.y, (1, 1), 0, request.scale)

    async def _fetch(
        self, request: TileRequest, key: str, generation: str
    ) -> tuple[TileEntry, bool]:
        return await self.fetch_metatile(request, self.serving_metatile(request), key, generation)

    async def fetch_metatile(
        self, request: TileRequest, meta: MetaTile, key: str, generation: str | None = None
    ) -> tuple[TileEntry, bool]:
        """The fresh entry under ``key`` (a tile of ``meta`` in ``generation``, the layer's
        current one if ``None``), from the cache or by fetching the metatile through
        coalescing (a wait for another request's fetch counted in ``metrics.waiting``);
        ``True`` when this call made the upstream call. Another process's fetch
        is waited for at most the upstream timeout (``server.upstream_timeout``).

        Raises ``UpstreamError``.
        """
        layer = self.layers[request.layer]
        generation = generation or self.generation(request)
        return await self.flight.fetch(
            self.lock_key(request, meta, generation),
            key,
            lambda: self.produce(request, meta, generation),
            layer.config.ttl,
            layer.config.lifetime,
            layer.client.upstream.timeout,
            request.layer,
        )

    async def produce(
        self, request: TileRequest, meta: MetaTile, generation: str | None = None
    ) -> dict[str, TileEntry]:
        """Every tile of ``meta`` by cache key in ``generation`` (the layer's current one if
        ``None``; coalescing stores them): read from the upstream's tile cache where it holds
        the TileMatrix (``Layer.cache_level``) and every tile of ``meta``, else one
        exportImage call (``export``).

        Raises ``UpstreamError`` (see ``export`` and ``ImageServerClient.tile``).
        """
        layer = self.layers[request.layer]
        level = layer.cache_level(request.tms, request.z, request.scale, request.variant)
        # A cache holds pictures: heights (terrain encodings) always come from exportImage.
        if level is not None and request.ext not in terrain.ENCODINGS:
            cached = await self._read_service_cache(request, meta, level)
            if cached is not None:
                return self._entries(request, meta, cached, generation)
        return await self.export(request, meta, generation)

    async def _read_service_cache(
        self, request: TileRequest, meta: MetaTile, level: int
    ) -> list[tuple[bytes, float | None]] | None:
        """The tiles of ``meta`` from the upstream's cache at ``level`` (read concurrently),
        as ``(bytes, Last-Modified)`` in ``meta.crops()`` order, tiles beside the data extent
        empty without a call; ``None`` when one is missing or broken (``_read_cached_tile``):
        exportImage renders the metatile then, as a cache is often built for part of its
        levels or area.

        Raises ``UpstreamError`` when the upstream fails (timeout, HTTP 5xx).
        """
        layer = self.layers[request.layer]
        grid = self.grids[request.tms]
        empty = layer.empty_entry(request.ext, grid.tile_size * request.scale).data

        async def read(col: int, row: int) -> bytes | None:
            # A tile beside the data is the empty tile, as get_tile answers it: the cache
            # would only say 404 there.
            if not layer.has_data(grid, request.z, col, row):
                return empty
            return await self._read_cached_tile(request, level, col, row)

        tiles = await asyncio.gather(*(read(col, row) for col, row, _ in meta.crops()))
        if any(tile is None for tile in tiles):
            return None
        return [(tile, None) for tile in tiles if tile is not None]

    async def _read_cached_tile(
        self, request: TileRequest, level: int, col: int, row: int
    ) -> bytes | None:
        """Tile ``level/row/col`` of the upstream's cache, decoded completely (in a worker
        thread) and, when the cache's format is not the requested one, encoded as the layer
        encodes cut tiles; ``None`` when the cache has none there or it does not decode (a
        broken cached tile is no reason to fail: exportImage renders it). Never cached broken.

        Raises ``UpstreamError`` when the upstream fails (timeout, HTTP 5xx).
        """
        layer = self.layers[request.layer]
        with metrics.upstream_call(request.layer, "tile") as call:
            data = await layer.client.tile(level, row, col)
        exchange = EXCHANGE.get()
        if exchange is not None:
            exchange.upstream_seconds += call.seconds
        if data is None:
            log.debug("layer %s: no cached tile %d/%d/%d", request.layer, level, row, col)
            return None
        size = (self.grids[request.tms].tile_size * request.scale,) * 2
        loop = asyncio.get_running_loop()
        try:
            if sniff_format(data) == request.ext:
                await loop.run_in_executor(None, check_image, data, size)
                return data
            (encoded,) = await loop.run_in_executor(
                None, layer.cutter(data, size, [(0, 0, *size)], request.ext)
            )
        except UndecodableImage as exc:
            log.info("layer %s: cached tile %d/%d/%d: %s", request.layer, level, row, col, exc)
            return None
        return encoded

    def _entries(
        self,
        request: TileRequest,
        meta: MetaTile,
        tiles: list[tuple[bytes, float | None]],
        generation: str | None,
    ) -> dict[str, TileEntry]:
        """Cache entries of the tiles of ``meta`` (``(bytes, Last-Modified)`` in
        ``meta.crops()`` order) by key in ``generation``."""
        now = time.time()
        content_type = MEDIA_TYPES[request.ext]
        return {
            self.key(replace(request, x=col, y=row), generation): TileEntry(
                data, content_type, strong_etag(data, request.variant), now, last_modified
            )
            for (col, row, _), (data, last_modified) in zip(meta.crops(), tiles, strict=True)
        }

    async def export(
        self, request: TileRequest, meta: MetaTile, generation: str | None = None
    ) -> dict[str, TileEntry]:
        """One exportImage call for ``meta``: every tile of it by cache key in ``generation``
        (the layer's current one if ``None``).

        A 1 x 1 metatile without buffer of a format exportImage gives (PNG, JPEG) keeps the
        upstream's bytes as they are, once they decode completely; a larger one, or a WebP or
        elevation tile, is asked in the layer's metatile format (``Layer.metatile_format``:
        JPEG for JPEG tiles where no transparency counts, float TIFF for elevation encodings,
        else PNG) and cut and encoded per tile (``terrain.cut_heights`` for heights). The
        image's size is recorded (``metrics.metatile_fetched``). Decoding happens in a worker
        thread. Raises ``UpstreamError``: bytes that do not decode completely to the size asked
        for (a truncated or corrupt image) are a 502 like any other upstream failure, so nothing
        is stored and a stale copy may stand in.
        """
        layer = self.layers[request.layer]
        grid = self.grids[request.tms]
        single = (
            request.ext in EXPORT_FORMATS
            and meta.cols == meta.rows == 1
            and meta.width == meta.tile_px == meta.height
        )
        fmt = request.ext if single else layer.metatile_format(request.ext)
        with metrics.upstream_call(request.layer, "exportImage") as call:
            image = await layer.client.export_image(
                meta.bbox,
                layer.wkid_for(grid),
                (meta.width, meta.height),
                fmt,
                layer.variants.params(request.variant)
                if single
                else layer.metatile_params(fmt, request.variant),
            )
        metrics.metatile_fetched(request.layer, len(image.data))
        exchange = EXCHANGE.get()
        if exchange is not None:
            exchange.upstream_seconds += call.seconds
        crops = meta.crops()
        size = (meta.width, meta.height)
        loop = asyncio.get_running_loop()
        try:
            if single:
                await loop.run_in_executor(None, check_image, image.data, size)
                tiles = [image.data]
            elif request.ext in terrain.ENCODINGS:
                tiles = await loop.run_in_executor(
                    None,
                    terrain.cut_heights,
                    image.data,
                    size,
                    [box for _, _, box in crops],
                    request.ext,
                )
            else:
                tiles = await loop.run_in_executor(
                    None, layer.cutter(image.data, size, [box for _, _, box in crops], request.ext)
                )
        except UndecodableImage as exc:
            raise UpstreamError(
                502, None, f"the {fmt.upper()} image does not decode: {exc}"
            ) from None
        return self._entries(
            request, meta, [(data, image.last_modified) for data in tiles], generation
        )

    def _refresh_later(self, request: TileRequest, key: str, generation: str) -> None:
        """Start one background refresh of the request's metatile unless one is running."""
        if self.flight.running(self.lock_key(request, self.serving_metatile(request), generation)):
            return
        task = asyncio.create_task(self._refresh(request, key, generation))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _refresh(self, request: TileRequest, key: str, generation: str) -> None:
        try:
            await self._fetch(request, key, generation)
        except UpstreamError as exc:
            log.info("background refresh of %s failed: %s", key, exc.message)

    async def close(self) -> None:
        """Wait for background refreshes to end, then stop retrying lock releases (at
        shutdown)."""
        if self._refreshes:
            await asyncio.gather(*self._refreshes, return_exceptions=True)
        await self.flight.close()


@asynccontextmanager
async def open_pipeline(
    config: GatewayConfig,
    *,
    l1: bool = True,
    agent: str = "tile-gateway/0.1",
    upstream_connections: int | None = None,
    exports: ExportLimit | None = None,
) -> AsyncIterator[TilePipeline]:
    """The pipeline of ``config``: its cache, one keep-alive session per upstream origin, the
    TileMatrixSets and the layers; closed on exit (background refreshes awaited, cache and
    sessions closed). ``l1`` False turns the in-process LRU off (a command that serves no tile
    has no use for it); ``agent`` is the upstream User-Agent; ``upstream_connections``
    replaces ``server.upstream_connections`` (the requests in flight to each upstream origin);
    ``exports`` replaces the limit of each upstream service's exportImage calls, which is
    otherwise ``server.max_concurrent_exports`` with its queue bounds. Layers naming
    ``credentials`` get their tokens through the same sessions (``gateway.credentials``).
    Service info is not loaded: see ``tiles.layer.load_service_info``."""
    cache_config = config.cache if l1 else config.cache.model_copy(update={"l1_max_bytes": 0})
    cache = TileCache(cache_config)
    server = config.server
    upstreams = UpstreamPool(
        upstream_connections or server.upstream_connections,
        agent,
        exports
        or ExportLimit(
            server.max_concurrent_exports,
            server.max_queued_exports,
            server.export_queue_timeout,
        ),
    )
    grids = GridRegistry(config.tile_matrix_sets)
    credentials = CredentialProviders(
        config.credentials, upstreams.session, server.upstream_timeout
    )
    pipeline = TilePipeline(
        build_layers(config, upstreams, grids, credentials),
        cache,
        KeyLayout(config.cache.prefix),
        grids,
        config.cache.lock_lease,
    )
    # The reverse proxy's services naming credentials share these providers (and tokens).
    pipeline.credentials = credentials
    pipeline.builder = partial(
        build_layer,
        timeout=server.upstream_timeout,
        upstreams=upstreams,
        grids=grids,
        credentials=credentials,
    )
    try:
        yield pipeline
    finally:
        await pipeline.close()
        await cache.close()
        await credentials.close()
        await upstreams.close()
