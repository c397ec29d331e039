"""Image work of the gateway: formats, content types, magic bytes, empty tiles (Pillow)."""

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
