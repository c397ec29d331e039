"""Image work of the gateway: formats, content types, magic bytes, decode checks, metatile
cutting, empty tiles (Pillow)."""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Final

from PIL import Image, ImageColor

# Tile extension -> (exportImage ``format``, Content-Type). ``png32`` keeps the alpha band so
# areas without data stay transparent; ``jpgpng`` is never asked for because its content type
# varies per request (arcgis-rest.md section 1.1).
EXPORT_FORMATS: Final[dict[str, tuple[str, str]]] = {
    "png": ("png32", "image/png"),
    "jpg": ("jpg", "image/jpeg"),
}

_MAGIC: Final[dict[str, bytes]] = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpg": b"\xff\xd8\xff",
}


def sniff_format(data: bytes) -> str | None:
    """The tile extension (``png`` or ``jpg``) whose signature starts ``data``, else ``None``.

    Signatures: PNG (ISO/IEC 15948 section 5.2) and JPEG SOI marker + first marker (ITU T.81).
    """
    for ext, magic in _MAGIC.items():
        if data.startswith(magic):
            return ext
    return None


@lru_cache(maxsize=64)
def empty_tile(ext: str, size: int, background: str) -> bytes:
    """A ``size`` x ``size`` pixel tile with nothing on it: fully transparent for ``png``, the
    ``background`` colour (``#rrggbb``) for ``jpg``, which has no alpha. Same bytes every time,
    hence the same ETag."""
    buffer = io.BytesIO()
    if ext == "png":
        Image.new("RGBA", (size, size), (0, 0, 0, 0)).save(buffer, "PNG", optimize=True)
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
) -> list[bytes]:
    """Cut a metatile of ``size`` (width, height) pixels into tiles and encode each in ``ext``.

    ``crops`` are ``(left, top, right, bottom)`` pixel boxes. PNG keeps the alpha band
    (``png8`` quantises to a 256-colour palette, alpha included); JPEG, which has no alpha, is
    composited on ``background`` (``#rrggbb``) and saved at ``jpeg_quality`` (1-100).
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
        return [_encode(source.crop(box), ext, png8, jpeg_quality) for box in crops]


def _encode(tile: Image.Image, ext: str, png8: bool, jpeg_quality: int) -> bytes:
    buffer = io.BytesIO()
    if ext == "jpg":
        tile.save(buffer, "JPEG", quality=jpeg_quality)
    elif png8:
        tile.quantize(256, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG")
    else:
        tile.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()
