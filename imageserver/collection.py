"""``CreateImageCollection``: its parameters, and the mosaic a job builds from its inputs.

Parameters follow the Raster Analysis "Create Image Collection" page (``docs/arcgis-rest.md``
§5.2): ``inputRasters``, ``imageCollection``, ``rasterType`` and ``context`` are JSON strings
(``imageCollection`` and ``rasterType`` may also be a bare name). :func:`parse_request` checks
them all at submit time and reports every problem at once, as ArcGIS's synchronous
"Invalid or missing input parameters" error does; what can only be known by reading the
rasters (a missing file, a link out of the raster store, rasters that cannot be reprojected)
fails the running job instead (:class:`~imageserver.jobs.JobFailure`).

The mosaic (:func:`build_mosaic`) is a tiled GeoTIFF on one grid in ``context.outSR`` (default:
the first input's CRS): each input is warped onto it through a rasterio ``WarpedVRT``
(nearest neighbour, so pixel values are kept), later inputs on top of earlier ones wherever
they hold data (:func:`imageserver.mosaic.composite` with ``MT_FIRST``, as time-enabled mosaics
draw); nodata and masks of the inputs are respected and the output carries a mask
band (no nodata value, so no valid pixel can collide with one) and no colour table. Raster
types are recorded, not applied: georeferenced inputs are mosaicked as they are (no
photogrammetric adjustment).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from imageserver.config import HOSTED_FOLDER, ITEM_ID_PATTERN, SERVICE_NAME_PATTERN
from imageserver.jobs import Job, JobFailure, MessageType
from imageserver.mosaic import MosaicOperation, composite
from imageserver.params import ParameterError
from imageserver.raster import RasterSource
from imageserver.spatialref import crs_from_wkid, spatial_reference_from_json

# The data-store prefix of uris in the raster store, as ArcGIS writes "/fileshare/..." (§5.2).
RASTER_STORE_PREFIX = "rasterStore"
# rasterTypeName values listed by the Create Image Collection page (§5.2).
RASTER_TYPES = (
    "Raster Dataset",
    "UAV/UAS",
    "Aerial",
    "ScannedAerial",
    "Landsat 7 ETM+",
    "Landsat 8",
    "Sentinel-2",
    "ZY3-SASMAC",
    "ZY3-CRESDA",
)
# imageCollectionProps.imageCollectionType values, UAV/UAS the default (§5.2).
COLLECTION_TYPES = ("UAV/UAS", "Aerial", "ScannedAerial", "Satellite")
# Copied from the Esri page, a JSON value arrives with these instead of straight quotes (§5.2).
_TYPOGRAPHIC_QUOTES = "\u201c\u201d\u201e\u2018\u2019"
# A service of this server: "<name>" at the root, or "Hosted/<name>" (a published collection).
_SERVICE_PATH = re.compile(
    rf"^/arcgis/rest/services/((?:{HOSTED_FOLDER}/)?([^/]+))/ImageServer/?$", re.IGNORECASE
)
# Rows of the mosaic written per step: a multiple of the 256-pixel tiles.
_STRIP_ROWS = 512
_BLOCK = 256

Opener = Callable[[], contextlib.AbstractContextManager[DatasetReader]]
ServiceFinder = Callable[[str], tuple[str, RasterSource] | None]


@dataclass(frozen=True)
class InputRaster:
    """One input of a job.

    Attributes:
        label: the input as the client named it (uri, url or ``item <id>``), for messages.
        open: opens it for reading in the worker thread; raises
            :class:`~imageserver.jobs.JobFailure` when it is missing or not allowed.
        service: the name of the service of this server it comes from (``urls`` inputs).
    """

    label: str
    open: Opener
    service: str | None = None


@dataclass(frozen=True)
class CollectionRequest:
    """A valid ``CreateImageCollection`` submission.

    Attributes:
        inputs: the rasters, bottom first (later ones are drawn on top).
        name: the name of the service to create.
        item_id: the item id of the new collection, or ``None`` to make one.
        raster_type: the canonical ``rasterTypeName`` (recorded only).
        collection_type: ``imageCollectionProps.imageCollectionType`` (recorded only).
        out_crs: ``context.outSR``, or ``None`` for the first input's CRS.
        given: parameter name -> value as given (parsed JSON or text), for
            ``jobs/<id>/inputs/<name>``.
    """

    inputs: tuple[InputRaster, ...]
    name: str
    item_id: str | None
    raster_type: str
    collection_type: str
    out_crs: CRS | None
    given: dict[str, Any]


@dataclass(frozen=True)
class Mosaic:
    """What :func:`build_mosaic` wrote: its size in pixels, band count, data type and CRS."""

    width: int
    height: int
    count: int
    dtype: str
    crs: CRS


def parse_request(
    params: Mapping[str, str],
    *,
    raster_store: Path | None,
    items: Mapping[str, Path],
    find_service: ServiceFinder,
) -> CollectionRequest:
    """Validate the submitJob parameters (names lower-cased, as
    :func:`~imageserver.params.normalize_params` gives them).

    ``raster_store`` is the folder ``uris`` resolve in, ``items`` the item registry and
    ``find_service`` looks up a service of this server by name (for ``urls``).

    Raises:
        ParameterError: one message per problem: a missing parameter, JSON that does not
            parse (typographic quotes named as such), an input kind this server does not
            have, a uri outside the raster store or with ``..``, an unknown item or service,
            a bad collection name, an unknown raster type, an unknown ``outSR``.
    """
    problems: list[str] = []
    given: dict[str, Any] = {}
    for name, required in (
        ("inputRasters", True),
        ("imageCollection", True),
        ("rasterType", True),
        ("context", False),
    ):
        value = _parameter(params, name, required, problems)
        if value is not None:
            given[name] = value
    inputs = _inputs(given.get("inputRasters"), raster_store, items, find_service, problems)
    name, item_id = _collection(given.get("imageCollection"), items, problems)
    raster_type, collection_type = _raster_type(given.get("rasterType"), problems)
    out_crs = _out_crs(given.get("context"), problems)
    if problems or name is None or raster_type is None:
        raise ParameterError(problems)
    return CollectionRequest(
        inputs=tuple(inputs),
        name=name,
        item_id=item_id,
        raster_type=raster_type,
        collection_type=collection_type,
        out_crs=out_crs,
        given=given,
    )


def _parameter(params: Mapping[str, str], name: str, required: bool, problems: list[str]) -> Any:
    """A parameter's JSON value, or its text when it is not JSON-looking (a bare name)."""
    raw = params.get(name.lower())
    if raw is None:
        if required:
            problems.append(f"{name} is required")
        return None
    if any(quote in raw for quote in _TYPOGRAPHIC_QUOTES):
        problems.append(
            f"{name}: typographic quotes (\u201c \u201d) are not JSON quotes; "
            'write the value with straight double quotes (")'
        )
        return None
    text = raw.strip()
    if text[:1] not in ("{", "[", '"'):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{name}: invalid JSON ({exc.msg} at character {exc.pos})")
        return None


