"""A configured layer made ready to serve: its ImageServer client, fingerprint, HTTP
freshness, TileMatrixSets, data extent and TileMatrixSetLimits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from gateway import terrain
from gateway.cache.codec import TileEntry, strong_etag
from gateway.config import GatewayConfig, LayerConfig
from gateway.credentials import CredentialProviders
from gateway.errors import UpstreamError
from gateway.grids import Grid, GridRegistry, TileLimits
from gateway.imaging import MEDIA_TYPES, cut_metatile, empty_tile
from gateway.sources.http import UpstreamPool
from gateway.sources.imageserver import ImageServerClient, extent_wgs84
from gateway.tiles.servicecache import cache_levels
from gateway.tiles.variants import LayerVariants
from gateway.tiles.zooms import FALLBACK_MAXZOOM, native_resolution, native_zoom
from gateway.timevalues import iso_time

log = logging.getLogger(__name__)

# Part of every layer fingerprint: bump it when the gateway changes how it renders a tile, so
# caches shared with older replicas are not read back as if they were the same bytes.
PIPELINE_VERSION = 1
# ArcGIS Server's own default limits, assumed until the service info says otherwise.
DEFAULT_MAX_IMAGE = (15000, 4100)
# Last-Modified of empty tiles: they never change while the process runs.
_STARTED = time.time()


class Layer:
    """A configured layer made ready to serve: its source client, fingerprint, headers, the
    TileMatrixSets it is served in, and its data extent.

    ``bounds`` is ``(west, south, east, north)`` in degrees: from the config, else from the
    upstream's service info (``load_service_info``), else ``None`` (unknown: every tile is
    asked for). ``max_image`` is the upstream's maxImageWidth x maxImageHeight in pixels.
    ``service_cache`` maps TileMatrixSets to the TileMatrices read from the upstream's own tile
    cache (``cache_level``). ``purges`` counts whole-layer purges; it is part of
    ``generation``, which is part of every cache key of the layer.
    """

    def __init__(
        self, name: str, config: LayerConfig, client: ImageServerClient, grids: GridRegistry
    ) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.grids = {identifier: grids[identifier] for identifier in config.tile_matrix_sets}
        self.formats = tuple(config.formats)
        # Styles and time: each variant's exportImage parameters (tiles.variants).
        self.variants = LayerVariants(config)
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
        # {TileMatrixSet: {TileMatrix: level}} served from the upstream's own tile cache.
        self.service_cache: dict[str, dict[int, int]] = {}
        # The service's bandCount (point queries: a NoData pixel is a null per band).
        self.band_count: int | None = None
        # What the service info says of its pixel size, and that size in each TileMatrixSet's
        # CRS units (tiles.zooms), computed when first needed.
        self._pixel_size_info: dict[str, object] = {}
        self._native: dict[str, float | None] = {}
        self._limits: dict[str, dict[int, TileLimits]] = {}
        self._empty: dict[tuple[str, int], TileEntry] = {}

    @staticmethod
    def fingerprint(config: LayerConfig, times: Sequence[str] = ()) -> str:
        """A short hash of everything that changes the bytes of this layer's tiles (``times``:
        the time values read from the service, whose last is the default)."""
        identity: dict[str, Any] = {
            "pipeline": PIPELINE_VERSION,
            "url": config.service_url,
            "wkid": config.web_mercator_wkid,
            "export": config.export.model_dump(exclude_none=True),
            "background": config.background,
            "encoding": [
                config.png8,
                config.jpeg_quality,
                config.metatile_format,
                config.metatile_jpeg_quality,
                config.webp_quality,
            ],
        }
        # Styles and time only where declared: a layer without variants keeps its fingerprint.
        if config.styles:
            identity["styles"] = {name: style.export() for name, style in config.styles.items()}
            identity["default_style"] = config.default_style
        if config.time is not None:
            identity["time"] = config.time.model_dump(exclude_defaults=True)
            if times:
                identity["time_values"] = list(times)
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()

    def set_purges(self, purges: int) -> None:
        """Adopt a purge count (from this or another replica): new keys, old ones age out."""
        self.purges = purges
        self.generation = f"{self.fingerprint_hash}.{purges}"

    async def load_service_info(self) -> None:
        """Read the data extent (unless configured), maxImageWidth/maxImageHeight, the pixel size
        (default zoom range), the time values (``time.from_service``) and the tile cache from the
        upstream's service info (ArcGIS REST "Image Service" resource); warn about styles naming
        a raster function the service does not offer.

        Raises ``UpstreamError`` when the upstream cannot be read; nothing changes then.
        """
        info = await self.client.service_info()
        count = info.get("bandCount")
        self.band_count = count if isinstance(count, int) and count > 0 else None
        self._pixel_size_info = {
            key: info.get(key) for key in ("extent", "pixelSizeX", "spatialReference")
        }
        self._native.clear()
        self._limits.clear()
        width, height = info.get("maxImageWidth"), info.get("maxImageHeight")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            self.max_image = (width, height)
        if self.config.bounds is None:
            self.bounds = extent_wgs84(info)
        self._check_raster_functions(info.get("rasterFunctionInfos"))
        if self.config.time is not None and self.config.time.from_service:
            await self._load_times(info.get("timeInfo"))
        # A cache holds the service's default rendering: export parameters, a style or a
        # time would differ (only the default variant of a layer with none reads it).
        if self.config.use_service_cache == "auto" and not self.variants.params(""):
            self.service_cache = {
                identifier: levels
                for identifier, grid in self.grids.items()
                if grid.scale == 1 and (levels := cache_levels(info, grid))
            }
            for identifier, levels in self.service_cache.items():
                log.info(
                    "layer %s: TileMatrixSet %s, TileMatrix %d-%d read from the service's cache",
                    self.name,
                    identifier,
                    min(levels),
                    max(levels),
                )

    async def _load_times(self, time_info: object) -> None:
        """The layer's time values from the service (``time.from_service``): the distinct
        values of the catalog's ``timeInfo.startTimeField``, as ISO 8601 (a date when at
        midnight UTC). The fingerprint takes them in: another list, or another default,
        makes other keys. Raises ``UpstreamError`` when the catalog cannot be read."""
        field = time_info.get("startTimeField") if isinstance(time_info, dict) else None
        if not isinstance(field, str) or not field:
            log.warning("layer %s: time.from_service, but the service has no timeInfo", self.name)
            return
        times = [iso_time(epoch) for epoch in await self.client.catalog_times(field)]
        if not times:
            log.warning("layer %s: the service's catalog lists no %s", self.name, field)
            return
        self.variants = LayerVariants(self.config, times)
        self.fingerprint_hash = self.fingerprint(self.config, times)
        self.generation = f"{self.fingerprint_hash}.{self.purges}"

    def _check_raster_functions(self, infos: object) -> None:
        """Warn about styles naming a raster function the service does not list in its
        ``rasterFunctionInfos`` (ArcGIS REST "Image Service"): ArcGIS answers their tiles with
        an error. Nothing is said when the service lists none."""
        if not isinstance(infos, list):
            return
        offered = {info.get("name") for info in infos if isinstance(info, dict)}
        for name, style in self.config.styles.items():
            if style.rasterFunction is not None and style.rasterFunction not in offered:
                log.warning(
                    "layer %s: style %s names the raster function %r, which the service does "
                    "not list (rasterFunctionInfos: %s)",
                    self.name,
                    name,
                    style.rasterFunction,
                    ", ".join(sorted(str(item) for item in offered)) or "none",
                )

    def cache_level(self, tms: str, z: int, scale: int, variant: str = "") -> int | None:
        """The level of the upstream's tile cache that holds TileMatrix ``z`` of ``tms`` at
        ``scale`` for ``variant``, or ``None`` when such tiles are rendered with exportImage
        (the tiles of a cache have one size: scale 1 only; it holds the default variant)."""
        if scale != 1 or variant:
            return None
        return self.service_cache.get(tms, {}).get(z)

    def meta_size(self, grid: Grid, scale: int) -> tuple[int, int]:
        """Columns and rows of this layer's metatiles in ``grid`` at ``scale``: the configured
        ``meta_size``, made smaller where the image would exceed the upstream's maximum."""
        tile_px = grid.tile_size * scale
        buffer = 2 * self.config.meta_buffer
        columns = max(1, min(self.config.meta_size[0], (self.max_image[0] - buffer) // tile_px))
        rows = max(1, min(self.config.meta_size[1], (self.max_image[1] - buffer) // tile_px))
        return columns, rows

    def cutter(
        self, image: bytes, size: tuple[int, int], boxes: list[tuple[int, int, int, int]], ext: str
    ) -> Callable[[], list[bytes]]:
        """``imaging.cut_metatile`` of ``image`` (``size`` pixels) into the tiles of ``boxes``
        encoded as ``ext`` with this layer's settings (``png8``, ``jpeg_quality``,
        ``background``, ``webp_quality``), as a call for a worker thread. It raises
        ``UndecodableImage`` there."""
        return partial(
            cut_metatile,
            image,
            size,
            boxes,
            ext,
            png8=self.config.png8,
            jpeg_quality=self.config.jpeg_quality,
            background=self.config.background,
            webp_quality=self.config.webp_quality,
        )

    def metatile_format(self, ext: str) -> str:
        """The format (``png``/``jpg``/``tif``) metatiles of ``ext`` tiles are asked in: float
        TIFF for the elevation encodings (``gateway.terrain``, whatever the config says: a
        picture holds no heights); else the configured ``metatile_format``, or with ``auto``
        JPEG for JPEG tiles on a black background (ArcGIS paints no-data black in a JPEG, which
        is then what the tile shows anyway) and PNG wherever transparency counts (WebP tiles
        included)."""
        if ext in terrain.ENCODINGS:
            return "tif"
        chosen = self.config.metatile_format
        if chosen != "auto":
            return chosen
        return "jpg" if ext == "jpg" and self.config.background.lower() == "#000000" else "png"

    def metatile_params(self, fmt: str, variant: str = "") -> Mapping[str, str]:
        """The exportImage parameters of a metatile of ``variant`` (a token of
        ``variants.token``; the default variant when empty) fetched as ``fmt``: a JPEG one
        carries ``compressionQuality`` (arcgis-rest.md section 1.1), the ``export`` one when
        configured, else ``metatile_jpeg_quality``; a TIFF one asks float heights
        (``terrain.export_params``)."""
        params = self.variants.params(variant)
        if fmt == "tif":
            return {**params, **terrain.export_params()}
        if fmt != "jpg" or "compressionQuality" in params:
            return params
        return {**params, "compressionQuality": str(self.config.metatile_jpeg_quality)}

    def wkid_for(self, grid: Grid) -> int:
        """The WKID sent as bboxSR/imageSR for ``grid`` (Web Mercator's is configurable)."""
        return self.config.web_mercator_wkid if grid.epsg == 3857 else grid.epsg

    def zoom_range(self, grid: Grid) -> tuple[int, int]:
        """The TileMatrix identifiers served in ``grid``: the layer's range within the set's.

        The last one is ``maxzoom`` when configured, else the TileMatrix just finer than the
        service's pixel size plus ``overzoom`` (``tiles.zooms``; ``FALLBACK_MAXZOOM`` while
        the pixel size is unknown); never below the first one."""
        low = max(self.config.minzoom, grid.minzoom)
        high = self.config.maxzoom
        if high is None:
            native = self._native_resolution(grid)
            high = (
                FALLBACK_MAXZOOM
                if native is None
                else native_zoom(grid, native) + self.config.overzoom
            )
        return low, max(low, min(high, grid.maxzoom))

    def _native_resolution(self, grid: Grid) -> float | None:
        """The service's pixel size in ``grid``'s CRS units (``tiles.zooms``), once per set."""
        if grid.identifier not in self._native:
            self._native[grid.identifier] = native_resolution(self._pixel_size_info, grid)
        return self._native[grid.identifier]

    def tile_matrix_set_limits(self, grid: Grid) -> dict[int, TileLimits]:
        """The layer's TileMatrixSetLimits in ``grid`` (WMTS 07-057r7 section 7.2.4.6.3, OGC
        TMS 2.0 tileMatrixSetLimits): for each TileMatrix of the zoom range that holds data,
        ``(min_col, max_col, min_row, max_row)`` inclusive; every tile of each matrix when the
        data extent is unknown. Computed once per grid (and again when the extent is read)."""
        limits = self._limits.get(grid.identifier)
        if limits is None:
            low, high = self.zoom_range(grid)
            extent = None if self.bounds is None else grid.extent_from_wgs84(self.bounds)
            limits = {}
            for z in range(low, high + 1):
                if self.bounds is None:
                    width, height = grid.matrix_sizes[z]
                    limits[z] = (0, width - 1, 0, height - 1)
                elif extent is not None:
                    found = grid.limits(extent, z)
                    if found is not None:
                        limits[z] = found
            self._limits[grid.identifier] = limits
        return limits

    def limits(self, grid: Grid, z: int) -> TileLimits | None:
        """The TileMatrixSetLimits of TileMatrix ``z`` of ``grid``; ``None`` when no tile of it
        holds data, or ``z`` is outside the layer's zoom range."""
        return self.tile_matrix_set_limits(grid).get(z)

    def advertised_grids(self) -> tuple[str, ...]:
        """The TileMatrixSets in which some tile holds data (those WMTS links), in order."""
        return tuple(
            identifier
            for identifier, grid in self.grids.items()
            if self.tile_matrix_set_limits(grid)
        )

    def has_data(self, grid: Grid, z: int, x: int, y: int) -> bool:
        """Whether tile ``z/x/y`` of ``grid`` intersects the layer's data extent."""
        limits = self.limits(grid, z)
        return limits is not None and (limits[0] <= x <= limits[1] and limits[2] <= y <= limits[3])

    def empty_entry(self, ext: str, size: int) -> TileEntry:
        """The entry of a tile outside the data: transparent PNG or WebP, background-colour
        JPEG, or height 0 in an elevation encoding (``terrain.empty_tile``)."""
        key = (ext, size)
        if key not in self._empty:
            if ext in terrain.ENCODINGS:
                data = terrain.empty_tile(ext, size)
            else:
                data = empty_tile(ext, size, self.config.background)
            self._empty[key] = TileEntry(data, MEDIA_TYPES[ext], strong_etag(data), _STARTED)
        return self._empty[key]


def build_layer(
    name: str,
    layer: LayerConfig,
    timeout: float,
    upstreams: UpstreamPool,
    grids: GridRegistry,
    credentials: CredentialProviders,
) -> Layer:
    """The ready layer ``name`` of ``layer``: its ImageServer client shares its origin's
    session of ``upstreams`` (calls bounded by ``timeout`` seconds) and, when the layer names
    credentials, their provider for its server."""
    url = layer.service_url
    provider = (
        None if layer.credentials is None else credentials.for_service(layer.credentials, url)
    )
    client = ImageServerClient(url, upstreams.upstream(url, timeout, provider))
    return Layer(name, layer, client, grids)


def build_layers(
    config: GatewayConfig,
    upstreams: UpstreamPool,
    grids: GridRegistry,
    credentials: CredentialProviders,
) -> dict[str, Layer]:
    """Ready layers for ``config`` (``build_layer`` of each)."""
    timeout = config.server.upstream_timeout
    return {
        name: build_layer(name, layer, timeout, upstreams, grids, credentials)
        for name, layer in config.layers.items()
    }


async def load_service_info(layers: list[Layer], timeout: float) -> None:
    """Each layer's data extent and maximum image size from its upstream, concurrently, within
    ``timeout`` seconds. A layer whose upstream does not answer keeps its configured bounds (or
    none: every tile of the matrix is then asked for) and the default image limits."""

    async def load(layer: Layer) -> None:
        try:
            await asyncio.wait_for(layer.load_service_info(), timeout)
        except (UpstreamError, TimeoutError) as exc:
            reason = (
                exc.message if isinstance(exc, UpstreamError) else f"no answer in {timeout:g} s"
            )
            log.warning("layer %s: service info unavailable: %s", layer.name, reason)

    await asyncio.gather(*(load(layer) for layer in layers))
