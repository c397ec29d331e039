"""Client of an upstream ArcGIS ImageServer: ``exportImage``, the tiles of a cached service
and the service info.

Knows ArcGIS REST and nothing of tiles or caches. Every answer is validated before it is
handed on, because ArcGIS reports most errors as HTTP 200 with an ``{"error": ...}`` body, and
some deployments answer an expired token with an HTML page (arcgis-rest.md sections 3 and 7).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from gateway.errors import UpstreamError
from gateway.imaging import EXPORT_FORMATS, sniff_format
from gateway.sources.http import Upstream, arcgis_error


@dataclass(frozen=True, slots=True)
class ExportedImage:
    """Validated exportImage bytes with their Content-Type and the upstream's Last-Modified
    (epoch seconds; ``None`` when the upstream sent none)."""

    data: bytes
    content_type: str
    last_modified: float | None


def validate_image(status: int, content_type: str, body: bytes, ext: str) -> None:
    """Raise ``UpstreamError`` (502) unless ``body`` is a real ``ext`` image.

    Checks, in order: an ArcGIS error JSON (under any HTTP status), the HTTP status, an HTML
    page (e.g. "Invalid Token" under 200, resource-proxy issue #301), ``Content-Type: image/*``,
    and the magic bytes of the requested format. Whether every pixel decodes is checked where
    the image is decoded anyway, off the event loop (``tiles.pipeline``, ``imaging.decode``).
    """
    error = arcgis_error(body)
    if error is not None:
        code, message = error
        raise UpstreamError(502, code if code is not None else status, message)
    if status >= 400:
        raise UpstreamError(502, status, f"HTTP {status}")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type.startswith("image/"):
        if b"invalid token" in body[:4096].lower():
            raise UpstreamError(502, 498, "Invalid Token")
        raise UpstreamError(502, status, f"not an image ({media_type or 'no Content-Type'})")
    if sniff_format(body) != ext:
        raise UpstreamError(502, status, f"the image is not a valid {ext.upper()} ({media_type})")


def _format_param(value: Any) -> str:
    """One exportImage parameter in ArcGIS REST syntax (lists comma-separated, objects JSON)."""
    if isinstance(value, list):
        return ",".join(_format_param(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def export_params(params: Mapping[str, Any]) -> dict[str, str]:
    """A layer's fixed export parameters as query strings, ``None`` values left out."""
    return {name: _format_param(value) for name, value in params.items() if value is not None}


class ImageServerClient:
    """exportImage and service info of one ImageServer (``service_url`` ends in
    ``/ImageServer``), through ``upstream``: its origin's shared session, credentials and
    timeout (see ``sources.http``)."""

    def __init__(self, service_url: str, upstream: Upstream) -> None:
        self.service_url = service_url.rstrip("/")
        self.upstream = upstream

    async def export_image(
        self,
        bbox: tuple[float, float, float, float],
        wkid: int,
        size: tuple[int, int],
        ext: str,
        fixed: Mapping[str, str],
    ) -> ExportedImage:
        """One ``exportImage`` call with ``f=image`` (ArcGIS REST "Export Image").

        ``bbox`` is ``(xmin, ymin, xmax, ymax)`` in CRS ``wkid``, sent as both bboxSR and imageSR;
        ``size`` is ``(width, height)`` in pixels; ``ext`` (``png``/``jpg``) picks the explicit
        ``format``; ``fixed`` are the layer's other parameters, already formatted.
        The call holds one of the service's exportImage slots (``Upstream.exports``).
        Raises ``UpstreamBusy`` (503) when no slot is to be had, else ``UpstreamError``: 504
        on timeout, 502 on any other failure.
        """
        export_format, content_type = EXPORT_FORMATS[ext]
        query = {
            "bbox": ",".join(repr(float(v)) for v in bbox),
            "bboxSR": str(wkid),
            "imageSR": str(wkid),
            "size": f"{size[0]},{size[1]}",
            "format": export_format,
            "f": "image",
            **fixed,
        }
        async with self.upstream.exports.slot():
            response = await self.upstream.get(f"{self.service_url}/exportImage", query)
        validate_image(
            response.status, response.headers.get("Content-Type", ""), response.body, ext
        )
        return ExportedImage(
            response.body, content_type, _http_date(response.headers.get("Last-Modified"))
        )

    async def tile(self, level: int, row: int, col: int) -> bytes | None:
        """One tile of the service's own cache, ``tile/<level>/<row>/<col>`` (ArcGIS REST
        "Image Tile"; arcgis-rest.md section 2.1): its PNG or JPEG bytes, not yet decoded, or
        ``None`` when the cache has no usable tile there: HTTP 404 (ArcGIS' answer for a
        missing tile), an ArcGIS error JSON, or a body that is not a PNG or JPEG image.

        Holds no exportImage slot: reading a cache renders nothing. Raises ``UpstreamError``
        when the upstream fails otherwise (504 on timeout, 502 on HTTP 5xx or no answer), so
        that a stale copy may stand in as for exportImage.
        """
        response = await self.upstream.get(f"{self.service_url}/tile/{level}/{row}/{col}", {})
        if response.status == 404 or arcgis_error(response.body) is not None:
            return None
        if response.status >= 400:
            raise UpstreamError(502, response.status, f"HTTP {response.status}")
        if sniff_format(response.body) is None:
            return None
        return response.body

    async def identify(self, lon: float, lat: float, fixed: Mapping[str, str]) -> dict[str, Any]:
        """``identify`` at ``lon``, ``lat`` (degrees, EPSG:4326, x = longitude) as a dict
        (ArcGIS REST "Identify (Image Service)": ``value`` is the band values joined by
        ``", "``, or ``"NoData"``). ``fixed`` are identify parameters of the layer
        (``renderingRule``, ``mosaicRule``), already formatted.

        Raises ``UpstreamError``: 502 for an error JSON, an HTTP error or a body that is not
        a JSON object, 504 on timeout.
        """
        query = {
            "geometry": json.dumps({"x": lon, "y": lat, "spatialReference": {"wkid": 4326}}),
            "geometryType": "esriGeometryPoint",
            "returnGeometry": "false",
            "returnCatalogItems": "false",
            "f": "json",
            **fixed,
        }
        response = await self.upstream.get(f"{self.service_url}/identify", query)
        return _json_object(response.status, response.body, "identify answer")

    async def service_info(self) -> dict[str, Any]:
        """The ImageServer root resource (``?f=json``) as a dict (ArcGIS REST "Image Service").

        Raises ``UpstreamError`` (502/504) when it cannot be read or is an error JSON.
        """
        return await self._json(self.service_url, {"f": "json"}, "service info")

    async def catalog_times(self, field: str) -> list[int]:
        """The distinct values of the catalog's time ``field`` (epoch milliseconds), sorted:
        one ``query`` of the image service's catalog (ArcGIS REST "Query (Image Service)")
        with ``where=1=1``, ``outFields=<field>``, ``returnGeometry=false``.

        Raises ``UpstreamError`` (502/504) when it cannot be read or is an error JSON, and
        (502) when the catalog holds more rasters than one answer gives
        (``exceededTransferLimit``): the list would be incomplete.
        """
        answer = await self._json(
            f"{self.service_url}/query",
            {"where": "1=1", "outFields": field, "returnGeometry": "false", "f": "json"},
            "catalog query",
        )
        if answer.get("exceededTransferLimit"):
            raise UpstreamError(502, None, "the catalog holds more rasters than one query gives")
        features = answer.get("features")
        times = {
            feature["attributes"][field]
            for feature in (features if isinstance(features, list) else ())
            if isinstance(feature, dict)
            and isinstance(feature.get("attributes"), dict)
            and isinstance(feature["attributes"].get(field), int)
        }
        return sorted(times)

    async def _json(self, url: str, params: Mapping[str, str], what: str) -> dict[str, Any]:
        """The JSON object at ``url`` with ``params`` (``what`` names it in errors). Raises
        ``UpstreamError`` (502/504) when it cannot be read, is an ArcGIS error or is not a JSON
        object."""
        response = await self.upstream.get(url, dict(params))
        return _json_object(response.status, response.body, what)


def _json_object(status: int, body: bytes, what: str) -> dict[str, Any]:
    """The JSON object of an upstream answer. Raises ``UpstreamError`` (502) for an ArcGIS
    error JSON, an HTTP error status, or a body that is not a JSON object."""
    error = arcgis_error(body)
    if error is not None:
        raise UpstreamError(502, error[0], error[1])
    if status >= 400:
        raise UpstreamError(502, status, f"HTTP {status}")
    try:
        document = json.loads(body)
    except ValueError:
        raise UpstreamError(502, status, f"the {what} is not JSON") from None
    if not isinstance(document, dict):
        raise UpstreamError(502, status, f"the {what} is not a JSON object")
    return document


def service_crs(spatial_reference: Mapping[str, Any]) -> CRS:
    """The pyproj CRS of an ArcGIS spatialReference JSON: ``latestWkid``, ``wkid`` (EPSG, then
    ESRI authority, e.g. 102100) or ``wkt`` (ArcGIS REST "Spatial reference" objects)."""
    for key in ("latestWkid", "wkid"):
        code = spatial_reference.get(key)
        if isinstance(code, int):
            for authority in ("EPSG", "ESRI"):
                try:
                    return CRS.from_authority(authority, code)
                except CRSError:
                    continue
    if isinstance(spatial_reference.get("wkt"), str):
        return CRS.from_wkt(spatial_reference["wkt"])
    raise CRSError(f"unsupported spatialReference {dict(spatial_reference)!r}")


def extent_wgs84(info: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """The service info's ``extent`` as ``(west, south, east, north)`` in degrees (EPSG:4326,
    lon/lat), or ``None`` when the info has no usable extent or spatial reference."""
    extent = info.get("extent")
    if not isinstance(extent, Mapping):
        return None
    try:
        box = [float(extent[key]) for key in ("xmin", "ymin", "xmax", "ymax")]
        crs = service_crs(extent.get("spatialReference") or info.get("spatialReference") or {})
        to_wgs84 = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
        west, south, east, north = to_wgs84.transform_bounds(*box, densify_pts=21)
    except (KeyError, TypeError, ValueError, CRSError):
        return None
    west, south = max(west, -180.0), max(south, -90.0)
    east, north = min(east, 180.0), min(north, 90.0)
    if not (west < east and south < north):
        return None
    return (west, south, east, north)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
