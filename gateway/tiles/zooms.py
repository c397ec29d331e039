"""A layer's default zoom range from its service's pixel size.

An ArcGIS Image Service reports its native cell size as ``pixelSizeX`` / ``pixelSizeY`` in
the units of its ``spatialReference`` (ArcGIS REST "Image Service"). Tiles finer than that
show nothing new, so the last TileMatrix a layer serves by default is the first one whose
cell size is at most the native one ("just finer"), plus a configurable ``overzoom``. The
native cell size is converted into the TileMatrixSet's CRS at the centre of the service's
extent (a Web Mercator cell over a UTM raster at 40° N is 1/cos(40°) times the metres on the
ground), along the x axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pyproj import Transformer
from pyproj.exceptions import CRSError, ProjError

from gateway.grids import Grid
from gateway.sources.imageserver import service_crs

# The last TileMatrix when the service's pixel size is unknown (the upstream did not answer).
FALLBACK_MAXZOOM = 22
# A TileMatrix whose cell is finer than the native one by less than this still counts as
# "just finer" (cell sizes are computed in floating point).
_REL_TOLERANCE = 1e-9


def native_resolution(info: Mapping[str, Any], grid: Grid) -> float | None:
    """The service's ``pixelSizeX`` in ``grid``'s CRS units, measured along x at the centre of
    its ``extent``; ``None`` when the info lacks them or they cannot be projected there."""
    extent = info.get("extent")
    pixel = info.get("pixelSizeX")
    if not isinstance(extent, Mapping) or not isinstance(pixel, int | float) or pixel <= 0:
        return None
    try:
        xmin, ymin, xmax, ymax = (float(extent[key]) for key in ("xmin", "ymin", "xmax", "ymax"))
        crs = service_crs(extent.get("spatialReference") or info.get("spatialReference") or {})
        to_grid = Transformer.from_crs(crs, grid.crs, always_xy=True)
        cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
        (x0, x1), (y0, y1) = to_grid.transform([cx - pixel / 2, cx + pixel / 2], [cy, cy])
    except (KeyError, TypeError, ValueError, CRSError, ProjError):
        return None
    size = math.hypot(x1 - x0, y1 - y0)
    return size if math.isfinite(size) and size > 0 else None


def native_zoom(grid: Grid, resolution: float) -> int:
    """The first TileMatrix of ``grid`` whose cell size (x, at scale 1) is at most
    ``resolution`` (its CRS units); the last one when every cell is coarser."""
    for z in range(grid.minzoom, grid.maxzoom + 1):
        xmin, _, xmax, _ = grid.bbox(z, 0, 0)
        if (xmax - xmin) / grid.tile_size <= resolution * (1 + _REL_TOLERANCE):
            return z
    return grid.maxzoom
