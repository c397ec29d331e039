"""The tile pipeline: tile request -> cache -> exportImage on the layer's source -> cache.

Every protocol front (XYZ, and later WMTS and OGC API) turns its URL into a ``TileRequest`` and
calls ``TilePipeline.get_tile``; this is where the cache and the upstream meet, so the same
cache entry serves every protocol asking for the same tile.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
from yarl import URL

from gateway.cache.codec import TileEntry, strong_etag
from gateway.cache.store import TileCache, tile_key
from gateway.config import GatewayConfig, LayerConfig
from gateway.grids import Grid, GridRegistry, TileLimits, TileOutOfRange
from gateway.imaging import EXPORT_FORMATS, empty_tile
from gateway.sources.imageserver import ImageServerClient, export_params, extent_wgs84

# Part of every layer fingerprint: bump it when the gateway changes how it renders a tile, so
# caches shared with older replicas are not read back as if they were the same bytes.
PIPELINE_VERSION = 1
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


@dataclass(frozen=True, slots=True)
class TileResult:
    """A tile answer: the entry, and ``HIT`` (no upstream call) or ``MISS`` (from the upstream)."""

    entry: TileEntry
    cache_status: Literal["HIT", "MISS"]


class Layer:
    """A configured layer made ready to serve: its source client, fingerprint, headers, the
    TileMatrixSets it is served in, and its data extent.

    ``bounds`` is ``(west, south, east, north)`` in degrees: from the config, else from the
    upstream's service info (``load_bounds``), else ``None`` (unknown: every tile is asked for).
    """

    def __init__(
        self, name: str, config: LayerConfig, client: ImageServerClient, grids: GridRegistry
    ) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.grids = {identifier: grids[identifier] for identifier in config.tile_matrix_sets}
        self.fixed_params = export_params(config.export.model_dump(exclude_none=True))
        self.generation = self.fingerprint(config)
        self.cache_control = f"public, max-age={config.ttl}"
        self.bounds: tuple[float, float, float, float] | None = config.bounds
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

    async def load_bounds(self) -> None:
        """Read the data extent from the upstream's service info, unless configured.

        Raises ``UpstreamError`` when the upstream cannot be read; ``bounds`` stays as it was.
        """
        if self.config.bounds is not None:
            return
        self.bounds = extent_wgs84(await self.client.service_info())
        self._limits.clear()

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
                matrix = grid.tms.matrix(z)
                self._limits[key] = (0, matrix.matrixWidth - 1, 0, matrix.matrixHeight - 1)
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
    """Finds tiles in the cache or makes them with one exportImage call each.

    ``layers`` maps layer names to ready layers; ``cache`` is the shared tile store; ``grids``
    every TileMatrixSet known.
    """

    def __init__(
        self, layers: dict[str, Layer], cache: TileCache, prefix: str, grids: GridRegistry
    ) -> None:
        self.layers = layers
        self.cache = cache
        self.prefix = prefix
        self.grids = grids

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
        (no I/O), else from the cache, else from the upstream.

        Only validated images are stored. Raises ``UpstreamError`` (502/504) when the upstream
        fails; nothing is cached then.
        """
        layer = self.layers[request.layer]
        grid = self.grids[request.tms]
        size = grid.tile_size * request.scale
        if not layer.has_data(grid, request.z, request.x, request.y):
            return TileResult(layer.empty_entry(request.ext, size), "HIT")
        key = self.key(request)
        entry = await self.cache.get(key)
        if entry is not None:
            return TileResult(entry, "HIT")
        image = await layer.client.export_image(
            grid.bbox(request.z, request.x, request.y),
            layer.wkid_for(grid),
            (size, size),
            request.ext,
            layer.fixed_params,
        )
        entry = TileEntry(
            data=image.data,
            content_type=EXPORT_FORMATS[request.ext][1],
            etag=strong_etag(image.data),
            created=time.time(),
            upstream_time=image.last_modified,
        )
        await self.cache.set(key, entry, layer.config.ttl)
        return TileResult(entry, "MISS")


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
