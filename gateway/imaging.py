"""Image work of the gateway: formats, content types, magic bytes, decode checks, metatile
cutting, empty tiles (Pillow). Elevation encodings live in ``gateway.terrain``."""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Final

from PIL import Image, ImageColor

# What the gateway asks exportImage for -> (exportImage ``format``, Content-Type). ``png32``
# keeps the alpha band so areas without data stay transparent; ``jpgpng`` is never asked for
# because its content type varies per request (arcgis-rest.md section 1.1); ``tif`` carries
# float pixels for the elevation encodings (``gateway.terrain``).
EXPORT_FORMATS: Final[dict[str, tuple[str, str]]] = {
    "png": ("png32", "image/png"),
    "jpg": ("jpg", "image/jpeg"),
    "tif": ("tiff", "image/tiff"),
}
# The formats of map pictures (WMTS Format, OGC API media types, the viewer's 2D maps): the
# elevation encodings are PNG files too, but of heights, for MapLibre's raster-dem alone.
MAP_FORMATS: Final = ("png", "jpg", "webp")
# Tile format (``LayerConfig.formats``) -> Content-Type of its tiles. Terrain-RGB and Terrarium
# tiles are PNG images (Mapbox and Tilezen documentation).
MEDIA_TYPES: Final[dict[str, str]] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "terrain-rgb": "image/png",
    "terrarium": "image/png",
}

_MAGIC: Final[dict[str, tuple[bytes, ...]]] = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpg": (b"\xff\xd8\xff",),
    "tif": (b"II*\x00", b"MM\x00*"),
}


def sniff_format(data: bytes) -> str | None:
    """The format (``png``, ``jpg`` or ``tif``) whose signature starts ``data``, else ``None``.

    Signatures: PNG (ISO/IEC 15948 section 5.2), JPEG SOI marker + first marker (ITU T.81),
    TIFF byte order + 42 (TIFF 6.0 section 2, little- and big-endian).
    """
    for ext, magics in _MAGIC.items():
        if data.startswith(magics):
            return ext
    return None


@lru_cache(maxsize=64)
def empty_tile(ext: str, size: int, background: str) -> bytes:
    """A ``size`` x ``size`` pixel tile with nothing on it: fully transparent for ``png`` and
    ``webp``, the ``background`` colour (``#rrggbb``) for ``jpg``, which has no alpha. Same
    bytes every time, hence the same ETag."""
    buffer = io.BytesIO()
    if ext == "png":
        Image.new("RGBA", (size, size), (0, 0, 0, 0)).save(buffer, "PNG", optimize=True)
    elif ext == "webp":
        Image.new("RGBA", (size, size), (0, 0, 0, 0)).save(buffer, "WEBP", lossless=True)
    else:
        Image.new("RGB", (size, size), ImageColor.getrgb(background)).save(buffer, "JPEG")
    return buffer.getvalue()


class UndecodableImage(ValueError):
    """Image bytes that do not decode completely into an image of the expected size;
    ``str()`` says what was wrong (Pillow's reason, or the size found)."""


def decode(image: bytes, size: tuple[int, int] | None) -> Image.Image:
    """``image`` decoded, every pixel of it, and checked to be ``size`` (width, height) pixels
    unless ``size`` is ``None``; the caller closes it.

    Pixel decoding fails on a truncated JPEG or PNG, but stops at the end of a PNG's image data:
    a PNG's chunks are also read to its IEND with their CRCs checked (Pillow ``verify``;
    ISO/IEC 15948 sections 5.3 and 11.2.5). Raises ``UndecodableImage``.
    """
    try:
        if sniff_format(image) == "png":
            with Image.open(io.BytesIO(image)) as chunks:
                chunks.verify()
        opened = Image.open(io.BytesIO(image))
        opened.load()
    # Pillow reports bad input with many types (OSError, SyntaxError, EOFError, struct.error,
    # DecompressionBombError...): from bytes an upstream sent, each means "not an image".
    except Exception as exc:
        raise UndecodableImage(str(exc) or type(exc).__name__) from None
    if size is not None and opened.size != size:
        found = opened.size
        opened.close()
        raise UndecodableImage(f"{found[0]} x {found[1]} pixels, not {size[0]} x {size[1]}")
    return opened


def check_image(image: bytes, size: tuple[int, int] | None) -> None:
    """Raise ``UndecodableImage`` unless ``image`` decodes completely (to ``size`` pixels,
    unless ``None``; see ``decode``); the bytes themselves are left as they are."""
    decode(image, size).close()


def cut_metatile(
    image: bytes,
    size: tuple[int, int],
    crops: list[tuple[int, int, int, int]],
    ext: str,
    *,
    png8: bool,
    jpeg_quality: int,
    background: str,
    webp_quality: int,
) -> list[bytes]:
    """Cut a metatile of ``size`` (width, height) pixels into tiles and encode each in ``ext``.

    ``crops`` are ``(left, top, right, bottom)`` pixel boxes. PNG keeps the alpha band
    (``png8`` quantises to a 256-colour palette, alpha included); JPEG, which has no alpha, is
    composited on ``background`` (``#rrggbb``) and saved at ``jpeg_quality`` (1-100); WebP
    keeps the alpha band and is lossy at ``webp_quality`` (1-100; libwebp's quality factor).
    Raises ``UndecodableImage`` when ``image`` does not decode completely to ``size`` pixels.
    """
    with decode(image, size) as opened:
        if ext != "jpg":
            source = opened if opened.mode == "RGBA" else opened.convert("RGBA")
        elif opened.has_transparency_data:
            flat = Image.new("RGBA", opened.size, (*ImageColor.getrgb(background), 255))
            flat.alpha_composite(opened.convert("RGBA"))
            source = flat.convert("RGB")
        else:
            # An opaque source (a JPEG metatile): nothing to composite, the pixels as they are.
            source = opened if opened.mode == "RGB" else opened.convert("RGB")
        quality = webp_quality if ext == "webp" else jpeg_quality
        return [_encode(source.crop(box), ext, png8, quality) for box in crops]


def _encode(tile: Image.Image, ext: str, png8: bool, quality: int) -> bytes:
    buffer = io.BytesIO()
    if ext == "jpg":
        tile.save(buffer, "JPEG", quality=quality)
    elif ext == "webp":
        tile.save(buffer, "WEBP", quality=quality)
    elif png8:
        tile.quantize(256, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG")
    else:
        tile.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()
