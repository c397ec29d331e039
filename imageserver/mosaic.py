"""Time-enabled mosaic services: several rasters with acquisition dates, mosaicked on the fly
per request from the ``time`` and ``mosaicRule`` parameters.

A mosaic service (``ServiceSpec.rasters``) has a catalog like an ArcGIS mosaic dataset: one row
per raster with the fields ``OBJECTID`` (1, 2, ... in configuration order), ``Name`` and
``AcquisitionDate`` (ms since 1970-01-01 UTC). Each raster keeps its own grid and is warped into
the requested one by :meth:`RasterSource.render`; the warped images are then combined per
:func:`composite`, the rule image collections (:mod:`imageserver.collection`) also follow.

Rules, and the pages they come from:

- ``time`` (ArcGIS REST "Export Image" and "Identify", parameter ``time``): ``<t>`` is an
  instant, ``<t1>,<t2>`` an extent, both in ms since the epoch (UTC); ``null`` as either end of
  an extent leaves it open (web map specification, "timeExtent" object). Each raster is an
  instant (``startTimeField`` ``AcquisitionDate``, no ``endTimeField``): an instant selects
  the rasters acquired exactly then, an extent those acquired within it, ends included. No
  ``time``: every raster takes part. When nothing is selected the image is transparent
  (no valid pixel) and identify answers ``NoData``, as ArcGIS answers outside the data.
- ``mosaicRule`` (ArcGIS REST "Mosaic rule objects"; web map specification "mosaicRule";
  SOAP "MosaicRule" for the ordering): ``mosaicMethod`` ``esriMosaicNone`` (by ObjectID),
  ``esriMosaicLockRaster`` (only ``lockRasterIds``, by ObjectID), ``esriMosaicAttribute``
  (by ``|sortField - sortValue|``, or by ``sortField`` without ``sortValue``),
  ``esriMosaicNorthwest`` (by the distance of each raster's centre to the north-west corner
  of the service extent) and ``esriMosaicCenter`` (to the centre of the request); ``ascending``
  defaults to true ("if unavailable, the default value is true"), the first raster in the
  order is on top. ``mosaicOperation`` resolves overlaps: ``MT_FIRST`` (default), ``MT_LAST``,
  ``MT_MIN``, ``MT_MAX``, ``MT_MEAN``. ``fids`` restricts the rasters to those ObjectIDs.
  Nadir, Viewpoint and Seamline need metadata these rasters lack, ``MT_BLEND``/``MT_SUM`` and
  ``where`` are not implemented: each is refused with an error naming ``mosaicRule``, never
  ignored.
- Without ``mosaicRule`` the service's default applies: ``esriMosaicAttribute`` on
  ``AcquisitionDate`` with ``sortValue`` 2050/01/01, ascending, so the most recent raster is on
  top, as Esri configures its time-enabled imagery services (e.g. Sentinel-2 Land Cover:
  ``defaultMosaicMethod`` ``ByAttribute``, ``sortField`` ``Year``, ``sortValue`` ``2050``,
  ``sortAscending`` true).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import enum
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from rasterio.coords import BoundingBox
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.warp import transform

from imageserver.config import ServiceSpec
from imageserver.geometry import Geometry
from imageserver.params import ParameterError
from imageserver.pixels import Point, format_value, read_points, sample_points, to_source_points
from imageserver.raster import (
    QUANTILE_STEPS,
    BandStatistics,
    RasterSource,
    Rendered,
    RenderRequest,
    grid_transform,
)
from imageserver.spatialref import spatial_reference_json

OBJECT_ID_FIELD = "OBJECTID"
NAME_FIELD = "Name"
DATE_FIELD = "AcquisitionDate"
# ArcGIS's default maxMosaicImageCount: at most this many rasters are mosaicked per request.
MAX_MOSAIC_IMAGE_COUNT = 20
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_DEFAULT_SORT_VALUE = "2050/01/01"
_E = TypeVar("_E", bound=enum.StrEnum)


class MosaicMethod(enum.StrEnum):
    """The ``mosaicMethod`` values this server implements."""

    NONE = "esriMosaicNone"
    LOCK_RASTER = "esriMosaicLockRaster"
    ATTRIBUTE = "esriMosaicAttribute"
    NORTHWEST = "esriMosaicNorthwest"
    CENTER = "esriMosaicCenter"


# The names the service resource uses (defaultMosaicMethod, allowedMosaicMethods).
_METHOD_NAMES = {
    MosaicMethod.ATTRIBUTE: "ByAttribute",
    MosaicMethod.LOCK_RASTER: "LockRaster",
    MosaicMethod.NONE: "None",
    MosaicMethod.NORTHWEST: "NorthWest",
    MosaicMethod.CENTER: "Center",
}
_UNSUPPORTED_METHODS = ("esriMosaicNadir", "esriMosaicViewpoint", "esriMosaicSeamline")


class MosaicOperation(enum.StrEnum):
    """The ``mosaicOperation`` values this server implements."""

    FIRST = "MT_FIRST"
    LAST = "MT_LAST"
    MIN = "MT_MIN"
    MAX = "MT_MAX"
    MEAN = "MT_MEAN"


_UNSUPPORTED_OPERATIONS = ("MT_BLEND", "MT_SUM")


@dataclass(frozen=True)
class TimeExtent:
    """A ``time`` filter in ms since the epoch (UTC); ``None`` leaves an end open. An instant
    has ``start == end``."""

    start: float | None
    end: float | None

    def contains(self, instant: float) -> bool:
        """Whether ``instant`` (ms) lies in the extent, ends included."""
        return (self.start is None or self.start <= instant) and (
            self.end is None or instant <= self.end
        )


@dataclass(frozen=True)
class MosaicRule:
    """A parsed ``mosaicRule``.

    Attributes:
        method: how the rasters are ordered (first = on top).
        operation: how overlapping pixels are resolved.
        ascending: order direction (default true, per the mosaic rule object).
        lock_raster_ids: the ObjectIDs of ``esriMosaicLockRaster``.
        sort_field: the catalog field of ``esriMosaicAttribute`` (canonical spelling).
        sort_value: the base value of ``esriMosaicAttribute`` (ms for ``AcquisitionDate``),
            or ``None`` to order by the field's value itself.
        fids: only these ObjectIDs take part; ``None``: no restriction.
    """

    method: MosaicMethod
    operation: MosaicOperation = MosaicOperation.FIRST
    ascending: bool = True
    lock_raster_ids: tuple[int, ...] = ()
    sort_field: str | None = None
    sort_value: float | None = None
    fids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Selection:
    """What a request mosaics: its ``time`` filter (``None``: all times) and ``mosaicRule``."""

    time: TimeExtent | None
    rule: MosaicRule


@dataclass(frozen=True)
class CatalogItem:
    """One raster of a mosaic service: a row of its catalog and the raster itself.

    Attributes:
        object_id: ``OBJECTID``, from 1 in configuration order.
        name: ``Name``.
        acquired: ``AcquisitionDate`` in ms since the epoch (UTC).
        source: the opened raster (in the service CRS).
    """

    object_id: int
    name: str
    acquired: int
    source: RasterSource = field(compare=False)

    @property
    def centre(self) -> Point:
        """Centre of the raster's extent in the service CRS."""
        bounds = self.source.bounds
        return (bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2

    def value(self, field_name: str) -> float | str:
        """The value of a catalog field (canonical name)."""
        values: dict[str, float | str] = {
            OBJECT_ID_FIELD: self.object_id,
            NAME_FIELD: self.name,
            DATE_FIELD: self.acquired,
        }
        return values[field_name]

    def feature(self) -> dict[str, Any]:
        """The catalog row as an ArcGIS feature: the extent polygon and the attributes."""
        b = self.source.bounds
        ring = [[b.left, b.bottom], [b.left, b.top], [b.right, b.top], [b.right, b.bottom]]
        return {
            "geometry": {"rings": [[*ring, ring[0]]]},
            "attributes": {
                OBJECT_ID_FIELD: self.object_id,
                NAME_FIELD: self.name,
                DATE_FIELD: self.acquired,
            },
        }


# Catalog fields as the service resource lists them (ArcGIS field JSON).
CATALOG_FIELDS = (
    {"name": OBJECT_ID_FIELD, "type": "esriFieldTypeOID", "alias": OBJECT_ID_FIELD, "domain": None},
    {
        "name": NAME_FIELD,
        "type": "esriFieldTypeString",
        "alias": NAME_FIELD,
        "domain": None,
        "length": 200,
    },
    {
        "name": DATE_FIELD,
        "type": "esriFieldTypeDate",
        "alias": DATE_FIELD,
        "domain": None,
        "length": 8,
    },
)
_FIELDS = {f["name"].casefold(): str(f["name"]) for f in CATALOG_FIELDS}


def epoch_ms(moment: datetime.datetime) -> int:
    """``moment`` (timezone-aware) in whole ms since the epoch, as ArcGIS date fields hold."""
    return round((moment - _EPOCH).total_seconds() * 1000)


DEFAULT_RULE = MosaicRule(
    MosaicMethod.ATTRIBUTE,
    sort_field=DATE_FIELD,
    sort_value=float(epoch_ms(datetime.datetime(2050, 1, 1, tzinfo=datetime.UTC))),
)


def parse_time(value: str) -> TimeExtent | None:
    """``time``: ``<t>`` or ``<t1>,<t2>`` in ms since the epoch, ``null`` for an open end.

    Returns ``None`` for ``null`` or ``null,null`` (no filter).

    Raises:
        ValueError: not one or two numbers/``null``, or the start after the end.
    """
    parts = [part.strip() for part in value.split(",")]
    if len(parts) > 2:
        raise ValueError("expected <t> or <t1>,<t2>")

    def instant(text: str) -> float | None:
        if text.casefold() == "null":
            return None
        try:
            number = float(text)
        except ValueError:
            raise ValueError(
                "expected milliseconds since 1970-01-01 UTC, or null for an open end"
            ) from None
        if not math.isfinite(number):
            raise ValueError("times must be finite numbers")
        return number

    if len(parts) == 1:
        moment = instant(parts[0])
        return None if moment is None else TimeExtent(moment, moment)
    start, end = instant(parts[0]), instant(parts[1])
    if start is not None and end is not None and start > end:
        raise ValueError("the start is after the end")
    if start is None and end is None:
        return None
    return TimeExtent(start, end)


def parse_mosaic_rule(value: str) -> MosaicRule:
    """``mosaicRule`` JSON (see the module docstring for what is supported).

    Raises:
        ValueError: not a JSON object, an unknown or unsupported method or operation, a
            missing ``lockRasterIds``/``sortField``, an unknown field, a value of the wrong
            type, or a ``where`` clause.
    """
    try:
        document = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError("not valid JSON") from None
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    method = _choice(
        document.get("mosaicMethod"), MosaicMethod, _UNSUPPORTED_METHODS, "mosaicMethod"
    )
    operation = _choice(
        document.get("mosaicOperation"), MosaicOperation, _UNSUPPORTED_OPERATIONS, "mosaicOperation"
    )
    # Clients serialise unset properties as null (and an unset id list as []): not given.
    ascending = document.get("ascending")
    if ascending is None:
        ascending = True
    if not isinstance(ascending, bool):
        raise ValueError("ascending must be true or false")
    if document.get("where"):
        raise ValueError("where clauses are not supported by this server; use fids")
    fids = document.get("fids")
    only = None if fids is None or fids == [] else _ids(fids, "fids")
    operation = operation or MosaicOperation.FIRST
    if method is None:
        # No method: the service's default order, with the request's operation and fids.
        return dataclasses.replace(DEFAULT_RULE, operation=operation, fids=only)
    if method is MosaicMethod.LOCK_RASTER:
        ids = _ids(document.get("lockRasterIds"), "lockRasterIds")
        if not ids:
            raise ValueError("esriMosaicLockRaster needs lockRasterIds")
        return MosaicRule(method, operation, ascending, lock_raster_ids=ids, fids=only)
    if method is MosaicMethod.ATTRIBUTE:
        name = document.get("sortField")
        if not isinstance(name, str) or name.casefold() not in _FIELDS:
            raise ValueError(
                f"esriMosaicAttribute needs sortField, one of {', '.join(_FIELDS.values())}"
            )
        sort_field = _FIELDS[name.casefold()]
        sort_value = _sort_value(document.get("sortValue"), sort_field)
        return MosaicRule(
            method, operation, ascending, sort_field=sort_field, sort_value=sort_value, fids=only
        )
    return MosaicRule(method, operation, ascending, fids=only)


def parse_selection(params: Mapping[str, str]) -> Selection:
    """``time`` and ``mosaicRule`` of a request (lower-case names, as normalised).

    Raises:
        ParameterError: either is invalid; the details name the parameter.
    """
    errors: list[str] = []
    time = _time_param(params, errors)
    rule = DEFAULT_RULE
    if "mosaicrule" in params:
        try:
            rule = parse_mosaic_rule(params["mosaicrule"])
        except ValueError as exc:
            errors.append(f"Invalid mosaicRule '{params['mosaicrule']}': {exc}")
    if errors:
        raise ParameterError(errors)
    return Selection(time, rule)


def composite(
    layers: Sequence[tuple[np.ndarray, np.ndarray]], operation: MosaicOperation
) -> tuple[np.ndarray, np.ndarray]:
    """Combine images, the first on top, into one.

    Args:
        layers: ``(data, valid)`` per image: ``(bands, height, width)`` pixels of one dtype,
            ``(height, width)`` bool; at least one.
        operation: ``MT_FIRST`` keeps the first valid pixel in the order, ``MT_LAST`` the
            last, ``MT_MIN``/``MT_MAX``/``MT_MEAN`` combine the valid pixels band by band (the
            mean rounded for integer data).

    Returns:
        ``(data, valid)``: the combined pixels (0 where no image is valid) and where any is.
    """
    dtype = layers[0][0].dtype
    data = np.zeros_like(layers[0][0])
    valid = np.zeros(layers[0][1].shape, bool)
    if operation in (MosaicOperation.FIRST, MosaicOperation.LAST):
        # Paint bottom first so the image on top is written last.
        painted = layers[::-1] if operation is MosaicOperation.FIRST else layers
        for block, covered in painted:
            data[:, covered] = block[:, covered]
            valid |= covered
        return data, valid
    stack = np.ma.masked_array(
        np.stack([block for block, _ in layers]),
        mask=np.stack([np.broadcast_to(~covered, block.shape) for block, covered in layers]),
    )
    if operation is MosaicOperation.MIN:
        combined = stack.min(axis=0)
    elif operation is MosaicOperation.MAX:
        combined = stack.max(axis=0)
    else:
        combined = stack.mean(axis=0, dtype="float64")
        if dtype.kind in "iu":
            combined = np.ma.round(combined)
    valid = ~np.ma.getmaskarray(combined).all(axis=0)
    data = np.ma.filled(combined, 0).astype(dtype)
    data[:, ~valid] = 0
    return data, valid


class MosaicSource(RasterSource):
    """A mosaic service: its catalog of rasters, and a :class:`Selection` to draw them by.

    The service-level attributes of :class:`RasterSource` describe the whole mosaic: ``crs``
    (shared by every raster), ``bounds`` (their union), ``resolution`` (the finest),
    ``count``/``dtype``/``nodata`` (shared), ``statistics`` (per band: the lowest minimum,
    the highest maximum, the mean of means and of standard deviations; estimates).
    :meth:`selected` gives a view drawing another selection; it shares the rasters, only the
    service's own instance (in the app's ``SOURCES``) is closed.

    Attributes:
        items: the catalog, by ObjectID.
        selection: what :meth:`render` and the pixel queries mosaic.
    """

    def __init__(self, spec: ServiceSpec, items: Sequence[CatalogItem]) -> None:
        """Describe the mosaic of ``items`` (opened rasters); no I/O.

        Raises:
            ValueError: no rasters, or rasters of different CRS, band count or data type.
        """
        # Not RasterSource.__init__: that opens one dataset; the rasters here are open already.
        if not items:
            raise ValueError(f"service {spec.name!r}: a mosaic needs at least one raster")
        first = items[0].source
        for item in items[1:]:
            other = item.source
            if (other.crs, other.count, other.dtype) != (first.crs, first.count, first.dtype):
                raise ValueError(
                    f"service {spec.name!r}: raster {item.name!r} differs from {items[0].name!r} "
                    "in coordinate reference system, band count or data type"
                )
        self.spec = spec
        self.items = tuple(items)
        self.selection = Selection(None, DEFAULT_RULE)
        sources = [item.source for item in items]
        self.crs = first.crs
        self.bounds = BoundingBox(
            min(s.bounds.left for s in sources),
            min(s.bounds.bottom for s in sources),
            max(s.bounds.right for s in sources),
            max(s.bounds.top for s in sources),
        )
        self.resolution = (
            min(s.resolution[0] for s in sources),
            min(s.resolution[1] for s in sources),
        )
        self.width = round((self.bounds.right - self.bounds.left) / self.resolution[0])
        self.height = round((self.bounds.top - self.bounds.bottom) / self.resolution[1])
        self.count = first.count
        self.dtype = first.dtype
        self.nodata = first.nodata
        palettes = [s.palette for s in sources]
        same = all(p is not None and np.array_equal(p, palettes[0]) for p in palettes)
        self.palette = palettes[0] if same else None
        self.statistics = BandStatistics(
            tuple(map(min, zip(*(s.statistics.minimum for s in sources), strict=True))),
            tuple(map(max, zip(*(s.statistics.maximum for s in sources), strict=True))),
            tuple(
                float(np.mean(v)) for v in zip(*(s.statistics.mean for s in sources), strict=True)
            ),
            tuple(
                float(np.mean(v)) for v in zip(*(s.statistics.std for s in sources), strict=True)
            ),
            _pooled_quantiles([s.statistics.quantiles for s in sources]),
        )

    @classmethod
    def open_spec(cls, spec: ServiceSpec) -> MosaicSource:
        """Open every raster of ``spec.rasters``. Blocking.

        Raises:
            rasterio.errors.RasterioError: a raster cannot be opened.
            ValueError: a raster has no CRS, or the rasters do not fit together.
        """
        items: list[CatalogItem] = []
        try:
            for object_id, raster in enumerate(spec.rasters, start=1):
                source = RasterSource.open(ServiceSpec(name=spec.name, path=raster.path))
                items.append(
                    CatalogItem(object_id, raster.label, epoch_ms(raster.acquired), source)
                )
            return cls(spec, items)
        except (RasterioError, ValueError):
            for item in items:
                item.source.close()
            raise

    @property
    def time_extent(self) -> tuple[int, int]:
        """Earliest and latest ``AcquisitionDate`` in ms since the epoch."""
        dates = [item.acquired for item in self.items]
        return min(dates), max(dates)

    def selected(self, selection: Selection) -> MosaicSource:
        """A view of this service drawing ``selection`` (shares the rasters)."""
        view = copy.copy(self)
        view.selection = selection
        return view

    def ordered(self, centre: Point | None = None) -> list[CatalogItem]:
        """The rasters of the selection, the one on top first (at most
        ``MAX_MOSAIC_IMAGE_COUNT``); ``centre`` (service CRS) is the request's centre for
        ``esriMosaicCenter`` (default: the centre of the service extent)."""
        rule, time = self.selection.rule, self.selection.time
        items = [
            item
            for item in self.items
            if (time is None or time.contains(item.acquired))
            and (rule.fids is None or item.object_id in rule.fids)
            and (
                rule.method is not MosaicMethod.LOCK_RASTER
                or item.object_id in rule.lock_raster_ids
            )
        ]
        b = self.bounds
        if rule.method is MosaicMethod.ATTRIBUTE and rule.sort_field is not None:
            name, base = rule.sort_field, rule.sort_value

            def key(item: CatalogItem) -> tuple[Any, int]:
                value = item.value(name)
                if base is not None and not isinstance(value, str):
                    return abs(value - base), item.object_id
                return value, item.object_id

        elif rule.method in (MosaicMethod.NORTHWEST, MosaicMethod.CENTER):
            if rule.method is MosaicMethod.NORTHWEST:
                target = (b.left, b.top)
            else:
                target = centre or ((b.left + b.right) / 2, (b.bottom + b.top) / 2)

            def key(item: CatalogItem) -> tuple[Any, int]:
                x, y = item.centre
                return math.hypot(x - target[0], y - target[1]), item.object_id

        else:

            def key(item: CatalogItem) -> tuple[Any, int]:
                return item.object_id, item.object_id

        items.sort(key=key, reverse=not rule.ascending)
        return items[:MAX_MOSAIC_IMAGE_COUNT]

    def render(self, request: RenderRequest) -> Rendered:
        """Warp each selected raster into the requested grid and :func:`composite` them per
        the selection's ``mosaicOperation``; transparent where none has data."""
        grid = grid_transform(request.bounds, request.width, request.height)
        expand = request.expand_palette and self.palette is not None
        ranges = self._value_ranges(request.bands, expand)
        layers = []
        for item in self.ordered(self._centre(request)):
            rendered = item.source.render(request)
            if rendered.valid.any():
                layers.append((rendered.data, rendered.valid))
        if not layers:
            count = 3 if expand else len(request.bands)
            dtype = "uint8" if expand else np.promote_types(self.dtype, np.uint8).name
            empty = np.zeros((count, request.height, request.width), dtype)
            return Rendered(empty, np.zeros(empty.shape[1:], bool), ranges, grid)
        data, valid = composite(layers, self.selection.rule.operation)
        return Rendered(data, valid, ranges, grid)

    @contextlib.contextmanager
    def dataset(self) -> Iterator[DatasetReader]:
        """The dataset of the raster on top of the selection (of the default order when the
        selection is empty): what computeStatisticsHistograms reads."""
        items = self.ordered() or self.selected(Selection(None, DEFAULT_RULE)).ordered()
        with items[0].source.dataset() as dataset:
            yield dataset

    def close(self) -> None:
        """Close every raster. Renders must not be running."""
        for item in self.items:
            item.source.close()

    def _centre(self, request: RenderRequest) -> Point | None:
        if self.selection.rule.method is not MosaicMethod.CENTER:
            return None
        xmin, ymin, xmax, ymax = request.bounds
        try:
            (x,), (y,) = transform(request.crs, self.crs, [(xmin + xmax) / 2], [(ymin + ymax) / 2])
        except RasterioError:
            return None
        return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def open_service(spec: ServiceSpec) -> RasterSource:
    """Open a service: a :class:`MosaicSource` for ``rasters``, else a :class:`RasterSource`.
    Blocking.

    Raises:
        rasterio.errors.RasterioError: a raster cannot be opened.
        ValueError: a raster has no CRS, or the rasters of a mosaic do not fit together.
    """
    return MosaicSource.open_spec(spec) if spec.rasters else RasterSource.open(spec)


def for_request(source: RasterSource, params: Mapping[str, str]) -> RasterSource:
    """The source to answer a request with: a mosaic service narrowed to the request's
    ``time`` and ``mosaicRule``; any other service as it is (a raster-dataset service has one
    raster, and ArcGIS ignores both there).

    Raises:
        ParameterError: ``time`` or ``mosaicRule`` is invalid (mosaic services only).
    """
    if not isinstance(source, MosaicSource):
        return source
    return source.selected(parse_selection(params))


def identify(source: MosaicSource, geometry: Geometry, point: Point) -> dict[str, Any]:
    """identify on a mosaic: the mosaicked value at ``point`` (in ``geometry.crs``), with the
    rasters of the selection under it as ``catalogItems`` (a feature set, on top first), the
    value of each in ``properties.Values`` (band values joined by spaces, ``NoData``) and
    ``catalogItemVisibilities`` 1 for the rasters the value comes from, else 0 (ArcGIS REST
    "Identify (Image Service)", the response of a mosaic dataset)."""
    ((x, y),) = to_source_points(source, [point], geometry.crs)
    items = [item for item in source.ordered((x, y)) if _covers(item.source.bounds, x, y)]
    values = [read_points(item.source, [(x, y)])[0] for item in items]
    value, used = _combine(values, source.selection.rule.operation, source.dtype)
    spatial_reference = spatial_reference_json(source.crs)
    return {
        "objectId": 0,
        "name": "Pixel",
        "value": format_value(value, source.dtype),
        "location": {"x": x, "y": y, "spatialReference": spatial_reference},
        "properties": {
            "Values": [format_value(v, source.dtype).replace(", ", " ") for v in values]
        },
        "catalogItems": {
            "objectIdFieldName": OBJECT_ID_FIELD,
            "geometryType": "esriGeometryPolygon",
            "spatialReference": spatial_reference,
            "features": [item.feature() for item in items],
        },
        "catalogItemVisibilities": [1 if i in used else 0 for i in range(len(items))],
    }


def samples(source: MosaicSource, geometry: Geometry) -> dict[str, Any]:
    """getSamples on a mosaic: per point the mosaicked value, ``rasterId`` the ObjectID of
    the raster it comes from (the first one for MT_MIN/MAX/MEAN, 0 for NoData).

    Raises:
        ValueError: a polyline, polygon or envelope (points and multipoints only).
    """
    located = to_source_points(source, sample_points(geometry), geometry.crs)
    items = source.ordered()
    per_item = [read_points(item.source, located) for item in items]
    spatial_reference = spatial_reference_json(source.crs)
    answer = []
    for index, (x, y) in enumerate(located):
        value, used = _combine(
            [values[index] for values in per_item], source.selection.rule.operation, source.dtype
        )
        answer.append(
            {
                "location": {"x": x, "y": y, "spatialReference": spatial_reference},
                "locationId": index,
                "value": format_value(value, source.dtype),
                "rasterId": items[used[0]].object_id if used else 0,
                "resolution": source.resolution[0],
            }
        )
    return {"samples": answer}


def query(source: MosaicSource, params: Mapping[str, str]) -> dict[str, Any]:
    """query: the catalog rows (ArcGIS REST "Query (Image Service)"), by ObjectID, as a
    feature set (``features`` with ``attributes`` and, unless ``returnGeometry=false``, the
    extent polygon), or ``{"objectIdFieldName", "objectIds"}`` with ``returnIdsOnly``, or
    ``{"count"}`` with ``returnCountOnly``.

    Filters: ``objectIds`` (comma list), ``time`` (as in :func:`parse_time`), ``where`` only
    as ``1=1``; ``outFields`` ``*`` (the default) or a comma list of catalog fields.

    Raises:
        ParameterError: an invalid value, an unknown field, another ``where``, a spatial
            filter (``geometry``) or ``returnExtentOnly=true``, which this server does not
            implement.
    """
    errors: list[str] = []
    time = _time_param(params, errors)
    where = params.get("where", "1=1").replace(" ", "")
    if where != "1=1":
        errors.append(f"Invalid where '{params['where']}': only 1=1 is supported by this server")
    if "geometry" in params:
        errors.append("Invalid geometry: spatial filters are not supported by this server")
    if params.get("returnextentonly", "false").lower() != "false":
        errors.append("Invalid returnExtentOnly: not supported by this server")
    ids: set[int] | None = None
    if "objectids" in params:
        try:
            ids = {int(part) for part in params["objectids"].split(",")}
        except ValueError:
            errors.append(f"Invalid objectIds '{params['objectids']}': expected integers")
    out_fields = [part.strip() for part in params.get("outfields", "*").split(",")]
    if "*" in out_fields:
        names = [str(f["name"]) for f in CATALOG_FIELDS]
    else:
        unknown = [name for name in out_fields if name.casefold() not in _FIELDS]
        if unknown:
            errors.append(f"Invalid outFields: unknown fields {', '.join(unknown)}")
        names = [_FIELDS[n.casefold()] for n in out_fields if n.casefold() in _FIELDS]
    flags = {}
    for flag in ("returnGeometry", "returnIdsOnly", "returnCountOnly"):
        raw = params.get(flag.lower(), "true" if flag == "returnGeometry" else "false")
        if raw.lower() not in ("true", "false"):
            errors.append(f"Invalid {flag} '{raw}': expected true or false")
        flags[flag] = raw.lower() == "true"
    if errors:
        raise ParameterError(errors)
    items = [
        item
        for item in source.items
        if (ids is None or item.object_id in ids) and (time is None or time.contains(item.acquired))
    ]
    if flags["returnCountOnly"]:
        return {"count": len(items)}
    if flags["returnIdsOnly"]:
        return {
            "objectIdFieldName": OBJECT_ID_FIELD,
            "objectIds": [item.object_id for item in items],
        }
    features = []
    for item in items:
        feature = item.feature()
        feature["attributes"] = {name: feature["attributes"][name] for name in names}
        if not flags["returnGeometry"]:
            del feature["geometry"]
        features.append(feature)
    return {
        "objectIdFieldName": OBJECT_ID_FIELD,
        "fields": [dict(f) for f in CATALOG_FIELDS if f["name"] in names],
        "geometryType": "esriGeometryPolygon",
        "spatialReference": spatial_reference_json(source.crs),
        "features": features,
    }


def service_fields(source: MosaicSource) -> dict[str, Any]:
    """What a mosaic adds to the ImageServer root resource (ArcGIS REST "Image Service"):
    the ``Catalog`` capability (:func:`query`), the catalog fields, the mosaic defaults, and
    ``timeInfo`` with ``startTimeField`` ``AcquisitionDate``, no ``endTimeField`` (each
    raster is an instant), ``timeExtent`` ``[earliest, latest]`` in ms, ``timeReference``
    null (times are UTC) and a default step
    of one year for time sliders."""
    start, end = source.time_extent
    return {
        "capabilities": "Image,Metadata,Catalog",
        "serviceSourceType": "esriImageServiceSourceTypeMosaicDataset",
        "objectIdField": OBJECT_ID_FIELD,
        "fields": [dict(f) for f in CATALOG_FIELDS],
        "defaultMosaicMethod": _METHOD_NAMES[DEFAULT_RULE.method],
        "allowedMosaicMethods": ",".join(_METHOD_NAMES.values()),
        "sortField": DEFAULT_RULE.sort_field,
        "sortValue": _DEFAULT_SORT_VALUE,
        "sortAscending": DEFAULT_RULE.ascending,
        "mosaicOperator": "First",
        "maxMosaicImageCount": MAX_MOSAIC_IMAGE_COUNT,
        "hasMultidimensions": False,
        "timeInfo": {
            "startTimeField": DATE_FIELD,
            "endTimeField": None,
            "timeExtent": [start, end],
            "timeReference": None,
            "defaultTimeInterval": 1,
            "defaultTimeIntervalUnits": "esriTimeUnitsYears",
        },
    }


def _choice(value: Any, kind: type[_E], unsupported: Sequence[str], name: str) -> _E | None:
    """An enum member by its ArcGIS name (case-insensitive); ``None`` when not given."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    for member in kind:
        if member.value.casefold() == value.casefold():
            return member
    supported = ", ".join(member.value for member in kind)
    if value.casefold() in (u.casefold() for u in unsupported):
        raise ValueError(f"{name} {value} is not supported by this service; use {supported}")
    raise ValueError(f"unknown {name} {value!r}; expected {supported}")


def _time_param(params: Mapping[str, str], errors: list[str]) -> TimeExtent | None:
    """The request's ``time`` (``None`` when absent), or ``None`` with a message in
    ``errors`` when invalid."""
    if "time" not in params:
        return None
    try:
        return parse_time(params["time"])
    except ValueError as exc:
        errors.append(f"Invalid time '{params['time']}': {exc}")
        return None


def _ids(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{name} must be a list of ObjectIDs (integers)")
    return tuple(value)


def _sort_value(value: Any, sort_field: str) -> float | None:
    """``sortValue`` as a number: ms for ``AcquisitionDate`` (a number, or a date such as
    ``2050/01/01`` or ``2050-01-01T00:00:00``, UTC unless it says), as is for ``OBJECTID``."""
    if value is None or value == "":
        return None
    if sort_field == NAME_FIELD:
        raise ValueError("sortValue applies to OBJECTID and AcquisitionDate, not Name")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        if sort_field == DATE_FIELD:
            try:
                moment = datetime.datetime.fromisoformat(value.strip().replace("/", "-"))
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.UTC)
                return float(epoch_ms(moment))
    raise ValueError(f"sortValue {value!r} is not a value of {sort_field}")


def _covers(bounds: BoundingBox, x: float, y: float) -> bool:
    return bounds.left <= x < bounds.right and bounds.bottom < y <= bounds.top


def _combine(
    values: Sequence[tuple[float, ...] | None], operation: MosaicOperation, dtype: str
) -> tuple[tuple[float, ...] | None, list[int]]:
    """The mosaicked value of one pixel from the values of the rasters (on top first;
    ``None`` = NoData there), and the indexes of the rasters it comes from; a mean of
    integer data (``dtype``) is rounded as :func:`composite` rounds it."""
    present = [i for i, v in enumerate(values) if v is not None]
    if not present:
        return None, []
    if operation is MosaicOperation.FIRST:
        return values[present[0]], present[:1]
    if operation is MosaicOperation.LAST:
        return values[present[-1]], present[-1:]
    stack = np.array([values[i] for i in present], dtype="float64")
    if operation is MosaicOperation.MIN:
        combined = stack.min(axis=0)
    elif operation is MosaicOperation.MAX:
        combined = stack.max(axis=0)
    else:
        combined = stack.mean(axis=0)
        if np.dtype(dtype).kind in "iu":
            combined = np.round(combined)
    return tuple(float(v) for v in combined), present


def _pooled_quantiles(quantiles: Sequence[np.ndarray]) -> np.ndarray:
    """The quantiles ``(bands, QUANTILE_STEPS + 1)`` of the rasters' pooled samples, each
    raster weighing the same: every raster's quantiles are points of equal probability mass,
    so the percentiles of their union are those of the equal-weight mixture."""
    levels = np.linspace(0.0, 100.0, QUANTILE_STEPS + 1)
    return np.stack(
        [np.percentile(np.concatenate(bands), levels) for bands in zip(*quantiles, strict=True)]
    )
