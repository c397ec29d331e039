"""Spatial references as ArcGIS REST spells them: WKIDs and spatial-reference JSON.

ArcGIS REST "Spatial reference" / "Geometry objects" pages: a spatial reference is a well-known
ID (``4326``), or JSON ``{"wkid": 102100, "latestWkid": 3857}`` or ``{"wkt": "PROJCS[...]"}``.
Web Mercator has four codes in the wild (Esri support article 000013950): ``102100`` (Esri,
auxiliary sphere, still reported as ``wkid``), ``3857`` (EPSG, reported as ``latestWkid``),
``102113`` (old Esri) and ``900913`` (Google, sent by MapProxy); all mean EPSG:3857 here.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError

WEB_MERCATOR = CRS.from_epsg(3857)
WEB_MERCATOR_WKIDS = frozenset({3857, 102100, 102113, 900913})


def parse_spatial_reference(value: str) -> CRS:
    """Parse an ArcGIS spatial-reference parameter (``bboxSR``, ``imageSR``).

    Accepted: a WKID integer (EPSG or Esri code, Web Mercator aliases included), or JSON with
    ``latestWkid``, ``wkid`` or ``wkt`` (checked in that order, because ``latestWkid`` is the
    EPSG code when both are present).

    Raises:
        ValueError: malformed value or a code/WKT that PROJ does not know.
    """
    text = value.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid spatial reference JSON {text!r}") from exc
        if not isinstance(document, dict):
            raise ValueError(f"invalid spatial reference JSON {text!r}")
        return spatial_reference_from_json(document)
    try:
        wkid = int(text)
    except ValueError:
        raise ValueError(f"invalid spatial reference {text!r}") from None
    return crs_from_wkid(wkid)


def spatial_reference_from_json(document: dict[str, Any]) -> CRS:
    """Convert spatial-reference JSON (``latestWkid`` | ``wkid`` | ``wkt``) to a CRS.

    Raises:
        ValueError: none of the keys present, or an unknown code or WKT.
    """
    for key in ("latestWkid", "wkid"):
        code = document.get(key)
        if isinstance(code, int) and not isinstance(code, bool):
            return crs_from_wkid(code)
    wkt = document.get("wkt")
    if isinstance(wkt, str):
        try:
            return CRS.from_wkt(wkt)
        except CRSError as exc:
            raise ValueError("the spatial reference WKT could not be parsed") from exc
    raise ValueError("spatial reference JSON needs an integer wkid or latestWkid, or a wkt")


@functools.lru_cache(maxsize=256)
def crs_from_wkid(wkid: int) -> CRS:
    """Return the CRS for an EPSG or Esri well-known ID; Web Mercator aliases give EPSG:3857.

    Raises:
        ValueError: the code is neither an EPSG nor an Esri code known to PROJ.
    """
    if wkid in WEB_MERCATOR_WKIDS:
        return WEB_MERCATOR
    # Asking PROJ for EPSG:102003 "works" with a warning, so try the likely authority first.
    authorities = ("ESRI", "EPSG") if _looks_like_esri_code(wkid) else ("EPSG", "ESRI")
    for authority in authorities:
        try:
            return CRS.from_user_input(f"{authority}:{wkid}")
        except CRSError:
            continue
    raise ValueError(f"unknown spatial reference wkid {wkid}")


def spatial_reference_json(crs: CRS) -> dict[str, Any]:
    """Return ArcGIS spatial-reference JSON for ``crs``.

    EPSG:3857 is reported as ``{"wkid": 102100, "latestWkid": 3857}`` like ArcGIS 10.1+;
    other EPSG CRSs as ``{"wkid": n, "latestWkid": n}``; Esri-coded ones as ``{"wkid": n}``;
    anything else as ``{"wkt": ...}``.
    """
    return dict(_spatial_reference_items(crs))


@functools.lru_cache(maxsize=256)
def _spatial_reference_items(crs: CRS) -> tuple[tuple[str, Any], ...]:
    # Cached because identifying a CRS (to_authority) searches the PROJ database.
    if crs == WEB_MERCATOR:
        return (("wkid", 102100), ("latestWkid", 3857))
    authority = crs.to_authority()
    if authority is not None:
        name, code = authority
        if name == "EPSG":
            return (("wkid", int(code)), ("latestWkid", int(code)))
        if name == "ESRI":
            return (("wkid", int(code)),)
    return (("wkt", crs.to_wkt()),)


def _looks_like_esri_code(wkid: int) -> bool:
    # Esri's own codes: 53xxx/54xxx (sphere-based and world projections) and 102000 upwards.
    return 53_000 <= wkid < 55_000 or wkid >= 100_000
