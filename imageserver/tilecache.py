"""The tile cache of a cached image service: ``tileInfo`` and ``tile/<level>/<row>/<col>``.

ArcGIS REST "Image Service" (``singleFusedMapCache``, ``tileInfo``) and "Image Tile"
(``<service>/tile/<level>/<row>/<column>``, 10.1+), ``docs/arcgis-rest.md`` §2.1: the scheme
is the standard ArcGIS Online / Google one (Web Mercator, 256 x 256 tiles, origin
(-20037508.342787, 20037508.342787) as Esri truncates it, level 0 resolution
156543.03392800014 m halving each level, scales at 96 dpi); row counts down from the top,
column right from the left; a tile the cache does not hold (outside the data, outside the
matrix, or on a level the cache was not built for) is HTTP 404.

Tiles are rendered from the raster on first request, exactly as ``exportImage`` renders the
same bbox at 256 x 256 pixels, and kept in a bounded in-memory LRU, standing in for the
precomputed tiles of a real cache.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from imageserver import functions
from imageserver.config import TileCacheSpec
from imageserver.encode import EncodedImage, encode
from imageserver.params import DEFAULT_COMPRESSION_QUALITY, Bounds, ImageFormat
from imageserver.raster import RasterSource, RenderRequest
from imageserver.spatialref import WEB_MERCATOR, spatial_reference_json

TILE_SIZE = 256
DPI = 96
# Esri's values for the ArcGIS Online scheme (arcgis-rest.md §2.1), not the exact pi * 6378137.
ORIGIN = (-20037508.342787, 20037508.342787)
RESOLUTION_0 = 156543.03392800014
SCALE_0 = 591657527.591555
# Web Mercator's latitude limit: the square of level 0.
_MAX_LATITUDE = 85.0511287798066


def resolution(level: int) -> float:
    """Metres per pixel of ``level`` (EPSG:3857 units)."""
    return RESOLUTION_0 / 2**level


def tile_info(spec: TileCacheSpec) -> dict[str, Any]:
    """The ``tileInfo`` of the service info for ``spec`` (the fields GDAL and ArcGIS clients
    read: ``rows``, ``cols``, ``dpi``, ``format``, ``compressionQuality``, ``origin``,
    ``spatialReference``, ``lods[{level, resolution, scale}]``)."""
    return {
        "rows": TILE_SIZE,
        "cols": TILE_SIZE,
        "dpi": DPI,
        "format": "PNG32" if spec.format == "png" else "JPEG",
        "compressionQuality": DEFAULT_COMPRESSION_QUALITY if spec.format == "jpg" else 0,
        "origin": {"x": ORIGIN[0], "y": ORIGIN[1]},
        "spatialReference": spatial_reference_json(WEB_MERCATOR),
        "lods": [
            {"level": level, "resolution": resolution(level), "scale": SCALE_0 / 2**level}
            for level in range(spec.max_level + 1)
        ],
    }


def tile_bounds(level: int, row: int, col: int) -> Bounds:
    """``(xmin, ymin, xmax, ymax)`` of a tile in EPSG:3857 metres."""
    span = TILE_SIZE * resolution(level)
    xmin = ORIGIN[0] + col * span
    ymax = ORIGIN[1] - row * span
    return xmin, ymax - span, xmin + span, ymax


def data_extent(source: RasterSource) -> Bounds | None:
    """The raster's extent in EPSG:3857, within Web Mercator's latitude limits; ``None`` when
    it cannot be projected there."""
    try:
        west, south, east, north = transform_bounds(
            source.crs, "EPSG:4326", *source.bounds, densify_pts=21
        )
        south, north = max(south, -_MAX_LATITUDE), min(north, _MAX_LATITUDE)
        if not (west < east and south < north):
            return None
        extent = transform_bounds("EPSG:4326", WEB_MERCATOR, west, south, east, north)
    except RasterioError:
        return None
    return extent if all(math.isfinite(v) for v in extent) else None


def holds(spec: TileCacheSpec, extent: Bounds | None, level: int, row: int, col: int) -> bool:
    """Whether the cache holds tile ``level/row/col``: a built level, inside the matrix, and
    overlapping the data ``extent`` (EPSG:3857)."""
    built = spec.max_level if spec.built_max_level is None else spec.built_max_level
    if not 0 <= level <= min(built, spec.max_level) or extent is None:
        return False
    if not (0 <= row < 2**level and 0 <= col < 2**level):
        return False
    xmin, ymin, xmax, ymax = tile_bounds(level, row, col)
    return xmin < extent[2] and extent[0] < xmax and ymin < extent[3] and extent[1] < ymax


def render_tile(
    source: RasterSource, spec: TileCacheSpec, level: int, row: int, col: int
) -> EncodedImage:
    """Render one tile as ``exportImage`` renders its bbox at 256 x 256 pixels (all bands,
    bilinear, palette drawn as RGB) in the cache's format. Blocks: run it in a thread."""
    request = RenderRequest(
        bounds=tile_bounds(level, row, col),
        crs=WEB_MERCATOR,
        width=TILE_SIZE,
        height=TILE_SIZE,
        bands=tuple(range(source.count)),
        resampling=Resampling.bilinear,
        nodata=None,
        expand_palette=True,
    )
    image_format = ImageFormat.PNG32 if spec.format == "png" else ImageFormat.JPG
    # The default rendering of exportImage (a stretch of non-8-bit data), so the two agree.
    function = functions.display_rule(source, None, image_format, None)
    return encode(
        functions.render(source, request, function),
        image_format=image_format,
        pixel_type=None,
        quality=DEFAULT_COMPRESSION_QUALITY,
        crs=WEB_MERCATOR,
    )


class TileStore:
    """Rendered tiles of every cached service, least recently used evicted first.

    Keys are ``(service, level, row, col)``; bounded by ``max_bytes`` of encoded tiles.
    Used from the event loop only.
    """

    def __init__(self, max_bytes: int = 128 * 2**20) -> None:
        self._tiles: OrderedDict[tuple[str, int, int, int], EncodedImage] = OrderedDict()
        self._max_bytes = max_bytes
        self._bytes = 0
        self._extents: dict[str, Bounds | None] = {}

    def extent(self, service: str, source: RasterSource) -> Bounds | None:
        """The data extent of ``service`` in EPSG:3857 (:func:`data_extent`), computed once."""
        if service not in self._extents:
            self._extents[service] = data_extent(source)
        return self._extents[service]

    def get(self, key: tuple[str, int, int, int]) -> EncodedImage | None:
        """The tile under ``key``, or ``None`` when it was not rendered yet (or evicted)."""
        tile = self._tiles.get(key)
        if tile is not None:
            self._tiles.move_to_end(key)
        return tile

    def put(self, key: tuple[str, int, int, int], tile: EncodedImage) -> None:
        """Keep ``tile`` under ``key``, evicting the least recently used beyond the bound."""
        previous = self._tiles.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous.content)
        self._tiles[key] = tile
        self._bytes += len(tile.content)
        while len(self._tiles) > 1 and self._bytes > self._max_bytes:
            _, evicted = self._tiles.popitem(last=False)
            self._bytes -= len(evicted.content)