def _inputs(
    value: Any,
    raster_store: Path | None,
    items: Mapping[str, Path],
    find_service: ServiceFinder,
    problems: list[str],
) -> list[InputRaster]:
    """``inputRasters``: item ids win over urls, urls over uris (§5.2: "itemId wins")."""
    if value is None:
        return []
    if not isinstance(value, dict):
        problems.append("inputRasters must be a JSON object with itemIds, urls or uris")
        return []
    if "byref" in value and not isinstance(value["byref"], bool):
        problems.append("inputRasters: byref must be true or false")
    for plural, single in (("itemIds", "itemId"), ("urls", "url"), ("uris", "uri")):
        if plural in value or single in value:
            entries = value[plural] if plural in value else [value[single]]
            break
    else:
        if "folderId" in value:
            problems.append(
                "inputRasters: folderId is not supported here (this server has no portal "
                "folders); give itemIds, urls or uris"
            )
        else:
            problems.append("inputRasters needs itemIds, urls or uris")
        return []
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, str) and e.strip() for e in entries)
    ):
        problems.append(f"inputRasters: {plural} must be a non-empty list of strings")
        return []
    kinds = {
        "itemIds": lambda e: _item_input(e, items, problems),
        "urls": lambda e: _url_input(e, find_service, problems),
        "uris": lambda e: _uri_input(e, raster_store, problems),
    }
    found = [kinds[plural](entry.strip()) for entry in entries]
    return [raster for raster in found if raster is not None]


