"""TileMatrixSets (OGC 17-083r4, "TMS 2.0") the gateway serves, through morecantile.

A tile is addressed by TileMatrix (zoom), TileCol and TileRow, counted from the top-left
corner of the matrix; XYZ ``z/x/y`` is WebMercatorQuad ``TileMatrix/TileCol/TileRow``.

Every set ``<id>`` also exists as ``<id>_2x``: the same matrices with 512-pixel tiles and
halved scale denominators, because a WMTS GetTile image must be TileWidth wide
(ogc-interop.md section 5). Both share one cache entry per tile: the ``_2x`` tile is the base
tile at ``scale`` 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import morecantile
from morecantile import TileMatrixSet
from pyproj import CRS, Transformer

from gateway.config import TileMatrixSetConfig

RETINA = "_2x"
WEB_MERCATOR_QUAD = "WebMercatorQuad"
_BUILTIN_BASES = ("WebMercatorQuad", "WorldCRS84Quad", "WGS1984Quad")
# A limit computed from an extent that touches a tile edge must not take the neighbour tile.
_EDGE = 1e-9


TileLimits = tuple[int, int, int, int]
"""``(min_col, max_col, min_row, max_row)``, inclusive, of one TileMatrix."""


@dataclass(frozen=True)
class Grid:
    """One advertised TileMatrixSet.

    ``definition`` is its morecantile TileMatrixSet (with 512-pixel tiles for a ``_2x`` set),
    ``base`` the identifier of the set whose tiles it shares, ``scale`` 1 or 2, ``epsg`` the
    EPSG code sent as bboxSR/imageSR (CRS84 is sent as 4326, whose exportImage bbox is lon/lat
    too), and ``tile_size`` the tile width and height in pixels.
    """

    identifier: str
    definition: TileMatrixSet
    base: str
    scale: int
    epsg: int
    tile_size: int
    _origins: dict[int, tuple[float, float, float, float]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def minzoom(self) -> int:
        """The first TileMatrix identifier (an integer here)."""
        return self.definition.minzoom

    @property
    def maxzoom(self) -> int:
        """The last TileMatrix identifier."""
        return self.definition.maxzoom

    @cached_property
    def matrix_sizes(self) -> dict[int, tuple[int, int]]:
        """``(matrixWidth, matrixHeight)`` in tiles of every TileMatrix, by identifier.

        Kept as plain ints because every tile request checks them, and morecantile's
        ``matrix(z)`` builds its answer anew on each call.
        """
        return {
            z: (self.definition.matrix(z).matrixWidth, self.definition.matrix(z).matrixHeight)
            for z in range(self.definition.minzoom, self.definition.maxzoom + 1)
        }

    @cached_property
    def crs(self) -> CRS:
        """The CRS of the set (pyproj), in its authority's axis order."""
        return self.definition.crs._pyproj_crs

    @cached_property
    def matrix_ids(self) -> dict[str, int]:
        """The zoom level of each TileMatrix identifier (``"5"`` -> 5 in the OGC sets)."""
        return {
            self.definition.matrix(z).id: z
            for z in range(self.definition.minzoom, self.definition.maxzoom + 1)
        }

    def bbox(self, z: int, x: int, y: int) -> tuple[float, float, float, float]:
        """The tile's ``(xmin, ymin, xmax, ymax)`` in CRS units, easting/northing (lon/lat) order.

        That is the order of an exportImage ``bbox`` whatever the CRS's axis order
        (arcgis-rest.md section 2.2); the tile is assumed valid (see ``check``).
        """
        bounds = self.definition.xy_bounds(morecantile.Tile(x, y, z))
        return (bounds.left, bounds.bottom, bounds.right, bounds.top)

    def _origin(self, z: int) -> tuple[float, float, float, float]:
        """``(left, top, tile span x, tile span y)`` of TileMatrix ``z`` in x/y order."""
        origin = self._origins.get(z)
        if origin is None:
            left, bottom, right, top = self.bbox(z, 0, 0)
            origin = self._origins[z] = (left, top, right - left, top - bottom)
        return origin

    def limits(self, extent: tuple[float, float, float, float], z: int) -> TileLimits | None:
        """The tiles of TileMatrix ``z`` that intersect ``extent`` (x/y order, CRS units), as
        WMTS TileMatrixLimits (07-057r7 section 7.2.4.6.3); ``None`` when none does."""
        left, top, span_x, span_y = self._origin(z)
        width, height = self.matrix_sizes[z]
        xmin, ymin, xmax, ymax = extent
        min_col = max(0, math.floor((xmin - left) / span_x + _EDGE))
        max_col = min(width - 1, math.ceil((xmax - left) / span_x - _EDGE) - 1)
        min_row = max(0, math.floor((top - ymax) / span_y + _EDGE))
        max_row = min(height - 1, math.ceil((top - ymin) / span_y - _EDGE) - 1)
        if min_col > max_col or min_row > max_row:
            return None
        return (min_col, max_col, min_row, max_row)

    def extent_from_wgs84(
        self, bounds: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float] | None:
        """``bounds`` (west, south, east, north in degrees) in this set's CRS, x/y order,
        clipped to the set's own geographic area; ``None`` when they do not meet."""
        area = self.definition.bbox  # lon/lat of the whole matrix set
        west, south = max(bounds[0], area.left), max(bounds[1], area.bottom)
        east, north = min(bounds[2], area.right), min(bounds[3], area.top)
        if west >= east or south >= north:
            return None
        to_crs = Transformer.from_crs(CRS.from_epsg(4326), self.crs, always_xy=True)
        return to_crs.transform_bounds(west, south, east, north, densify_pts=21)


