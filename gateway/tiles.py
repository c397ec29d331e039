"""The tile pipeline: tile request -> cache -> exportImage on the layer's source -> cache.

Every protocol front (XYZ, and later WMTS and OGC API) turns its URL into a ``TileRequest`` and
calls ``TilePipeline.get_tile``; this is where the cache and the upstream meet, so the same
cache entry serves every protocol asking for the same tile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import aiohttp
from yarl import URL

from gateway.cache.coalesce import SingleFlight
from gateway.cache.codec import TileEntry, strong_etag
from gateway.cache.store import TileCache, tile_key
from gateway.config import GatewayConfig, LayerConfig
from gateway.grids import Grid, GridRegistry, MetaTile, TileLimits, TileOutOfRange, metatile
from gateway.imaging import EXPORT_FORMATS, cut_metatile, empty_tile
from gateway.sources.imageserver import (
    ImageServerClient,
    UpstreamError,
    export_params,
    extent_wgs84,
)

log = logging.getLogger(__name__)

# Part of every layer fingerprint: bump it when the gateway changes how it renders a tile, so
# caches shared with older replicas are not read back as if they were the same bytes.
PIPELINE_VERSION = 1
# ArcGIS Server's own default limits, assumed until the service info says otherwise.
DEFAULT_MAX_IMAGE = (15000, 4100)
# Last-Modified of empty tiles: they never change while the process runs.
_STARTED = time.time()


class UnknownLayer(LookupError):
    """No layer of that name is configured."""


class UnknownTileMatrixSet(LookupError):
    """The layer is not served in a TileMatrixSet of that identifier."""


class UnsupportedFormat(ValueError):
    """The tile extension is not one the layer offers."""


@dataclass(frozen=True, slots=True)
class TileRequest:
    """One tile of one layer: the base TileMatrixSet ``tms`` (never a ``_2x`` variant: those are
    ``scale`` 2 of their base), TileMatrix ``z``, TileCol ``x``, TileRow ``y``, extension
    ``ext`` and ``scale`` (1 for the set's own tile size, 2 for twice the pixels)."""

    layer: str
    tms: str
    z: int
    x: int
    y: int
    ext: str
    scale: int = 1


CacheStatus = Literal["HIT", "MISS", "STALE"]


@dataclass(frozen=True, slots=True)
class TileResult:
    """A tile answer: the entry, and ``HIT`` (no upstream call made for this request),
    ``MISS`` (this request called the upstream) or ``STALE`` (served past its freshness)."""

    entry: TileEntry
    cache_status: CacheStatus


class Layer:
    """A configured layer made ready to serve: its source client, fingerprint, headers, the
    TileMatrixSets it is served in, and its data extent.

    ``bounds`` is ``(west, south, east, north)`` in degrees: from the config, else from the
    upstream's service info (``load_service_info``), else ``None`` (unknown: every tile is
    asked for). ``max_image`` is the upstream's maxImageWidth x maxImageHeight in pixels.
    ``purges`` counts whole-layer purges; it is part of ``generation``.
    """

    def __init__(
        self, name: str, config: LayerConfig, client: ImageServerClient, grids: GridRegistry
    ) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.grids = {identifier: grids[identifier] for identifier in config.tile_matrix_sets}
        self.fixed_params = export_params(config.export.model_dump(exclude_none=True))
        self.fingerprint_hash = self.fingerprint(config)
        self.purges = 0
        self.generation = f"{self.fingerprint_hash}.0"
        self.cache_control = f"public, max-age={config.ttl}" + "".join(
            f", {name}={seconds}"
            for name, seconds in (
                ("stale-while-revalidate", config.stale_while_revalidate),
                ("stale-if-error", config.stale_if_error),
            )
            if seconds
        )
        self.bounds: tuple[float, float, float, float] | None = config.bounds
        self.max_image = DEFAULT_MAX_IMAGE
        self._limits: dict[tuple[str, int], TileLimits | None] = {}
        self._empty: dict[tuple[str, int], TileEntry] = {}

    @staticmethod
    def fingerprint(config: LayerConfig) -> str:
        """A short hash of everything that changes the bytes of this layer's tiles."""
        identity = {
            "pipeline": PIPELINE_VERSION,
            "url": config.service_url,
            "wkid": config.web_mercator_wkid,
            "export": config.export.model_dump(exclude_none=True),
            "background": config.background,
        }
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()

    def set_purges(self, purges: int) -> None:
        """Adopt a purge count (from this or another replica): new keys, old ones age out."""
        self.purges = purges
        self.generation = f"{self.fingerprint_hash}.{purges}"

    async def load_service_info(self) -> None:
        """Read the data extent (unless configured) and maxImageWidth/maxImageHeight from the
        upstream's service info (ArcGIS REST "Image Service" resource).

        Raises ``UpstreamError`` when the upstream cannot be read; nothing changes then.
        """
        info = await self.client.service_info()
        width, height = info.get("maxImageWidth"), info.get("maxImageHeight")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            self.max_image = (width, height)
        if self.config.bounds is None:
            self.bounds = extent_wgs84(info)
            self._limits.clear()

    def meta_size(self, grid: Grid, scale: int) -> tuple[int, int]:
        """Columns and rows of this layer's metatiles in ``grid`` at ``scale``: the configured
        ``meta_size``, made smaller where the image would exceed the upstream's maximum."""
        tile_px = grid.tile_size * scale
        buffer = 2 * self.config.meta_buffer
        columns = max(1, min(self.config.meta_size[0], (self.max_image[0] - buffer) // tile_px))
        rows = max(1, min(self.config.meta_size[1], (self.max_image[1] - buffer) // tile_px))
        return columns, rows

    def wkid_for(self, grid: Grid) -> int:
        """The WKID sent as bboxSR/imageSR for ``grid`` (Web Mercator's is configurable)."""
        return self.config.web_mercator_wkid if grid.epsg == 3857 else grid.epsg

    def zoom_range(self, grid: Grid) -> tuple[int, int]:
        """The TileMatrix identifiers served in ``grid``: the layer's range within the set's."""
        return max(self.config.minzoom, grid.minzoom), min(self.config.maxzoom, grid.maxzoom)

    def limits(self, grid: Grid, z: int) -> TileLimits | None:
        """The tiles of TileMatrix ``z`` of ``grid`` that hold data (TileMatrixSetLimits);
        the whole matrix when the extent is unknown, ``None`` when no tile does."""
        key = (grid.identifier, z)
        if key not in self._limits:
            if self.bounds is None:
                width, height = grid.matrix_sizes[z]
                self._limits[key] = (0, width - 1, 0, height - 1)
            else:
                extent = grid.extent_from_wgs84(self.bounds)
                self._limits[key] = None if extent is None else grid.limits(extent, z)
        return self._limits[key]

    def has_data(self, grid: Grid, z: int, x: int, y: int) -> bool:
        """Whether tile ``z/x/y`` of ``grid`` intersects the layer's data extent."""
        limits = self.limits(grid, z)
        return limits is not None and (limits[0] <= x <= limits[1] and limits[2] <= y <= limits[3])

    def empty_entry(self, ext: str, size: int) -> TileEntry:
        """The entry of a tile outside the data: transparent PNG or background-colour JPEG."""
        key = (ext, size)
        if key not in self._empty:
            data = empty_tile(ext, size, self.config.background)
            self._empty[key] = TileEntry(data, EXPORT_FORMATS[ext][1], strong_etag(data), _STARTED)
        return self._empty[key]


class TilePipeline:
    """Finds tiles in the cache or makes them, a metatile per exportImage call.

    ``layers`` maps layer names to ready layers; ``cache`` is the shared tile store; ``grids``
    every TileMatrixSet known; ``lock_lease`` the seconds a replica may hold a metatile's lock.
    """

    def __init__(
        self,
        layers: dict[str, Layer],
        cache: TileCache,
        prefix: str,
        grids: GridRegistry,
        lock_lease: float = 30.0,
    ) -> None:
        self.layers = layers
        self.cache = cache
        self.prefix = prefix
        self.grids = grids
        self.flight = SingleFlight(cache, lock_lease)
        self._refreshes: set[asyncio.Task[None]] = set()

    def resolve(
        self, layer: str, tms: str, z: int, x: int, y: int, ext: str, scale: int = 1
    ) -> TileRequest:
        """Check a tile address against the configuration, without I/O.

        Raises ``UnknownLayer``, ``UnknownTileMatrixSet``, ``UnsupportedFormat``, or
        ``TileOutOfRange`` (outside the TileMatrixSet or the layer's ``minzoom``..``maxzoom``).
        """
        found = self.layers.get(layer)
        if found is None:
            raise UnknownLayer(layer)
        grid = found.grids.get(tms)
        if grid is None:
            raise UnknownTileMatrixSet(f"layer {layer!r} is not served in {tms!r}")
        if ext not in found.config.formats:
            offered = ", ".join(found.config.formats)
            raise UnsupportedFormat(f"layer {layer!r} offers {offered}, not {ext!r}")
        low, high = found.zoom_range(grid)
        if not low <= z <= high:
            raise TileOutOfRange(
                f"TileMatrix {z} is outside {low}..{high} for {layer!r} in {tms}", "TileMatrix"
            )
        grid.check(z, x, y)
        return TileRequest(layer, grid.base, z, x, y, ext, grid.scale * scale)

    def has_data(self, request: TileRequest) -> bool:
        """Whether the requested tile intersects its layer's data extent."""
        return self.layers[request.layer].has_data(
            self.grids[request.tms], request.z, request.x, request.y
        )

    def key(self, request: TileRequest) -> str:
        """The cache key of ``request`` (see ``tile_key``)."""
        layer = self.layers[request.layer]
        return tile_key(
            self.prefix,
            request.layer,
            layer.generation,
            request.tms,
            request.z,
            request.x,
            request.y,
            request.scale,
            request.ext,
        )

    async def get_tile(self, request: TileRequest) -> TileResult:
        """The tile for a request from ``resolve``: an empty tile outside the data extent
        (no I/O), else a fresh cached one, else a stale one inside ``stale_while_revalidate``
        (refreshed in the background), else from the upstream through coalescing; when the
        upstream fails, a stale one inside ``stale_if_error``.

        Only validated images are stored. Raises ``UpstreamError`` (502/504) when the upstream
        fails and no stale copy may stand in; nothing is cached then.
        """
        layer = self.layers[request.layer]
        grid = self.grids[request.tms]
        if not layer.has_data(grid, request.z, request.x, request.y):
            return TileResult(layer.empty_entry(request.ext, grid.tile_size * request.scale), "HIT")
        key = self.key(request)
        config = layer.config
        entry = await self.cache.get(key, config.storage_ttl)
        age = 0.0
        if entry is not None:
            age = time.time() - entry.created
            if age < config.ttl:
                return TileResult(entry, "HIT")
            if age < config.ttl + config.stale_while_revalidate:
                self._refresh_later(request, key)
                return TileResult(entry, "STALE")
        try:
            fresh, produced = await self._fetch(request, key)
        except UpstreamError:
            if entry is not None and age < config.ttl + config.stale_if_error:
                return TileResult(entry, "STALE")
            raise
        return TileResult(fresh, "MISS" if produced else "HIT")

    def lock_key(self, request: TileRequest, meta: MetaTile) -> str:
        """The coalescing lock of the metatile ``meta`` of ``request``."""
        layer = self.layers[request.layer]
        return (
            f"{self.prefix}:lock:{request.layer}:{layer.generation}:{request.tms}:"
            f"{meta.z}:{meta.col0}:{meta.row0}:{request.scale}.{request.ext}"
        )

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

    async def _fetch(self, request: TileRequest, key: str) -> tuple[TileEntry, bool]:
        return await self.fetch_metatile(request, self.metatile_of(request), key)

    async def fetch_metatile(
        self, request: TileRequest, meta: MetaTile, key: str
    ) -> tuple[TileEntry, bool]:
        """The fresh entry under ``key`` (a tile of ``meta``), from the cache or by fetching the
        metatile through coalescing; ``True`` when this call made the upstream call.

        Raises ``UpstreamError``.
        """
        config = self.layers[request.layer].config
        return await self.flight.fetch(
            self.lock_key(request, meta),
            key,
            lambda: self.produce(request, meta),
            config.ttl,
            config.storage_ttl,
        )

    async def produce(self, request: TileRequest, meta: MetaTile) -> dict[str, TileEntry]:
        """One exportImage call for ``meta``: every tile of it by cache key (coalescing stores
        them).

        A 1 x 1 metatile without buffer keeps the upstream's bytes as they are; a larger one is
        asked as PNG (lossless, with alpha) and cut and encoded per tile in a worker thread.
        Raises ``UpstreamError``.
        """
        layer = self.layers[request.layer]
        grid = self.grids[request.tms]
        single = meta.cols == meta.rows == 1 and meta.width == meta.tile_px == meta.height
        image = await layer.client.export_image(
            meta.bbox,
            layer.wkid_for(grid),
            (meta.width, meta.height),
            request.ext if single else "png",
            layer.fixed_params,
        )
        crops = meta.crops()
        if single:
            tiles = [image.data]
        else:
            tiles = await asyncio.get_running_loop().run_in_executor(
                None,
                partial(
                    cut_metatile,
                    image.data,
                    [box for _, _, box in crops],
                    request.ext,
                    png8=layer.config.png8,
                    jpeg_quality=layer.config.jpeg_quality,
                    background=layer.config.background,
                ),
            )
        now = time.time()
        content_type = EXPORT_FORMATS[request.ext][1]
        return {
            self.key(replace(request, x=col, y=row)): TileEntry(
                data, content_type, strong_etag(data), now, image.last_modified
            )
            for (col, row, _), data in zip(crops, tiles, strict=True)
        }

    def _refresh_later(self, request: TileRequest, key: str) -> None:
        """Start one background refresh of the request's metatile unless one is running."""
        if self.flight.running(self.lock_key(request, self.metatile_of(request))):
            return
        task = asyncio.create_task(self._refresh(request, key))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _refresh(self, request: TileRequest, key: str) -> None:
        try:
            await self._fetch(request, key)
        except UpstreamError as exc:
            log.info("background refresh of %s failed: %s", key, exc.message)

    async def close(self) -> None:
        """Wait for background refreshes to end (at shutdown)."""
        if self._refreshes:
            await asyncio.gather(*self._refreshes, return_exceptions=True)


def build_layers(
    config: GatewayConfig, sessions: dict[str, aiohttp.ClientSession], grids: GridRegistry
) -> dict[str, Layer]:
    """Ready layers for ``config``; ``sessions`` maps an upstream origin to its shared session."""
    return {
        name: Layer(
            name,
            layer,
            ImageServerClient(
                layer.service_url,
                sessions[origin_of(layer.service_url)],
                config.server.upstream_timeout,
            ),
            grids,
        )
        for name, layer in config.layers.items()
    }


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``: one keep-alive session is kept per origin."""
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"
