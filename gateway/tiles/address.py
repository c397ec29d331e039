"""One tile address for every front, ``seed`` and ``purge``: (layer, TileMatrixSet, TileMatrix,
TileRow, TileCol, format, scale) checked against the configuration, without I/O.

Each front parses its own URL grammar (XYZ ``z/x/y@2x.png``, WMTS KVP or RESTful, OGC API
paths) and calls ``resolve``; the typed errors it raises (``gateway.errors``) carry what was
wrong, and each front words them in its own error format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import (
    AddressPart,
    InvalidTileAddress,
    TileOutOfRange,
    UnknownLayer,
    UnknownTileMatrixSet,
    UnsupportedFormat,
)

if TYPE_CHECKING:
    from gateway.tiles.layer import Layer

# A tile address part as text: ASCII digits only (``str.isdigit`` also takes "²"); WMTS allows
# a sign too, and answers a negative index with TileOutOfRange.
_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"-?[0-9]+")
# Digits beyond this are out of any matrix (2**31 tiles a side): never turned into an int,
# whose conversion time grows with the length and is refused past 4300 digits.
_MAX_DIGITS = 12


@dataclass(frozen=True, slots=True)
class TileRequest:
    """One tile of one layer: the base TileMatrixSet ``tms`` (never a ``_2x`` variant: those are
    ``scale`` 2 of their base), TileMatrix ``z``, TileCol ``x``, TileRow ``y``, extension
    ``ext`` (``png``/``jpg``), ``scale`` (1 for the set's own tile size, 2 for twice the
    pixels over the same bbox) and ``variant``, the normalised token of its style and time
    (``tiles.variants``; empty for the layer's default)."""

    layer: str
    tms: str
    z: int
    x: int
    y: int
    ext: str
    scale: int = 1
    variant: str = ""


def shown_number(given: int | str) -> str:
    """A tile address part as messages show it: ``given`` as sent, or its first 12 characters
    and ``...`` for a number longer than any matrix index (a client may send thousands of
    digits)."""
    text = str(given)
    return text if len(text) <= _MAX_DIGITS else text[:_MAX_DIGITS] + "..."


def _number(part: AddressPart, value: int | str, signed: bool) -> int | None:
    """``value`` as an int; ``None`` for a number too long to be in any matrix.

    Raises ``InvalidTileAddress`` for text that is not a whole number (with ``signed``, a
    leading minus is allowed).
    """
    if isinstance(value, int):
        return value
    if not (_SIGNED if signed else _UNSIGNED).fullmatch(value):
        raise InvalidTileAddress(part, value)
    return None if len(value.lstrip("-")) > _MAX_DIGITS else int(value)


class TileAddresses:
    """The tile addresses of ``layers`` (ready layers by name): ``resolve`` checks one."""

    def __init__(self, layers: Mapping[str, Layer]) -> None:
        self.layers = layers

    def resolve(
        self,
        layer: str,
        tms: str,
        tile_matrix: int | str,
        tile_row: int | str,
        tile_col: int | str,
        ext: str | Callable[[tuple[str, ...]], str],
        scale: int = 1,
        *,
        within_limits: bool = False,
        wmts: bool = False,
        style: str | None = None,
        time: str | None = None,
    ) -> TileRequest:
        """The checked ``TileRequest`` of a tile address.

        ``tms`` is any TileMatrixSet identifier the layer is served in (a ``_2x`` set becomes its
        base at twice the ``scale``); ``tile_matrix`` is a TileMatrix identifier (text, as WMTS
        sends it) or its zoom level; ``tile_row``/``tile_col`` count from the top-left tile, as
        text (ASCII digits) or ints; with ``wmts`` they are WMTS values: ``tile_matrix`` must be
        one of the set's TileMatrix identifiers exactly (07-057r7 section 7.2.4.6.3: "03" is not
        "3"), and TileRow/TileCol may carry a minus (then out of range). ``ext`` is the
        tile format (``png``/``jpg``), or a function choosing it from the layer's formats (content
        negotiation), which may raise a front's own error. With ``within_limits`` the tile must
        lie inside the layer's TileMatrixSetLimits (the tiles holding data, which WMTS and OGC API
        - Tiles advertise); without, any tile of the layer's matrices is valid (XYZ serves empty
        tiles outside). ``style`` and ``time`` choose a variant (``LayerVariants.token``);
        ``None`` or empty for the default.

        Checks in this order and raises, for the first fault: ``UnknownLayer``;
        ``UnknownTileMatrixSet`` (with ``within_limits`` also for a set where the layer has no
        data at all); ``UnsupportedFormat``; ``InvalidTileAddress`` (TileMatrix, TileRow, TileCol
        that are not whole numbers, in that order); ``TileOutOfRange`` for the TileMatrix (outside
        the layer's zoom range, or with no data), then the TileRow, then the TileCol (outside the
        matrix, then outside the limits); then ``VariantRefused`` for a style or time the
        layer does not offer.
        """
        found = self.layers.get(layer)
        if found is None:
            raise UnknownLayer(layer)
        grid = found.grids.get(tms)
        if grid is None or (within_limits and not found.tile_matrix_set_limits(grid)):
            served = found.advertised_grids() if within_limits else tuple(found.grids)
            raise UnknownTileMatrixSet(layer, tms, served)
        formats = found.formats
        if not isinstance(ext, str):
            ext = ext(formats)
        if ext not in formats:
            raise UnsupportedFormat(layer, ext, formats)
        if isinstance(tile_matrix, str) and tile_matrix in grid.matrix_ids:
            z: int | None = grid.matrix_ids[tile_matrix]
        elif wmts:
            raise InvalidTileAddress("TileMatrix", str(tile_matrix))
        else:
            z = _number("TileMatrix", tile_matrix, wmts)
        row = _number("TileRow", tile_row, wmts)
        col = _number("TileCol", tile_col, wmts)
        low, high = found.zoom_range(grid)
        if z is None or not low <= z <= high:
            raise TileOutOfRange(
                f"TileMatrix {shown_number(tile_matrix) if z is None else z} is outside "
                f"{low}..{high} "
                f"for {layer!r} in {tms}",
                "TileMatrix",
                value=z,
                low=low,
                high=high,
            )
        width, height = grid.matrix_sizes[z]
        limits = found.limits(grid, z) if within_limits else None
        if within_limits and limits is None:
            raise TileOutOfRange(
                f"TileMatrix {z} of {tms} holds no data of {layer!r}",
                "TileMatrix",
                value=z,
                low=low,
                high=high,
                scope="limits",
            )
        rows = None if limits is None else (limits[2], limits[3])
        cols = None if limits is None else (limits[0], limits[1])
        y = _index("TileRow", row, tile_row, height, rows, z, layer)
        x = _index("TileCol", col, tile_col, width, cols, z, layer)
        variant = "" if style is None and time is None else found.variants.token(style, time)
        return TileRequest(layer, grid.base, z, x, y, ext, grid.scale * scale, variant)


def _index(
    part: AddressPart,
    value: int | None,
    given: int | str,
    size: int,
    limits: tuple[int, int] | None,
    z: int,
    layer: str,
) -> int:
    """``value`` (the TileRow or TileCol ``given``) when it is inside ``limits`` (inclusive,
    when given: they lie within the matrix), else inside a matrix ``size`` tiles long; else
    raises ``TileOutOfRange``."""
    if limits is not None:
        if value is None or not limits[0] <= value <= limits[1]:
            raise TileOutOfRange(
                f"{part} {shown_number(given) if value is None else value} is outside "
                f"{limits[0]}..{limits[1]} "
                f"of the TileMatrixSetLimits of {layer!r} at TileMatrix {z}",
                part,
                value=value,
                low=limits[0],
                high=limits[1],
                z=z,
                scope="limits",
            )
        return value
    if value is None or not 0 <= value < size:
        raise TileOutOfRange(
            f"{part} {shown_number(given) if value is None else value} is outside 0..{size - 1} "
            f"at TileMatrix {z}",
            part,
            value=value,
            low=0,
            high=size - 1,
            z=z,
        )
    return value