def parse_zoom(text: str) -> tuple[int, int]:
    """``"a-b"`` (or one level ``"a"``) as ``(a, b)``. Raises ``ValueError`` saying why."""
    low, _, high = text.partition("-")
    if not low.strip().isdigit() or (high and not high.strip().isdigit()):
        raise ValueError(f"zoom {text!r} is not a range like 3-8")
    levels = (int(low), int(high or low))
    if levels[0] > levels[1]:
        raise ValueError(f"zoom {text!r}: the first level must not be above the second")
    return levels


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"W,S,E,N"`` in degrees (lon/lat) as a tuple. Raises ``ValueError`` saying why."""
    try:
        west, south, east, north = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"bbox {text!r} is not W,S,E,N in degrees") from None
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise ValueError(f"bbox {text!r}: need -180 <= W < E <= 180 and -90 <= S < N <= 90")
    return west, south, east, north


def _retina(definition: TileMatrixSet) -> TileMatrixSet:
    """``definition`` with 512-pixel tiles over the same matrices: each scale denominator and
    cell size halved, the matrix sizes and origins kept."""
    model = definition.model_dump(exclude_none=True)
    model["id"] = f"{definition.id}{RETINA}"
    model["title"] = f"{definition.title or definition.id}, 512-pixel tiles"
    model.pop("uri", None)
    model.pop("wellKnownScaleSet", None)
    for matrix in model["tileMatrices"]:
        matrix["tileWidth"] *= 2
        matrix["tileHeight"] *= 2
        matrix["scaleDenominator"] /= 2
        matrix["cellSize"] /= 2
    return TileMatrixSet.model_validate(model)


def _custom(identifier: str, config: TileMatrixSetConfig) -> TileMatrixSet:
    return TileMatrixSet.custom(
        list(config.extent),
        CRS.from_user_input(config.crs),
        tile_width=config.tile_size,
        tile_height=config.tile_size,
        matrix_scale=[config.matrix_width, config.matrix_height],
        minzoom=config.minzoom,
        maxzoom=config.maxzoom,
        id=identifier,
        title=config.title or identifier,
    )


def _epsg(definition: TileMatrixSet) -> int:
    crs: CRS = definition.crs._pyproj_crs
    if crs.equals(CRS.from_user_input("OGC:CRS84")):
        return 4326
    code = crs.to_epsg()
    if code is None:
        raise ValueError(f"{definition.id}: its CRS has no EPSG code to send as bboxSR/imageSR")
    return code


class GridRegistry:
    """Every TileMatrixSet the gateway knows: the built-ins and the config's custom ones, each
    with its ``_2x`` variant. Look one up with ``registry[identifier]`` (``KeyError`` if
    unknown)."""

    def __init__(self, custom: dict[str, TileMatrixSetConfig] | None = None) -> None:
        bases = {name: morecantile.tms.get(name) for name in _BUILTIN_BASES}
        bases.update({name: _custom(name, config) for name, config in (custom or {}).items()})
        self._grids: dict[str, Grid] = {}
        for name, definition in bases.items():
            epsg = _epsg(definition)
            size = definition.matrix(definition.minzoom).tileWidth
            self._grids[name] = Grid(name, definition, name, 1, epsg, size)
            self._grids[f"{name}{RETINA}"] = Grid(
                f"{name}{RETINA}", _retina(definition), name, 2, epsg, size * 2
            )

    def __getitem__(self, identifier: str) -> Grid:
        return self._grids[identifier]

    def __contains__(self, identifier: object) -> bool:
        return identifier in self._grids


@dataclass(frozen=True, slots=True)
class MetaTile:
    """A block of ``cols`` x ``rows`` tiles of TileMatrix ``z`` starting at TileCol ``col0``,
    TileRow ``row0``, fetched as one image of ``width`` x ``height`` pixels covering ``bbox``
    (x/y order, CRS units, buffer included). Tile ``(col0, row0)`` starts ``offset_x``,
    ``offset_y`` pixels into the image; each tile is ``tile_px`` pixels square."""

    z: int
    col0: int
    row0: int
    cols: int
    rows: int
    bbox: tuple[float, float, float, float]
    width: int
    height: int
    offset_x: int
    offset_y: int
    tile_px: int

    def crops(self) -> list[tuple[int, int, tuple[int, int, int, int]]]:
        """``(TileCol, TileRow, (left, top, right, bottom))`` pixel boxes of every tile."""
        return [
            (
                self.col0 + i,
                self.row0 + j,
                (
                    self.offset_x + i * self.tile_px,
                    self.offset_y + j * self.tile_px,
                    self.offset_x + (i + 1) * self.tile_px,
                    self.offset_y + (j + 1) * self.tile_px,
                ),
            )
            for j in range(self.rows)
            for i in range(self.cols)
        ]


def metatile(
    grid: Grid, z: int, x: int, y: int, size: tuple[int, int], buffer: int, scale: int
) -> MetaTile:
    """The metatile of ``grid`` holding tile ``z/x/y``: ``size`` (columns, rows) tiles aligned
    on multiples of ``size``, clipped at the matrix edges, with ``buffer`` pixels added on every
    side that is not a matrix edge (MapProxy's meta_size/meta_buffer). ``scale`` multiplies the
    tile's pixels."""
    matrix_width, matrix_height = grid.matrix_sizes[z]
    col0, row0 = x - x % size[0], y - y % size[1]
    cols = min(size[0], matrix_width - col0)
    rows = min(size[1], matrix_height - row0)
    left, _, _, top = grid.bbox(z, col0, row0)
    _, bottom, right, _ = grid.bbox(z, col0 + cols - 1, row0 + rows - 1)
    tile_px = grid.tile_size * scale
    resolution_x = (right - left) / (cols * tile_px)
    resolution_y = (top - bottom) / (rows * tile_px)
    pad_left = buffer if col0 > 0 else 0
    pad_right = buffer if col0 + cols < matrix_width else 0
    pad_top = buffer if row0 > 0 else 0
    pad_bottom = buffer if row0 + rows < matrix_height else 0
    return MetaTile(
        z=z,
        col0=col0,
        row0=row0,
        cols=cols,
        rows=rows,
        bbox=(
            left - pad_left * resolution_x,
            bottom - pad_bottom * resolution_y,
            right + pad_right * resolution_x,
            top + pad_top * resolution_y,
        ),
        width=cols * tile_px + pad_left + pad_right,
        height=rows * tile_px + pad_top + pad_bottom,
        offset_x=pad_left,
        offset_y=pad_top,
        tile_px=tile_px,
    )
