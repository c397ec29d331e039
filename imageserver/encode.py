"""Turning a :class:`~imageserver.raster.Rendered` image into PNG, JPEG or GeoTIFF bytes.

Rules from the ArcGIS REST "Export Image" page: ``pixelType`` casts the pixels and truncates
(clips) out-of-range values; 8-bit formats (PNG/JPEG) get a default stretch when the data is not
8-bit, while TIFF is written without stretch in the requested pixel type. ``jpgpng`` is JPEG when
no pixel is transparent, else PNG, so its content type varies per request.

Transparency: ``png``/``png32`` carry an alpha band, ``png8`` a transparent palette entry;
``jpg`` and ``png24`` have neither, so transparent pixels are black there. GeoTIFFs mark them
with the nodata value or an internal mask.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from imageserver.params import ImageFormat, PixelType
from imageserver.raster import Rendered

_PNG = ("image/png", "png")
_JPEG = ("image/jpeg", "jpg")
_TIFF = ("image/tiff", "tif")
# png8 reserves the last palette entry for transparent pixels.
_TRANSPARENT_INDEX = 255
# zlib level 1 encodes a 256x256 RGBA tile ~5x faster than the default 6 for ~15 % more bytes;
# responses are cached downstream, so speed wins.
_PNG_OPTIONS = {"compress_level": 1}


@dataclass(frozen=True)
class EncodedImage:
    """Encoded image bytes.

    Attributes:
        content: the file bytes.
        content_type: MIME type (``image/png``, ``image/jpeg`` or ``image/tiff``).
        extension: file extension without the dot (``png``, ``jpg``, ``tif``).
    """

    content: bytes
    content_type: str
    extension: str


def encode(
    rendered: Rendered,
    *,
    image_format: ImageFormat,
    pixel_type: PixelType | None,
    quality: int,
    crs: CRS,
    nodata_candidates: Sequence[float] = (),
) -> EncodedImage:
    """Encode ``rendered`` in ``image_format``.

    Args:
        rendered: the image, its validity mask and per-band value ranges.
        image_format: requested ``format``.
        pixel_type: requested ``pixelType``; ``None`` keeps the rendered data type.
        quality: JPEG quality 0-100.
        crs: CRS of the rendered grid, written into GeoTIFFs.
        nodata_candidates: TIFF nodata values in order of preference; the first one that the
            output pixel type can represent is written as the nodata tag and fills invalid
            pixels. Without one, invalid pixels are flagged in an internal mask band.
    """
    if image_format is ImageFormat.TIFF:
        return _encode_tiff(rendered, pixel_type, crs, nodata_candidates)
    rgb = display_rgb(rendered, pixel_type)
    valid = rendered.valid
    rgb[:, ~valid] = 0
    pixels = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
    opaque = bool(valid.all())
    if image_format is ImageFormat.JPG or (image_format is ImageFormat.JPGPNG and opaque):
        return _save(Image.fromarray(pixels, "RGB"), "JPEG", _JPEG, quality=quality)
    if image_format is ImageFormat.PNG24:
        return _save(Image.fromarray(pixels, "RGB"), "PNG", _PNG, **_PNG_OPTIONS)
    if image_format is ImageFormat.PNG8:
        return _save_png8(pixels, valid)
    alpha = (valid * np.uint8(255))[..., np.newaxis]
    rgba = np.concatenate([pixels, alpha], axis=-1)
    return _save(Image.fromarray(rgba, "RGBA"), "PNG", _PNG, **_PNG_OPTIONS)


def display_rgb(rendered: Rendered, pixel_type: PixelType | None) -> np.ndarray:
    """Return ``(3, height, width)`` uint8 RGB for PNG/JPEG output.

    Applies ``pixel_type`` first; data that is still not uint8 gets a per-band linear min-max
    stretch from ``rendered.value_ranges`` to 0-255. Bands beyond the third are dropped and
    missing channels repeat the last band, so one band draws as grey.
    """
    data, ranges = rendered.data, rendered.value_ranges
    if pixel_type is not None:
        data = cast_pixels(data, pixel_type)
        low, high = pixel_type.value_range
        ranges = tuple((min(max(a, low), high), min(max(b, low), high)) for a, b in ranges)
    if data.dtype != np.uint8:
        data = _stretch(data, ranges)
    last = data.shape[0] - 1
    return data[[min(channel, last) for channel in range(3)]]


def cast_pixels(data: np.ndarray, pixel_type: PixelType) -> np.ndarray:
    """Cast ``data`` to ``pixel_type``, clipping to its range; float→int truncates decimals."""
    target = np.dtype(pixel_type.dtype)
    if pixel_type.nbits is None and np.can_cast(data.dtype, target, "safe"):
        return data.astype(target)
    low, high = pixel_type.value_range
    return np.clip(data.astype(np.float64), low, high).astype(target)


def _stretch(data: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    low = np.array([r[0] for r in ranges], np.float64).reshape(-1, 1, 1)
    high = np.array([r[1] for r in ranges], np.float64).reshape(-1, 1, 1)
    span = high - low
    # A constant band (span 0) draws black instead of dividing by zero.
    scale = np.divide(255.0, span, out=np.zeros_like(span), where=span > 0)
    scaled = (data.astype(np.float32) - low.astype(np.float32)) * scale.astype(np.float32)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _save(
    image: Image.Image, pil_format: str, kind: tuple[str, str], **options: int
) -> EncodedImage:
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return EncodedImage(buffer.getvalue(), *kind)


def _save_png8(pixels: np.ndarray, valid: np.ndarray) -> EncodedImage:
    opaque = bool(valid.all())
    image = Image.fromarray(pixels, "RGB").quantize(
        colors=256 if opaque else _TRANSPARENT_INDEX, dither=Image.Dither.NONE
    )
    if opaque:
        return _save(image, "PNG", _PNG, **_PNG_OPTIONS)
    indexes = np.array(image)
    indexes[~valid] = _TRANSPARENT_INDEX
    palette = image.getpalette() or []
    palette += [0] * (3 * 256 - len(palette))
    paletted = Image.fromarray(indexes, "P")
    paletted.putpalette(palette)
    return _save(paletted, "PNG", _PNG, transparency=_TRANSPARENT_INDEX, **_PNG_OPTIONS)


def _encode_tiff(
    rendered: Rendered, pixel_type: PixelType | None, crs: CRS, candidates: Sequence[float]
) -> EncodedImage:
    data = rendered.data if pixel_type is None else cast_pixels(rendered.data, pixel_type)
    nodata = next((v for v in candidates if _representable(v, data.dtype, pixel_type)), None)
    count, height, width = data.shape
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": rendered.transform,
        "nodata": nodata,
        # GDAL would tag 4 uint8 bands as RGB + alpha; bandIds output is plain bands.
        "photometric": "RGB" if count == 3 and data.dtype == np.uint8 else "MINISBLACK",
    }
    if pixel_type is not None and pixel_type.nbits is not None:
        profile["nbits"] = pixel_type.nbits
    invalid = ~rendered.valid
    if nodata is not None and invalid.any():
        data = data.copy()
        data[:, invalid] = nodata
    # A mask written to /vsimem must live inside the TIFF, or MemoryFile.read() would miss it.
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as memfile:
        with memfile.open(**profile) as dataset:
            dataset.write(data)
            if nodata is None and invalid.any():
                dataset.write_mask(rendered.valid * np.uint8(255))
        return EncodedImage(memfile.read(), *_TIFF)


def _representable(value: float, dtype: np.dtype, pixel_type: PixelType | None) -> bool:
    if dtype.kind == "f":
        return bool(np.isnan(value) or abs(value) <= np.finfo(dtype).max)
    if not float(value).is_integer():
        return False
    if pixel_type is not None:
        low, high = pixel_type.value_range
    else:
        info = np.iinfo(dtype)
        low, high = info.min, info.max
    return low <= value <= high
