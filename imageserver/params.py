"""Parsing and validation of ``exportImage`` request parameters.

Rules follow the ArcGIS REST "Export Image" page (ImageServer/exportImage) plus what real
clients send (see ``docs/arcgis-rest.md`` §0-§1): parameter names are case-insensitive, empty
values mean "not given", unknown parameters are ignored, and every invalid value is collected
into one :class:`ParameterError` that the app reports as ArcGIS error code 400.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling

from imageserver.spatialref import parse_spatial_reference, spatial_reference_from_json

# Limits advertised as maxImageWidth / maxImageHeight (ArcGIS REST "Image Service": the common
# image-service defaults). Larger requests are an error, not a silent downscale.
MAX_IMAGE_WIDTH = 15000
MAX_IMAGE_HEIGHT = 4100
DEFAULT_SIZE = (400, 400)
DEFAULT_COMPRESSION_QUALITY = 75

Bounds = tuple[float, float, float, float]
"""``(xmin, ymin, xmax, ymax)`` in the units of the spatial reference it comes with."""

_T = TypeVar("_T")
_JSONP_CALLBACK = re.compile(r"^[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*$")


class ParameterError(ValueError):
    """One or more request parameters are invalid (ArcGIS error code 400, HTTP 200).

    Attributes:
        details: one human-readable message per bad parameter (the error JSON ``details``).
    """

    def __init__(self, details: Iterable[str]) -> None:
        self.details = list(details)
        super().__init__("; ".join(self.details))


class ImageFormat(enum.StrEnum):
    """Supported ``format`` values. ``jpgpng`` is JPEG unless a pixel is transparent."""

    JPGPNG = "jpgpng"
    PNG = "png"
    PNG8 = "png8"
    PNG24 = "png24"
    PNG32 = "png32"
    JPG = "jpg"
    TIFF = "tiff"


# MapProxy derives `format` from the MIME subtype, so it sends "jpeg".
_FORMAT_ALIASES = {"jpeg": ImageFormat.JPG}
# Valid in ArcGIS but not produced by this server: reported as unsupported, not unknown.
_UNSUPPORTED_FORMATS = frozenset({"bmp", "gif", "bip", "bsq", "lerc"})


class ResponseFormat(enum.StrEnum):
    """``f``: ``image`` streams the bytes; ``json``/``pjson`` return a link to them."""

    IMAGE = "image"
    JSON = "json"
    PJSON = "pjson"


@dataclass(frozen=True)
class PixelType:
    """An ArcGIS ``pixelType`` and the numpy type that carries it.

    Attributes:
        name: the ArcGIS code (``U8``, ``S16``, ``F32``, ...).
        dtype: numpy dtype name used for the pixels.
        nbits: bit depth for the sub-byte types U1/U2/U4 (stored in uint8), else ``None``.
    """

    name: str
    dtype: str
    nbits: int | None = None

    @property
    def value_range(self) -> tuple[float, float]:
        """Smallest and largest representable value; casts clip (truncate) to this range."""
        if self.nbits is not None:
            return 0.0, float(2**self.nbits - 1)
        dtype = np.dtype(self.dtype)
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        return float(info.min), float(info.max)


PIXEL_TYPES: dict[str, PixelType] = {
    p.name: p
    for p in (
        PixelType("U1", "uint8", 1),
        PixelType("U2", "uint8", 2),
        PixelType("U4", "uint8", 4),
        PixelType("U8", "uint8"),
        PixelType("S8", "int8"),
        PixelType("U16", "uint16"),
        PixelType("S16", "int16"),
        PixelType("U32", "uint32"),
        PixelType("S32", "int32"),
        PixelType("F32", "float32"),
        PixelType("F64", "float64"),
    )
}
_UNSUPPORTED_PIXEL_TYPES = frozenset({"C64", "C128"})

RESAMPLING_METHODS: dict[str, Resampling] = {
    "bilinearinterpolation": Resampling.bilinear,
    "cubicconvolution": Resampling.cubic,
    "majority": Resampling.mode,
    "nearestneighbor": Resampling.nearest,
}


@dataclass(frozen=True)
class NoDataRule:
    """The request's ``noData`` / ``noDataInterpretation``.

    Attributes:
        values: one value for all bands, or one per requested band (after ``bandIds``).
        match_all: ``esriNoDataMatchAll`` (every band must match) instead of
            ``esriNoDataMatchAny`` (one band matching is enough).
    """

    values: tuple[float, ...]
    match_all: bool


@dataclass(frozen=True)
class ExportParams:
    """Validated ``exportImage`` parameters; ``None`` means "not given, use the default".

    Attributes:
        bbox: requested extent ``(xmin, ymin, xmax, ymax)`` in ``bbox_crs`` units.
        bbox_crs: spatial reference of ``bbox`` (``bboxSR``, or the SR inside a JSON bbox).
        image_crs: output spatial reference (``imageSR``).
        width, height: output size in pixels (``size``).
        image_format: output encoding (``format``).
        response_format: ``f``; ``html`` and a missing ``f`` are answered as JSON.
        pixel_type: output pixel type (``pixelType``); ``None`` keeps the source's type.
        nodata: extra values to treat as no data (``noData``, ``noDataInterpretation``).
        resampling: ``interpolation``.
        quality: JPEG quality 0-100 (``compressionQuality``).
        band_ids: 0-based source band indexes in output order (``bandIds``).
        adjust_aspect_ratio: grow the bbox to the aspect ratio of ``size`` (default true).
        callback: JSONP function name for JSON responses.
    """

    bbox: Bounds | None
    bbox_crs: CRS | None
    image_crs: CRS | None
    width: int
    height: int
    image_format: ImageFormat
    response_format: ResponseFormat
    pixel_type: PixelType | None
    nodata: NoDataRule | None
    resampling: Resampling | None
    quality: int
    band_ids: tuple[int, ...] | None
    adjust_aspect_ratio: bool
    callback: str | None


def normalize_params(*sources: Mapping[str, str]) -> dict[str, str]:
    """Merge query-string and form parameters into one dict with lower-case names.

    Later sources win (pass the query first, then the POST body). Empty values are dropped
    because clients send ``bboxSR=&time=`` meaning "not specified".
    """
    merged: dict[str, str] = {}
    for source in sources:
        for key, value in source.items():
            if value.strip():
                merged[key.lower()] = value
    return merged


def parse_callback(params: Mapping[str, str]) -> str | None:
    """Return the JSONP ``callback`` name, or ``None`` when absent or not a plain JS identifier.

    An invalid name is ignored rather than echoed, since it would be injected into a script.
    """
    callback = params.get("callback", "").strip()
    return callback if _JSONP_CALLBACK.match(callback) else None


def parse_response_format(params: Mapping[str, str]) -> ResponseFormat:
    """Parse ``f`` for JSON resources: ``pjson`` pretty-prints, anything else is JSON."""
    if params.get("f", "").strip().lower() == "pjson":
        return ResponseFormat.PJSON
    return ResponseFormat.JSON


def parse_export_params(params: Mapping[str, str], *, band_count: int) -> ExportParams:
    """Validate ``exportImage`` parameters (as returned by :func:`normalize_params`).

    Args:
        params: lower-case parameter names → raw string values.
        band_count: number of bands of the service, to check ``bandIds``.

    Raises:
        ParameterError: listing every invalid parameter.
    """
    errors: list[str] = []

    def field(name: str, parse: Callable[[str], _T], default: _T) -> _T:
        raw = params.get(name.lower())
        if raw is None:
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            errors.append(f"Invalid {name} '{raw}': {exc}")
            return default

    bbox, bbox_sr_from_json = field("bbox", _parse_bbox, (None, None))
    band_ids = field("bandIds", lambda v: _parse_band_ids(v, band_count), None)
    nodata_values = field("noData", _parse_numbers, None)
    match_all = field("noDataInterpretation", _parse_nodata_interpretation, None)
    nodata: NoDataRule | None = None
    if nodata_values is not None:
        selected = len(band_ids) if band_ids is not None else band_count
        if len(nodata_values) in (1, selected):
            # Esri default: MatchAny for a single value, MatchAll for a per-band list.
            nodata = NoDataRule(
                nodata_values, len(nodata_values) > 1 if match_all is None else match_all
            )
        else:
            errors.append(
                f"Invalid noData '{params['nodata']}': give one value or one per band "
                f"({selected} bands)"
            )
    width, height = field("size", _parse_size, DEFAULT_SIZE)
    export = ExportParams(
        bbox=bbox,
        bbox_crs=field("bboxSR", parse_spatial_reference, bbox_sr_from_json),
        image_crs=field("imageSR", parse_spatial_reference, None),
        width=width,
        height=height,
        image_format=field("format", _parse_format, ImageFormat.JPGPNG),
        response_format=field("f", _parse_f, ResponseFormat.JSON),
        pixel_type=field("pixelType", _parse_pixel_type, None),
        nodata=nodata,
        resampling=field("interpolation", _parse_interpolation, None),
        quality=field("compressionQuality", _parse_quality, DEFAULT_COMPRESSION_QUALITY),
        band_ids=band_ids,
        adjust_aspect_ratio=field("adjustAspectRatio", _parse_bool, True),
        callback=parse_callback(params),
    )
    if errors:
        raise ParameterError(errors)
    return export


def _parse_bbox(value: str) -> tuple[Bounds | None, CRS | None]:
    crs: CRS | None = None
    if value.startswith("{"):
        # An envelope JSON (the JS API sends it to MapServer export); harmless to accept.
        try:
            document: Any = json.loads(value)
            numbers = [float(document[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError("expected xmin,ymin,xmax,ymax or an envelope JSON") from exc
        if isinstance(document.get("spatialReference"), dict):
            crs = spatial_reference_from_json(document["spatialReference"])
    else:
        numbers = _parse_numbers(value)
        if len(numbers) != 4:
            raise ValueError("expected xmin,ymin,xmax,ymax")
    if not all(math.isfinite(n) for n in numbers):
        raise ValueError("coordinates must be finite numbers")
    # ArcGIS takes the corners in either order: esri-leaflet's imageMapLayer sends
    # xmin,ymax,xmax,ymin (Leaflet's pixel-space corners), so normalise instead of refusing.
    x0, y0, x1, y1 = numbers
    xmin, xmax, ymin, ymax = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    if xmin == xmax or ymin == ymax:
        raise ValueError("the bbox is empty: xmin equals xmax or ymin equals ymax")
    return (xmin, ymin, xmax, ymax), crs


def _parse_numbers(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise ValueError("expected comma-separated numbers") from None


def _parse_size(value: str) -> tuple[int, int]:
    numbers = _parse_numbers(value)
    if len(numbers) != 2 or not all(math.isfinite(n) for n in numbers):
        raise ValueError("expected width,height")
    # OpenLayers may send fractional sizes (HiDPI ratios); round like the output raster would.
    width, height = (round(n) for n in numbers)
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if width > MAX_IMAGE_WIDTH or height > MAX_IMAGE_HEIGHT:
        raise ValueError(
            f"the size exceeds the limit of {MAX_IMAGE_WIDTH} x {MAX_IMAGE_HEIGHT} pixels"
        )
    return width, height


def _parse_band_ids(value: str, band_count: int) -> tuple[int, ...]:
    parts = value.strip("[]").split(",")
    try:
        ids = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError("expected comma-separated 0-based band indexes") from None
    bad = [i for i in ids if not 0 <= i < band_count]
    if bad:
        raise ValueError(f"band index out of range 0..{band_count - 1}: {bad}")
    return ids


def _parse_format(value: str) -> ImageFormat:
    name = value.lower()
    if name in _FORMAT_ALIASES:
        return _FORMAT_ALIASES[name]
    if name in _UNSUPPORTED_FORMATS:
        raise ValueError("format not supported by this server")
    try:
        return ImageFormat(name)
    except ValueError:
        raise ValueError(f"expected one of {', '.join(f.value for f in ImageFormat)}") from None


def _parse_f(value: str) -> ResponseFormat:
    name = value.lower()
    if name == "html":
        return ResponseFormat.JSON
    try:
        return ResponseFormat(name)
    except ValueError:
        raise ValueError("expected image, json or pjson") from None


def _parse_pixel_type(value: str) -> PixelType | None:
    name = value.upper()
    if name == "UNKNOWN":
        return None
    if name in _UNSUPPORTED_PIXEL_TYPES:
        raise ValueError("complex pixel types are not supported by this server")
    try:
        return PIXEL_TYPES[name]
    except KeyError:
        raise ValueError(f"expected one of {', '.join(PIXEL_TYPES)} or UNKNOWN") from None


def _parse_interpolation(value: str) -> Resampling:
    # Scripts copied from the HTML form send "+RSP_..." and "+" decodes to a space in queries.
    name = value.lstrip("+ ").lower().removeprefix("rsp_")
    try:
        return RESAMPLING_METHODS[name]
    except KeyError:
        raise ValueError(
            "expected RSP_BilinearInterpolation, RSP_CubicConvolution, RSP_Majority "
            "or RSP_NearestNeighbor"
        ) from None


def _parse_nodata_interpretation(value: str) -> bool:
    name = value.lower()
    if name == "esrinodatamatchall":
        return True
    if name == "esrinodatamatchany":
        return False
    raise ValueError("expected esriNoDataMatchAny or esriNoDataMatchAll")


def _parse_quality(value: str) -> int:
    quality = float(value)
    if not 0 <= quality <= 100:
        raise ValueError("expected 0..100")
    return round(quality)


def _parse_bool(value: str) -> bool:
    name = value.lower()
    if name in ("true", "1"):
        return True
    if name in ("false", "0"):
        return False
    raise ValueError("expected true or false")
