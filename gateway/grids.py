"""TileMatrixSets (OGC 17-083r4) the gateway serves, through morecantile.

A tile is addressed by TileMatrix (zoom), TileCol and TileRow, counted from the top-left
corner of the matrix; XYZ ``z/x/y`` is WebMercatorQuad ``TileMatrix/TileCol/TileRow``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import morecantile
from morecantile import TileMatrixSet


class TileOutOfRange(LookupError):
    """A TileMatrix, TileRow or TileCol outside the TileMatrixSet (or the layer's zoom range)."""


@dataclass(frozen=True)
class Grid:
    """One TileMatrixSet: tile -> bounding box in the set's CRS.

    ``tms`` is the morecantile definition, ``epsg`` the EPSG code of its CRS, ``tile_size`` the
    nominal tile width and height in pixels.
    """

    identifier: str
    tms: TileMatrixSet
    epsg: int
    tile_size: int

    def check(self, z: int, x: int, y: int) -> None:
        """Raise ``TileOutOfRange`` unless TileMatrix ``z`` holds TileCol ``x``, TileRow ``y``."""
        if not self.tms.minzoom <= z <= self.tms.maxzoom:
            raise TileOutOfRange(f"TileMatrix {z} is not in {self.identifier}")
        matrix = self.tms.matrix(z)
        if not 0 <= x < matrix.matrixWidth:
            raise TileOutOfRange(f"TileCol {x} is outside 0..{matrix.matrixWidth - 1} at zoom {z}")
        if not 0 <= y < matrix.matrixHeight:
            raise TileOutOfRange(f"TileRow {y} is outside 0..{matrix.matrixHeight - 1} at zoom {z}")

    def bbox(self, z: int, x: int, y: int) -> tuple[float, float, float, float]:
        """The tile's ``(xmin, ymin, xmax, ymax)`` in CRS units, easting/northing order.

        For WebMercatorQuad these are metres of EPSG:3857 (arcgis-rest.md section 2.2). The
        tile is assumed valid (see ``check``).
        """
        bounds = self.tms.xy_bounds(morecantile.Tile(x, y, z))
        return (bounds.left, bounds.bottom, bounds.right, bounds.top)


@cache
def get_grid(identifier: str) -> Grid:
    """The built-in TileMatrixSet named ``identifier`` (e.g. ``WebMercatorQuad``).

    Raises ``KeyError`` for an unknown identifier.
    """
    try:
        tms = morecantile.tms.get(identifier)
    except morecantile.errors.InvalidIdentifier:
        raise KeyError(identifier) from None
    epsg = tms.crs.to_epsg()
    if epsg is None:
        raise KeyError(f"{identifier} has no EPSG code")
    return Grid(identifier, tms, epsg, tms.matrix(tms.minzoom).tileWidth)


WEB_MERCATOR_QUAD = "WebMercatorQuad"