def _item_input(item_id: str, items: Mapping[str, Path], problems: list[str]) -> InputRaster | None:
    path = items.get(item_id)
    if path is None:
        problems.append(f"inputRasters: unknown item {item_id}")
        return None
    label = f"item {item_id}"
    return InputRaster(label, lambda: _open_file(path, label))


def _url_input(url: str, find_service: ServiceFinder, problems: list[str]) -> InputRaster | None:
    match = _SERVICE_PATH.match(urlsplit(url).path)
    found = None if match is None else find_service(match.group(1))
    if found is None:
        problems.append(f"inputRasters: {url} is not an ImageServer of this server")
        return None
    name, source = found
    return InputRaster(url, source.dataset, service=name)


def _uri_input(uri: str, raster_store: Path | None, problems: list[str]) -> InputRaster | None:
    """A uri in the raster store: ``/rasterStore/<path>`` or ``<path>`` relative to it."""
    if raster_store is None:
        problems.append(f"inputRasters: {uri}: this server has no raster store (raster_store)")
        return None
    if "://" in uri:
        problems.append(
            f"inputRasters: {uri}: only paths in the raster store are accepted "
            f"(/{RASTER_STORE_PREFIX}/<file>)"
        )
        return None
    parts = PurePosixPath(uri).parts
    if uri.startswith("/"):
        if len(parts) < 3 or parts[1].casefold() != RASTER_STORE_PREFIX.casefold():
            problems.append(
                f"inputRasters: {uri} is outside the raster store "
                f"(uris start with /{RASTER_STORE_PREFIX}/)"
            )
            return None
        parts = parts[2:]
    if ".." in parts or "\\" in uri:
        problems.append(f"inputRasters: {uri}: '..' and '\\' are not allowed in uris")
        return None
    relative = PurePosixPath(*parts)
    return InputRaster(uri, lambda: _open_in_store(raster_store, relative, uri))


def _open_in_store(store: Path, relative: PurePosixPath, uri: str) -> DatasetReader:
    """Open ``store/relative`` unless a link leads it out of the store.

    Raises:
        JobFailure: no such file, outside the store once links are followed, unreadable.
    """
    root = store.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise JobFailure(f"{uri} is outside the raster store (a link leads out of it)")
    if not path.is_file():
        raise JobFailure(f"{uri}: no such raster in the raster store")
    return _open_file(path, uri)


def _open_file(path: Path, label: str) -> DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        raise JobFailure(f"{label}: not a raster this server can read") from exc


def _collection(
    value: Any, items: Mapping[str, Path], problems: list[str]
) -> tuple[str | None, str | None]:
    """``imageCollection`` -> (service name, item id): ``serviceProperties.name``, the name in
    a service ``url``, a new ``itemId`` (also the name), or a bare name."""
    name: Any = None
    item_id: str | None = None
    if isinstance(value, str):
        name = value
    elif isinstance(value, dict):
        if isinstance(value.get("serviceProperties"), dict):
            name = value["serviceProperties"].get("name")
        elif "url" in value:
            # The collection's name, whether the url names it in the Hosted folder or not.
            match = _SERVICE_PATH.match(urlsplit(str(value["url"])).path)
            name = match.group(2) if match else None
        elif "itemId" in value:
            item_id = str(value["itemId"])
            if item_id in items:
                problems.append(
                    f"imageCollection: item {item_id} exists; this server only creates new "
                    "image collections"
                )
                return None, None
            if not re.match(ITEM_ID_PATTERN, item_id):
                problems.append("imageCollection: itemId must be letters, digits, '_' or '-'")
                return None, None
            name = item_id
        elif "uri" in value:
            problems.append("imageCollection: uri is not supported here; give serviceProperties")
            return None, None
    elif value is None:
        return None, None
    if not isinstance(name, str) or not re.match(SERVICE_NAME_PATTERN, name):
        problems.append(
            "imageCollection needs serviceProperties.name (or a service url): a name of "
            "letters, digits, '_', '.' or '-'"
        )
        return None, None
    return name, item_id


