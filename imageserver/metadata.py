"""JSON documents of the REST directory: server info, catalog, ImageServer root, errors.

Field names and shapes follow the ArcGIS REST pages "Server Info", "Catalog", "Image Service"
(the ImageServer root resource) and the common error response; see ``docs/arcgis-rest.md`` §2-§3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from imageserver.functions import raster_function_infos
from imageserver.mosaic import MosaicSource, service_fields
from imageserver.params import DEFAULT_COMPRESSION_QUALITY, MAX_IMAGE_HEIGHT, MAX_IMAGE_WIDTH
from imageserver.raster import RasterSource
from imageserver.spatialref import spatial_reference_json

CURRENT_VERSION = 11.1
FULL_VERSION = "11.1.0"

_PIXEL_TYPE_NAMES = {
    "uint8": "U8",
    "int8": "S8",
    "uint16": "U16",
    "int16": "S16",
    "uint32": "U32",
    "int32": "S32",
    "float32": "F32",
    "float64": "F64",
}


def server_info(
    *,
    token_services_url: str | None = None,
    owning_system_url: str | None = None,
    short_lived_minutes: int | None = None,
) -> dict[str, Any]:
    """``/arcgis/rest/info`` (ArcGIS REST "Server Info", ``docs/arcgis-rest.md`` §4.1).

    Without ``token_services_url`` the server is not token-secured. With it, ``authInfo``
    carries ``tokenServicesUrl`` and ``shortLivedTokenValidity`` (minutes), and a federated
    server adds ``owningSystemUrl`` (its portal).
    """
    info: dict[str, Any] = {"currentVersion": CURRENT_VERSION, "fullVersion": FULL_VERSION}
    if token_services_url is None:
        info["authInfo"] = {"isTokenBasedSecurity": False}
        return info
    if owning_system_url is not None:
        info["owningSystemUrl"] = owning_system_url
    info["authInfo"] = {
        "isTokenBasedSecurity": True,
        "tokenServicesUrl": token_services_url,
        "shortLivedTokenValidity": short_lived_minutes,
    }
    return info


def catalog(service_names: Iterable[str]) -> dict[str, Any]:
    """``/arcgis/rest/services``: the configured image services are ImageServers at the root
    folder; the ``Hosted`` folder holds the image collections jobs publish, and ``System`` the
    RasterAnalysisTools GP service, as on ArcGIS Enterprise."""
    return {
        "currentVersion": CURRENT_VERSION,
        "folders": ["Hosted", "System"],
        "services": [{"name": name, "type": "ImageServer"} for name in sorted(service_names)],
    }


def service_info(name: str, source: RasterSource) -> dict[str, Any]:
    """The ImageServer root resource of one service.

    Extents are the raster bounds in the raster's CRS; ``pixelSizeX/Y`` are the native cell
    size in CRS units (metres, degrees); statistics are estimates from overviews.
    """
    spatial_reference = spatial_reference_json(source.crs)
    bounds = source.bounds
    extent = {
        "xmin": bounds.left,
        "ymin": bounds.bottom,
        "xmax": bounds.right,
        "ymax": bounds.top,
        "spatialReference": spatial_reference,
    }
    stats = source.statistics
    band_count = source.count
    nodata = _json_number(source.nodata)
    info = {
        "currentVersion": CURRENT_VERSION,
        "serviceDescription": source.spec.description,
        "name": name,
        "description": source.spec.description,
        "type": "ImageServer",
        "copyrightText": source.spec.copyright,
        "capabilities": "Image,Metadata",
        "serviceDataType": (
            "esriImageServiceDataTypeThematic"
            if source.palette is not None
            else "esriImageServiceDataTypeGeneric"
        ),
        "serviceSourceType": "esriImageServiceSourceTypeDataset",
        "spatialReference": spatial_reference,
        "extent": extent,
        "initialExtent": dict(extent),
        "fullExtent": dict(extent),
        "pixelSizeX": source.resolution[0],
        "pixelSizeY": source.resolution[1],
        "minPixelSize": 0,
        "maxPixelSize": 0,
        "bandCount": band_count,
        "bandNames": [f"Band_{i + 1}" for i in range(band_count)],
        "pixelType": _PIXEL_TYPE_NAMES.get(source.dtype, "UNKNOWN"),
        "noDataValue": nodata,
        "noDataValues": [nodata] * band_count if nodata is not None else [],
        "minValues": [_json_number(v) for v in stats.minimum],
        "maxValues": [_json_number(v) for v in stats.maximum],
        "meanValues": [_json_number(v) for v in stats.mean],
        "stdvValues": [_json_number(v) for v in stats.std],
        "hasColormap": source.palette is not None,
        "hasHistograms": False,
        "hasRasterAttributeTable": False,
        "hasMultidimensions": False,
        "maxImageWidth": MAX_IMAGE_WIDTH,
        "maxImageHeight": MAX_IMAGE_HEIGHT,
        "defaultResamplingMethod": "Bilinear",
        "defaultCompressionQuality": DEFAULT_COMPRESSION_QUALITY,
        "allowRasterFunction": True,
        "rasterFunctionInfos": raster_function_infos(source),
        "exportTilesAllowed": False,
        "singleFusedMapCache": False,
    }
    if isinstance(source, MosaicSource):
        # A time-enabled mosaic: catalog fields, mosaic defaults, timeInfo.
        info.update(service_fields(source))
    return info


def error_payload(
    code: int, message: str, details: Sequence[str] = (), *, message_code: str | None = None
) -> dict[str, Any]:
    """ArcGIS error JSON ``{"error": {"code", "message", "details"}}``, with ``messageCode``
    when given (e.g. ``GWM_0003`` for "Token Required", ``docs/arcgis-rest.md`` §3)."""
    error: dict[str, Any] = {"code": code, "message": message, "details": list(details)}
    if message_code is not None:
        error["messageCode"] = message_code
    return {"error": error}


def _json_number(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; a NaN nodata value is reported as null.
    return value if value is not None and math.isfinite(value) else None
