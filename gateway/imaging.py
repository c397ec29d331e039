"""Image facts the gateway needs without decoding: formats, content types, magic bytes."""

from __future__ import annotations

from typing import Final

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
