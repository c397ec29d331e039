"""Elevation tiles for 3D maps: float heights from exportImage encoded as Mapbox Terrain-RGB or
Terrarium PNG tiles, the two encodings MapLibre GL's ``raster-dem`` sources read.

The gateway asks the upstream for a metatile of 32-bit float heights (``format=tiff``,
``pixelType=F32``, ``noData`` set to ``NODATA``: ArcGIS REST "Export Image"), cuts it and
encodes each tile; lossy formats never come in between.

Encodings (heights in metres, pixels ``R``, ``G``, ``B`` as 0-255 integers):

``terrain-rgb``  height = -10000 + (R * 256 * 256 + G * 256 + B) * 0.1  (Mapbox "Terrain-RGB
                 v1" documentation; MapLibre ``encoding: "mapbox"``): 0.1 m steps from
                 -10000 m to 1667721.5 m.
``terrarium``    height = R * 256 + G + B / 256 - 32768  (Tilezen joerd "terrarium" format,
                 the AWS Terrain Tiles; MapLibre ``encoding: "terrarium"``): 1/256 m steps from
                 -32768 m to 32767.996 m.

Heights are rounded to the nearest step and clipped to the encoding's range. Neither encoding
defines a no-data value, and MapLibre reads every pixel as a height (an all-zero pixel would be
a 10 km or 32 km pit; a transparent one reads as all-zero once the browser premultiplies its
alpha), so pixels without data and tiles outside the data extent are encoded as height 0 (sea
level), opaque: this gateway's convention.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

import numpy as np
from PIL import Image

from gateway.imaging import UndecodableImage

# Tile format (LayerConfig.formats) -> the TileJSON / MapLibre ``encoding`` of its tiles.
ENCODINGS: Final[dict[str, str]] = {"terrain-rgb": "mapbox", "terrarium": "terrarium"}
# The value exportImage is asked to fill pixels without data with: the lowest float32, a usual
# float no-data value that no terrain reaches.
NODATA: Final = float(np.finfo(np.float32).min)
# TIFF tag in which GDAL (and so ArcGIS) writes a band's no-data value, as ASCII.
_GDAL_NODATA_TAG: Final = 42113
# Every encoded value fits 24 bits (R, G, B).
_MAX_VALUE: Final = 2**24 - 1
# (offset in metres, steps per metre) of each encoding: value = round((height + offset) * steps).
_SCALES: Final[dict[str, tuple[float, float]]] = {
    "terrain-rgb": (10000.0, 10.0),
    "terrarium": (32768.0, 256.0),
}


def export_params() -> dict[str, str]:
    """The exportImage parameters, besides ``format=tiff``, of a metatile of heights: 32-bit
    float pixels and ``NODATA`` where the service has no data (ArcGIS REST "Export Image":
    ``pixelType``, ``noData``)."""
    return {"pixelType": "F32", "noData": repr(NODATA)}


def read_heights(image: bytes, size: tuple[int, int]) -> np.ndarray:
    """The heights of a single-band float TIFF as a ``(height, width)`` float64 array, NaN
    where there is no data: ``NODATA``, the TIFF's GDAL no-data tag when it has one, and
    values that are not finite.

    Raises ``UndecodableImage`` when ``image`` does not decode completely, is not one band of
    32-bit floats (Pillow mode ``F``), or is not ``size`` (width, height) pixels.
    """
    try:
        with Image.open(io.BytesIO(image)) as opened:
            opened.load()
            if opened.mode != "F":
                raise UndecodableImage(f"a {opened.mode} image, not one band of float32 heights")
            if opened.size != size:
                found = opened.size
                raise UndecodableImage(f"{found[0]} x {found[1]} pixels, not {size[0]} x {size[1]}")
            tag = opened.tag_v2.get(_GDAL_NODATA_TAG) if hasattr(opened, "tag_v2") else None
            heights = np.asarray(opened, dtype=np.float64)
    except UndecodableImage:
        raise
    # Pillow reports bad input with many types (OSError, SyntaxError, EOFError, struct.error...).
    except Exception as exc:
        raise UndecodableImage(str(exc) or type(exc).__name__) from None
    missing = ~np.isfinite(heights) | (heights == np.float32(NODATA))
    nodata = _tag_value(tag)
    if nodata is not None:
        missing |= heights == np.float32(nodata)
    return np.where(missing, np.nan, heights)


def _tag_value(tag: object) -> float | None:
    """The number in a GDAL no-data tag (ASCII, e.g. ``"-9999"`` or ``"nan"``), else ``None``."""
    text = tag[0] if isinstance(tag, tuple) and tag else tag
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        value = float(str(text).strip("\x00 "))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def encode_heights(heights: np.ndarray, encoding: str) -> bytes:
    """``heights`` (a ``(rows, cols)`` array in metres, NaN for no data) as an opaque RGB PNG
    in ``encoding`` (``terrain-rgb`` or ``terrarium``, see the module's formulas); no data is
    height 0. Raises ``KeyError`` for another encoding."""
    offset, steps = _SCALES[encoding]
    filled = np.nan_to_num(heights, nan=0.0)
    values = np.clip(np.rint((filled + offset) * steps), 0, _MAX_VALUE).astype(np.uint32)
    rgb = np.stack([values >> 16, (values >> 8) & 0xFF, values & 0xFF], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def cut_heights(
    image: bytes,
    size: tuple[int, int],
    crops: Sequence[tuple[int, int, int, int]],
    encoding: str,
) -> list[bytes]:
    """Cut a float TIFF metatile of ``size`` (width, height) pixels into tiles, each
    ``(left, top, right, bottom)`` pixel box of ``crops`` encoded in ``encoding``.

    Raises ``UndecodableImage`` (see ``read_heights``).
    """
    heights = read_heights(image, size)
    return [
        encode_heights(heights[top:bottom, left:right], encoding)
        for left, top, right, bottom in crops
    ]


@lru_cache(maxsize=16)
def empty_tile(encoding: str, size: int) -> bytes:
    """A ``size`` x ``size`` pixel tile outside the data extent: height 0 everywhere, in
    ``encoding``. Same bytes every time, hence the same ETag."""
    return encode_heights(np.zeros((size, size)), encoding)
