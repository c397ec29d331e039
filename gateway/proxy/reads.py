"""Cacheable reads of the reverse proxy and their cache keys.

Two reads are cached, by the rules tiles follow (architecture.md, "Cache entries";
arcgis-rest.md section 7.3): ``exportImage`` with ``f=image``, an explicit ``bbox`` (four
numbers) and ``size`` (two whole numbers) in a raster ``format``, and a cached service's
``tile/<level>/<row>/<col>``. The key is made from the normalised parameters: names lower
case (ArcGIS reads them case-insensitively), empty values dropped (empty means "not given"),
the bbox as numbers, the four Web Mercator WKIDs as one, and never ``token``, ``callback``
or a cache-buster (``_``, ``_ts``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.proxy.routing import Target

# Never part of a key: the credential, JSONP's function name, cache-busters.
_IGNORED = frozenset(("token", "callback", "_", "_ts"))
# 102100, 102113 and 900913 are Web Mercator as 3857 is (arcgis-rest.md section 1.3).
_WEB_MERCATOR = frozenset(("3857", "102100", "102113", "900913"))
# Formats whose bytes the gateway can decode to check them before caching.
_RASTER_FORMATS = frozenset(("png", "png8", "png24", "png32", "jpg", "jpgpng", "gif", "bmp"))


@dataclass(frozen=True, slots=True)
class CacheableRead:
    """A read that goes through the cache: ``read`` is the last part of its key (see
    ``cache.keys.KeyLayout.proxy``)."""

    read: str


def _spatial_reference(value: str) -> str:
    text = value.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            return text
        if isinstance(document, dict):
            wkid = document.get("latestWkid", document.get("wkid"))
            if isinstance(wkid, int):
                text = str(wkid)
    return "3857" if text in _WEB_MERCATOR else text


def _numbers(value: str, count: int) -> list[float] | None:
    parts = value.split(",")
    if len(parts) != count:
        return None
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        return None
    return numbers if all(math.isfinite(number) for number in numbers) else None


def normalised(params: Mapping[str, str]) -> dict[str, str] | None:
    """The key-relevant parameters of an exportImage call, or ``None`` when it is not a
    cacheable read (module docstring)."""
    result: dict[str, str] = {}
    for name, value in params.items():
        key = name.lower()
        if key in _IGNORED or not value.strip():
            continue
        result[key] = value.strip()
    if result.get("f", "").lower() != "image":
        return None
    bbox = _numbers(result.get("bbox", ""), 4)
    size = _numbers(result.get("size", ""), 2)
    if bbox is None or size is None or not all(n > 0 and n.is_integer() for n in size):
        return None
    if result.setdefault("format", "jpgpng").lower() not in _RASTER_FORMATS:
        return None
    result["f"] = "image"
    result["format"] = result["format"].lower()
    # Twelve significant digits: far below a pixel, and one key for 1.0 and 1.000000000001.
    result["bbox"] = ",".join(f"{number:.12g}" for number in bbox)
    result["size"] = ",".join(str(int(number)) for number in size)
    for name in ("bboxsr", "imagesr"):
        if name in result:
            result[name] = _spatial_reference(result[name])
    return result


def _digest(params: Mapping[str, str]) -> str:
    text = json.dumps(sorted(params.items()), separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def export_pixels(params: Mapping[str, str]) -> int:
    """Width x height of a normalised export's ``size``."""
    width, height = (int(part) for part in params["size"].split(","))
    return width * height


def cacheable(target: Target, params: Mapping[str, str], max_pixels: int) -> CacheableRead | None:
    """The cache read of a GET to ``target`` with query ``params``, or ``None`` when it is not
    one: an export larger than ``max_pixels`` is streamed instead."""
    if target.output:
        return None
    segments = target.segments
    if target.operation == "exportimage":
        export = normalised(params)
        if export is None or export_pixels(export) > max_pixels:
            return None
        return CacheableRead(f"export:{_digest(export)}")
    if len(segments) >= 4 and segments[-4].lower() == "tile" and not target.trailing_slash:
        level, row, col = segments[-3:]
        if not (level.isdigit() and row.isdigit() and col.isdigit()):
            return None
        extra = {
            name.lower(): value
            for name, value in params.items()
            if name.lower() not in _IGNORED and value.strip()
        }
        suffix = f":{_digest(extra)}" if extra else ""
        return CacheableRead(f"tile:{int(level)}:{int(row)}:{int(col)}{suffix}")
    return None


def service_key(target: Target) -> str:
    """The service path part of a key: the segments before the operation, ``/`` as ``:``."""
    segments = target.segments
    if target.operation == "exportimage":
        return ":".join(segments[:-1])
    return ":".join(segments[:-4])
