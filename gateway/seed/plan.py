"""The metatiles of a seed, in walk order: TileMatrix by TileMatrix, then metatile rows, then
columns, aligned as the serving replicas align them."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

from gateway.errors import (
    TileOutOfRange,
    UnknownLayer,
    UnknownTileMatrixSet,
    UnsupportedFormat,
    VariantRefused,
)
from gateway.grids import MetaTile, TileLimits
from gateway.seed.options import SeedError, SeedOptions
from gateway.tiles import TilePipeline, TileRequest


@dataclass(frozen=True)
class _Level:
    """The metatiles of TileMatrix ``z`` met by the seed: ``cols`` x ``rows`` of them, the first
    being metatile column ``first_col``, row ``first_row`` (in metatiles, not tiles); ``offset``
    is the walk index of that first one."""

    z: int
    first_col: int
    first_row: int
    cols: int
    rows: int
    offset: int

    @property
    def count(self) -> int:
        return self.cols * self.rows


def seed_request(pipeline: TilePipeline, options: SeedOptions) -> TileRequest:
    """Check ``options`` against the configuration, without I/O; the request of the first
    TileMatrix's tile 0/0 (base TileMatrixSet, scale, extension and variant resolved) that
    every metatile of the seed is addressed from.

    Raises ``SeedError`` for an unknown layer or TileMatrixSet, a format, style or time the
    layer does not offer, or a zoom range outside the layer's.
    """
    first, last = options.zoom
    if first > last:
        raise SeedError(f"zoom {first}-{last}: the first level must not be above the second")
    try:
        template = pipeline.resolve(
            options.layer,
            options.tms,
            first,
            0,
            0,
            lambda formats: options.format or formats[0],
            style=options.style,
            time=options.time,
        )
    except UnknownLayer:
        known = ", ".join(pipeline.layers)
        raise SeedError(f"unknown layer {options.layer!r} (configured: {known})") from None
    except UnknownTileMatrixSet as exc:
        raise SeedError(
            f"layer {options.layer!r} is not served in TileMatrixSet {options.tms!r} "
            f"(it is in: {', '.join(exc.offered)})"
        ) from None
    except UnsupportedFormat as exc:
        raise SeedError(str(exc)) from None
    except TileOutOfRange as exc:
        raise _outside(options, exc.low, exc.high) from None
    except VariantRefused as exc:
        raise SeedError(f"layer {options.layer!r}: {exc}") from None
    layer = pipeline.layers[options.layer]
    low, high = layer.zoom_range(layer.grids[options.tms])
    if last > high:
        raise _outside(options, low, high)
    return template


def _outside(options: SeedOptions, low: int, high: int) -> SeedError:
    first, last = options.zoom
    return SeedError(
        f"zoom {first}-{last} is outside {low}-{high}, the TileMatrix range of layer "
        f"{options.layer!r} in {options.tms}"
    )


def _intersect(a: TileLimits | None, b: TileLimits | None) -> TileLimits | None:
    if a is None or b is None:
        return None
    limits = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return limits if limits[0] <= limits[1] and limits[2] <= limits[3] else None


class SeedPlan:
    """The metatiles of a seed in walk order, addressed by index ``0 .. total - 1``.

    ``template`` comes from ``seed_request``; ``zoom`` is the inclusive TileMatrix range and
    ``bbox`` (west, south, east, north, degrees) narrows the layer's data extent. Only
    metatiles holding a tile with data are walked: tiles outside the data extent are answered
    without the cache. Nothing is enumerated up front, so a plan of millions costs nothing.
    """

    def __init__(
        self,
        pipeline: TilePipeline,
        template: TileRequest,
        zoom: tuple[int, int],
        bbox: tuple[float, float, float, float] | None,
    ) -> None:
        self.pipeline = pipeline
        self.template = template
        layer = pipeline.layers[template.layer]
        grid = pipeline.grids[template.tms]
        # The same size metatile_of uses (upstream's maximum image included), so the columns
        # and rows here are the pipeline's metatile boundaries.
        self.meta_size = layer.meta_size(grid, template.scale)
        extent = None if bbox is None else grid.extent_from_wgs84(bbox)
        cols, rows = self.meta_size
        self.levels: list[_Level] = []
        offset = 0
        for z in range(zoom[0], zoom[1] + 1):
            limits = layer.limits(grid, z)
            if bbox is not None:
                limits = _intersect(limits, None if extent is None else grid.limits(extent, z))
            if limits is None:
                continue
            min_col, max_col, min_row, max_row = limits
            level = _Level(
                z,
                min_col // cols,
                min_row // rows,
                max_col // cols - min_col // cols + 1,
                max_row // rows - min_row // rows + 1,
                offset,
            )
            self.levels.append(level)
            offset += level.count
        self.total = offset
        self._offsets = [level.offset for level in self.levels]

    def metatile(self, index: int) -> tuple[TileRequest, MetaTile]:
        """The request of the first tile of metatile ``index`` and the metatile itself."""
        level = self.levels[bisect.bisect_right(self._offsets, index) - 1]
        row, col = divmod(index - level.offset, level.cols)
        request = replace(
            self.template,
            z=level.z,
            x=(level.first_col + col) * self.meta_size[0],
            y=(level.first_row + row) * self.meta_size[1],
        )
        return request, self.pipeline.metatile_of(request)
