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
from gateway.grids import WEB_MERCATOR_QUAD, Grid, TileOutOfRange, get_grid
from gateway.imaging import EXPORT_FORMATS
from gateway.sources.imageserver import ImageServerClient, export_params

# Part of every layer fingerprint: bump it when the gateway changes how it renders a tile, so
# caches shared with older replicas are not read back as if they were the same bytes.
PIPELINE_VERSION = 1


class UnknownLayer(LookupError):
    """No layer of that name is configured."""


class UnsupportedFormat(ValueError):
    """The tile extension is not one the layer offers."""


@dataclass(frozen=True, slots=True)
class TileRequest:
    """One tile of one layer: TileMatrixSet id, TileMatrix ``z``, TileCol ``x``, TileRow ``y``,
    extension ``ext`` and ``scale`` (1 for 256 px tiles, 2 for the 512 px ``@2x`` form)."""

    layer: str
    tms: str
    z: int
    x: int
    y: int
    ext: str
    scale: int = 1


@dataclass(frozen=True, slots=True)
class TileResult:
    """A tile answer: the entry, and ``HIT`` (from the cache) or ``MISS`` (from the upstream)."""

    entry: TileEntry
    cache_status: Literal["HIT", "MISS"]


class Layer:
    """A configured layer made ready to serve: its source client, fingerprint and headers."""

    def __init__(self, name: str, config: LayerConfig, client: ImageServerClient) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.fixed_params = export_params(config.export.model_dump(exclude_none=True))
        self.generation = self.fingerprint(config)
        self.cache_control = f"public, max-age={config.ttl}"

    @staticmethod
    def fingerprint(config: LayerConfig) -> str:
        """A short hash of everything that changes the bytes of this layer's tiles."""
        identity = {
            "pipeline": PIPELINE_VERSION,
            "url": config.service_url,
            "wkid": config.web_mercator_wkid,
            "export": config.export.model_dump(exclude_none=True),
        }
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()

    def wkid_for(self, grid: Grid) -> int:
        """The WKID sent as bboxSR/imageSR for ``grid`` (Web Mercator's is configurable)."""
        return self.config.web_mercator_wkid if grid.epsg == 3857 else grid.epsg


class TilePipeline:
    """Finds tiles in the cache or makes them with one exportImage call each.

    ``layers`` maps layer names to ready layers; ``cache`` is the shared tile store.
    """

    def __init__(self, layers: dict[str, Layer], cache: TileCache, prefix: str) -> None:
        self.layers = layers
        self.cache = cache
        self.prefix = prefix

    def resolve(
        self,
        layer: str,
        z: int,
        x: int,
        y: int,
        ext: str,
        scale: int = 1,
        tms: str = WEB_MERCATOR_QUAD,
    ) -> TileRequest:
        """Check a tile address against the configuration, without I/O.

        Raises ``UnknownLayer``, ``UnsupportedFormat``, or ``TileOutOfRange`` (outside the
        TileMatrixSet or the layer's ``minzoom``..``maxzoom``).
        """
        found = self.layers.get(layer)
        if found is None:
            raise UnknownLayer(layer)
        if ext not in found.config.formats:
            offered = ", ".join(found.config.formats)
            raise UnsupportedFormat(f"layer {layer!r} offers {offered}, not {ext!r}")
        if not found.config.minzoom <= z <= found.config.maxzoom:
            raise TileOutOfRange(
                f"zoom {z} is outside {found.config.minzoom}..{found.config.maxzoom} for {layer!r}"
            )
        get_grid(tms).check(z, x, y)
        return TileRequest(layer, tms, z, x, y, ext, scale)

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
        """The tile for a request from ``resolve``: from the cache, else from the upstream.

        Only validated images are stored. Raises ``UpstreamError`` (502/504) when the upstream
        fails; nothing is cached then.
        """
        key = self.key(request)
        entry = await self.cache.get(key)
        if entry is not None:
            return TileResult(entry, "HIT")
        layer = self.layers[request.layer]
        grid = get_grid(request.tms)
        size = grid.tile_size * request.scale
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
    config: GatewayConfig, sessions: dict[str, aiohttp.ClientSession]
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
        )
        for name, layer in config.layers.items()
    }


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``: one keep-alive session is kept per origin."""
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"