def _raster_type(value: Any, problems: list[str]) -> tuple[str | None, str]:
    """``rasterType`` -> (canonical rasterTypeName, imageCollectionType)."""
    collection_type = COLLECTION_TYPES[0]
    if value is None:
        return None, collection_type
    name = value if isinstance(value, str) else None
    if isinstance(value, dict):
        name = value.get("rasterTypeName")
        props = value.get("imageCollectionProps")
        if isinstance(props, dict) and "imageCollectionType" in props:
            wanted = props["imageCollectionType"]
            known = {t.casefold(): t for t in COLLECTION_TYPES}
            if not isinstance(wanted, str) or wanted.casefold() not in known:
                problems.append(
                    f"rasterType: imageCollectionType must be one of {', '.join(COLLECTION_TYPES)}"
                )
            else:
                collection_type = known[wanted.casefold()]
    canonical = {t.casefold(): t for t in RASTER_TYPES}
    if not isinstance(name, str) or name.casefold() not in canonical:
        problems.append(
            f"rasterType: unknown rasterTypeName {name!r}; known: {', '.join(RASTER_TYPES)}"
        )
        return None, collection_type
    return canonical[name.casefold()], collection_type


def _out_crs(value: Any, problems: list[str]) -> CRS | None:
    """``context.outSR`` (spatial-reference JSON or a bare WKID), if any."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append("context must be a JSON object")
        return None
    out_sr = value.get("outSR")
    if out_sr is None:
        return None
    try:
        if isinstance(out_sr, int) and not isinstance(out_sr, bool):
            return crs_from_wkid(out_sr)
        if isinstance(out_sr, dict):
            return spatial_reference_from_json(out_sr)
    except ValueError as exc:
        problems.append(f"context: outSR: {exc}")
        return None
    problems.append('context: outSR must be spatial-reference JSON such as {"wkid": 3857}')
    return None


def build_mosaic(
    inputs: Sequence[InputRaster], out_crs: CRS | None, path: Path, job: Job, max_pixels: int
) -> Mosaic:
    """Mosaic ``inputs`` (bottom first) into a GeoTIFF at ``path``, in ``out_crs`` (default:
    the first input's CRS), reporting each step to ``job``. Blocking: run it in a worker
    thread.

    The grid: the finest pixel size of the inputs in the output CRS, covering all their
    footprints; aligned on the first input's pixel grid when it is already in the output CRS
    (so that input is copied without resampling), else on multiples of the pixel size.

    Raises:
        JobFailure: an input is missing, unreadable or without CRS, the inputs have different
            band counts, cannot be reprojected to ``out_crs``, or the mosaic would exceed
            ``max_pixels``.
        JobCancelled: the job was cancelled (between two steps).
    """
    with contextlib.ExitStack() as stack:
        datasets: list[DatasetReader] = []
        for number, raster in enumerate(inputs, start=1):
            job.step(f"Reading input {number} of {len(inputs)}: {raster.label}")
            dataset = stack.enter_context(raster.open())
            if dataset.crs is None:
                raise JobFailure(f"{raster.label}: the raster has no coordinate reference system")
            datasets.append(dataset)
        counts = {dataset.count for dataset in datasets}
        if len(counts) > 1:
            raise JobFailure(
                f"the inputs have different band counts ({', '.join(map(str, sorted(counts)))}); "
                "an image collection needs the same bands in every raster"
            )
        crs = out_crs or datasets[0].crs
        transform, width, height = _grid(datasets, [r.label for r in inputs], crs)
        if width * height > max_pixels:
            raise JobFailure(
                f"the mosaic would be {width} x {height} pixels, more than the {max_pixels} "
                "this server allows (jobs.max_pixels)"
            )
        count = datasets[0].count
        dtype = np.result_type(*(dataset.dtypes[0] for dataset in datasets)).name
        try:
            warped = [
                stack.enter_context(
                    WarpedVRT(
                        dataset,
                        crs=crs,
                        transform=transform,
                        width=width,
                        height=height,
                        resampling=Resampling.nearest,
                        add_alpha=True,
                    )
                )
                for dataset in datasets
            ]
        except RasterioError as exc:
            raise JobFailure(f"the inputs cannot be reprojected to {_crs_name(crs)}") from exc
        strips = [
            Window(0, row, width, min(_STRIP_ROWS, height - row))
            for row in range(0, height, _STRIP_ROWS)
        ]
        job.add_steps(len(strips))
        job.message(
            MessageType.INFORMATIVE,
            f"Mosaicking {len(inputs)} rasters into {width} x {height} pixels, {count} bands "
            f"of {dtype}, in {_crs_name(crs)}",
        )
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": count,
            "dtype": dtype,
            "crs": crs,
            "transform": transform,
            "tiled": True,
            "blockxsize": _BLOCK,
            "blockysize": _BLOCK,
            "compress": "deflate",
        }
        bands = list(range(1, count + 1))
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as out:
            for window in strips:
                job.step()
                data = np.zeros((count, int(window.height), int(window.width)), dtype)
                valid = np.zeros(data.shape[1:], bool)
                layers = []
                for source in reversed(warped):  # later inputs on top: first in the order
                    # The alpha band marks where the input has data (nodata and masks applied).
                    covered = source.read(count + 1, window=window) > 0
                    if covered.any():
                        layers.append((source.read(bands, window=window).astype(dtype), covered))
                if layers:
                    data, valid = composite(layers, MosaicOperation.FIRST)
                out.write(data, window=window)
                out.write_mask(valid.astype(np.uint8) * 255, window=window)
            job.step("Building overviews")
            factors = _overview_factors(width, height)
            if factors:
                out.build_overviews(factors, Resampling.average)
        return Mosaic(width, height, count, dtype, crs)


def _grid(
    datasets: Sequence[DatasetReader], labels: Sequence[str], crs: CRS
) -> tuple[Affine, int, int]:
    """The output grid (transform, width, height) in ``crs`` covering every dataset."""
    lefts, bottoms, rights, tops, sizes = [], [], [], [], []
    for dataset, label in zip(datasets, labels, strict=True):
        if dataset.crs == crs:
            left, bottom, right, top = dataset.bounds
            size = (abs(dataset.res[0]), abs(dataset.res[1]))
        else:
            try:
                left, bottom, right, top = transform_bounds(
                    dataset.crs, crs, *dataset.bounds, densify_pts=21
                )
                default, _, _ = calculate_default_transform(
                    dataset.crs, crs, dataset.width, dataset.height, *dataset.bounds
                )
            except (RasterioError, ValueError) as exc:
                raise JobFailure(f"{label} cannot be reprojected to {_crs_name(crs)}") from exc
            size = (abs(default.a), abs(default.e))
            if not all(math.isfinite(v) for v in (left, bottom, right, top, *size)):
                raise JobFailure(f"{label} cannot be reprojected to {_crs_name(crs)}")
        lefts.append(left)
        bottoms.append(bottom)
        rights.append(right)
        tops.append(top)
        sizes.append(size)
    size_x = min(s[0] for s in sizes)
    size_y = min(s[1] for s in sizes)
    first = datasets[0]
    origin_x, origin_y = (first.transform.c, first.transform.f) if first.crs == crs else (0, 0)
    # Snap outwards onto the grid through the origin; the epsilon keeps an edge that is
    # already on the grid from growing by a pixel through rounding.
    left = origin_x + math.floor((min(lefts) - origin_x) / size_x + 1e-6) * size_x
    top = origin_y + math.ceil((max(tops) - origin_y) / size_y - 1e-6) * size_y
    width = math.ceil((max(rights) - left) / size_x - 1e-6)
    height = math.ceil((top - min(bottoms)) / size_y - 1e-6)
    if width <= 0 or height <= 0:
        raise JobFailure("the inputs cover no area")
    return Affine(size_x, 0, left, 0, -size_y, top), width, height


def _overview_factors(width: int, height: int) -> list[int]:
    """2, 4, 8... until the smallest overview fits in one tile."""
    factors = []
    factor = 2
    while max(width, height) / factor >= _BLOCK / 2:
        factors.append(factor)
        factor *= 2
    return factors


def _crs_name(crs: CRS) -> str:
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else "the output spatial reference"
