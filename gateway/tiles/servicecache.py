"""Which TileMatrices of a TileMatrixSet an upstream's own tile cache can serve.

A cached image service describes its cache in the service info (ArcGIS REST "Image
Service": ``singleFusedMapCache``, ``tileInfo``; arcgis-rest.md section 2.1): tile ``rows``
and ``cols`` in pixels, the ``origin`` (top-left corner, x/y order), the ``spatialReference``
and ``lods`` (``level``, ``resolution`` in CRS units per pixel). A TileMatrix of a set is
served from ``tile/<level>/<row>/<col>`` when the set's CRS is the cache's, its tiles have the
cache's size, its top-left corner is the cache's origin and its cell size is the ``level``'s
resolution, both within ``REL_TOLERANCE``: then TileRow/TileCol are the cache's row/column.
Esri truncates the Web Mercator origin to ...342787 where TMS 2.0 has ...342789244, a
difference of 1e-13 relative, well inside the tolerance and far below a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.grids import Grid

# Relative tolerance on resolutions and origin coordinates (the 1e-9).
REL_TOLERANCE = 1e-9
# Web Mercator's codes in the wild, all EPSG:3857 (arcgis-rest.md section 1.3).
_WEB_MERCATOR_WKIDS = frozenset((3857, 102100, 102113, 900913))


def _epsg(spatial_reference: Any) -> int | None:
    """The EPSG code of an ArcGIS spatialReference JSON (``latestWkid`` first, then ``wkid``;
    Web Mercator aliases as 3857), or ``None``."""
    if not isinstance(spatial_reference, Mapping):
        return None
    for key in ("latestWkid", "wkid"):
        code = spatial_reference.get(key)
        if isinstance(code, int) and not isinstance(code, bool):
            return 3857 if code in _WEB_MERCATOR_WKIDS else code
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=0.0)


def cache_levels(info: Mapping[str, Any], grid: Grid) -> dict[int, int]:
    """``{TileMatrix: level}`` of the TileMatrices of ``grid`` (a base set, scale 1) that the
    service's cache described by ``info`` (its service info) can serve; empty when the service
    is not cached (``singleFusedMapCache`` not true), its ``tileInfo`` is malformed, or
    nothing matches (module docstring)."""
    tile_info = info.get("tileInfo")
    if info.get("singleFusedMapCache") is not True or not isinstance(tile_info, Mapping):
        return {}
    try:
        rows, cols = int(tile_info["rows"]), int(tile_info["cols"])
        origin_x = float(tile_info["origin"]["x"])
        origin_y = float(tile_info["origin"]["y"])
        lods = [(int(lod["level"]), float(lod["resolution"])) for lod in tile_info["lods"]]
    except (KeyError, TypeError, ValueError):
        return {}
    epsg = _epsg(tile_info.get("spatialReference") or info.get("spatialReference"))
    if epsg != grid.epsg or rows != grid.tile_size or cols != grid.tile_size:
        return {}
    levels: dict[int, int] = {}
    for z in range(grid.minzoom, grid.maxzoom + 1):
        # The top-left tile gives the matrix's corner and cell size in x/y order.
        left, bottom, right, top = grid.bbox(z, 0, 0)
        span_x, span_y = (right - left) / cols, (top - bottom) / rows
        if not (_close(left, origin_x) and _close(top, origin_y)):
            continue
        for level, resolution in lods:
            if _close(span_x, resolution) and _close(span_y, resolution):
                levels[z] = level
                break
    return levels
