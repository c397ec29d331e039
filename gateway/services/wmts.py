"""WMTS 1.0.0 (OGC 07-057r7): the ServiceMetadata document and tiles, by KVP and RESTful.

Routes:

- ``GET /wmts?SERVICE=WMTS&REQUEST=GetCapabilities`` and ``GET /wmts/1.0.0/WMTSCapabilities.xml``:
  the ServiceMetadata (capabilities) document. A bare ``/wmts`` and
  ``SERVICE=WMS&REQUEST=GetCapabilities`` (what QGIS asks a bare endpoint) get it too.
- ``GET /wmts?SERVICE=WMTS&REQUEST=GetTile&...`` (KVP, 07-057r7 section 8) and
  ``GET /wmts/1.0.0/<layer>/<Style>/<TileMatrixSet>/<TileMatrix>/<TileRow>/<TileCol>.<png|jpg>``
  (RESTful, section 10): one tile, through the same ``TilePipeline`` (and cache entries) as XYZ.

Errors are OWS 1.1 ExceptionReports (06-121r3 section 8) with the exceptionCode, locator and HTTP
status the OGC ETS (ets-wmts10) checks: 400 for KVP requests, 404 for RESTful misses, 406 for an
``Accept`` that excludes XML, 501 for GetFeatureInfo, the upstream's 502/504 when it fails.
"""

from __future__ import annotations

import re
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from aiohttp import web
from lxml import etree

from gateway.config import ServiceConfig
from gateway.grids import WEB_MERCATOR_QUAD, Grid, TileLimits
from gateway.imaging import EXPORT_FORMATS
from gateway.services.common import CONFIG, NO_STORE, PIPELINE, public_base
from gateway.services.xyz import tile_response
from gateway.sources.imageserver import UpstreamError
from gateway.tiles import Layer, TilePipeline, TileRequest

WMTS_NS: Final = "http://www.opengis.net/wmts/1.0"
OWS_NS: Final = "http://www.opengis.net/ows/1.1"
XLINK_NS: Final = "http://www.w3.org/1999/xlink"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
_NSMAP: Final = {None: WMTS_NS, "ows": OWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}
_CAPABILITIES_SCHEMA: Final = (
    f"{WMTS_NS} http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"
)
_EXCEPTION_SCHEMA: Final = f"{OWS_NS} http://schemas.opengis.net/ows/1.1.0/owsExceptionReport.xsd"

VERSION: Final = "1.0.0"
STYLE: Final = "default"
CAPABILITIES_PATH: Final = f"/wmts/{VERSION}/WMTSCapabilities.xml"
# The sections a GetCapabilities ``Sections`` parameter may name (06-121r3 section 7.3.3, plus
# WMTS Themes), in document order; this service has no Themes to list.
SECTIONS: Final = ("ServiceIdentification", "ServiceProvider", "OperationsMetadata", "Contents")
_SECTION_NAMES: Final = frozenset((*SECTIONS, "Themes", "All"))
# Mandatory GetTile parameters after SERVICE and REQUEST, spelled as 07-057r7 Table 29 spells
# them (the spelling is the exception's locator; names match in any case).
_GET_TILE_PARAMETERS: Final = (
    "Version",
    "Layer",
    "Style",
    "Format",
    "TileMatrixSet",
    "TileMatrix",
    "TileRow",
    "TileCol",
)
Bounds = tuple[float, float, float, float]
"""``(xmin, ymin, xmax, ymax)``: west, south, east, north in degrees (lon/lat) or in a CRS's
units, easting/northing order."""
_MEDIA_TYPES: Final = {ext: content_type for ext, (_, content_type) in EXPORT_FORMATS.items()}
_OPERATIONS: Final = {
    name.lower(): name for name in ("GetCapabilities", "GetTile", "GetFeatureInfo")
}
_INTEGER: Final = re.compile(r"-?[0-9]+")
_REST_TILE_NAME: Final = re.compile(r"(?P<col>-?[0-9]+)\.(?P<ext>[A-Za-z0-9]+)")
_OGC_CRS_URI: Final = re.compile(r"https?://www\.opengis\.net/def/crs/([^/]+)/([^/]+)/([^/]+)")
_GOOGLE_MAPS_COMPATIBLE: Final = "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible"
# The document only changes when the gateway restarts with another config; a short lifetime
# still lets clients see a new one soon after.
CAPABILITIES_CACHE_CONTROL: Final = "public, max-age=300"
# Documents kept per pipeline: one per public base URL and Sections choice. Bounded because,
# with trust_proxy, the base comes from request headers anyone can set.
_MAX_DOCUMENTS: Final = 32
# Media ranges under which application/xml falls (RFC 9110 section 12.5.1).
_XML_RANGES: Final = frozenset(("application/xml", "text/xml", "application/*", "text/*", "*/*"))


class OwsException(NamedTuple):
    """One ``ows:Exception``: its exceptionCode (06-121r3 Table 25 or 07-057r7 Table 24), the
    locator (the offending parameter, or ``None``) and a human-readable text."""

    code: str
    locator: str | None
    text: str


class WmtsError(Exception):
    """A request the service answers with an ExceptionReport of ``exceptions`` and HTTP
    ``status`` (07-057r7 Tables 21 and 24: the status of the first exception)."""

    def __init__(self, status: int, *exceptions: OwsException) -> None:
        super().__init__(exceptions[0].text)
        self.status = status
        self.exceptions = exceptions


def _missing(locator: str) -> OwsException:
    return OwsException("MissingParameterValue", locator, f"the request has no {locator} value")


def _invalid(locator: str, text: str) -> OwsException:
    return OwsException("InvalidParameterValue", locator, text)


def exception_report(error: WmtsError) -> web.Response:
    """The OWS 1.1 ExceptionReport (06-121r3 section 8.5) for ``error``, as
    ``application/xml`` with ``error.status`` and ``Cache-Control: no-store``.

    ``version`` is the service version (required by owsExceptionReport.xsd); exceptions without
    a locator omit the attribute, as VersionNegotiationFailed and NoApplicableCode require.
    """
    root = etree.Element(
        f"{{{OWS_NS}}}ExceptionReport", nsmap={"ows": OWS_NS, "xsi": XSI_NS}, version=VERSION
    )
    root.set(f"{{{XSI_NS}}}schemaLocation", _EXCEPTION_SCHEMA)
    root.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    for exception in error.exceptions:
        element = _child(root, _ows("Exception"), exceptionCode=exception.code)
        if exception.locator is not None:
            element.set("locator", exception.locator)
        _child(element, _ows("ExceptionText"), exception.text)
    return web.Response(
        body=_serialise(root), status=error.status, content_type="application/xml", headers=NO_STORE
    )


# -- what the service advertises ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerOffer:
    """What the service advertises for one layer.

    ``formats`` maps a WMTS Format (media type) to the tile extension, in the config's order;
    ``links`` maps a TileMatrixSet identifier to its TileMatrixSetLimits: TileMatrix identifier
    -> ``(zoom, (min_col, max_col, min_row, max_row))``; ``wgs84`` is the WGS84BoundingBox
    ``(west, south, east, north)`` in degrees, lon/lat; ``boxes`` maps the CRS URN of each
    linked set to the data extent in that CRS, ``(xmin, ymin, xmax, ymax)`` in x/y (easting,
    northing or lon/lat) order, clipped to the sets' area, and whether the CRS's axis order is
    y/x (latitude first, as EPSG:4326).
    """

    layer: Layer
    formats: dict[str, str]
    links: dict[str, dict[str, tuple[int, TileLimits]]]
    wgs84: Bounds
    boxes: dict[str, tuple[Bounds, bool]]


class Contents:
    """The Contents of the ServiceMetadata for one pipeline, computed once: each layer's offer
    and the TileMatrixSets they link to, with only the TileMatrices some layer serves (the ETS
    asks for a tile of every advertised matrix). Serialised documents are kept per public base
    URL and Sections choice, so the hot path never builds XML.

    A (layer, TileMatrixSet) pair whose data extent misses the set entirely is not linked, and
    a layer with no link at all is not advertised: TileMatrixSetLink is mandatory (07-057r7
    wmtsGetCapabilities_response.xsd) and an empty TileMatrixLimits cannot be written.
    """

    def __init__(self, pipeline: TilePipeline, service: ServiceConfig) -> None:
        self.service = service
        self.layers: dict[str, LayerOffer] = {}
        zooms: dict[str, set[int]] = {}
        grids: dict[str, Grid] = {}
        for name, layer in pipeline.layers.items():
            links: dict[str, dict[str, tuple[int, TileLimits]]] = {}
            boxes: dict[tuple[str, bool], list[Bounds]] = {}
            for identifier, grid in layer.grids.items():
                low, high = layer.zoom_range(grid)
                matrices = {}
                for z in range(low, high + 1):
                    limits = layer.limits(grid, z)
                    if limits is not None:
                        matrices[grid.tms.matrix(z).id] = (z, limits)
                if matrices:
                    links[identifier] = matrices
                    grids[identifier] = grid
                    zooms.setdefault(identifier, set()).update(z for z, _ in matrices.values())
                    extent = _extent(grid, layer.bounds)
                    if extent is not None:
                        boxes.setdefault(_crs(grid), []).append(extent)
            if links:
                formats = {_MEDIA_TYPES[ext]: ext for ext in layer.config.formats}
                wgs84 = layer.bounds or _union(
                    _lon_lat_area(grids[identifier]) for identifier in links
                )
                self.layers[name] = LayerOffer(
                    layer,
                    formats,
                    links,
                    wgs84,
                    {
                        crs: (_union(extents), lat_first)
                        for (crs, lat_first), extents in boxes.items()
                    },
                )
        self.matrix_sets = {
            identifier: (grids[identifier], tuple(sorted(zooms[identifier])))
            for identifier in zooms
        }
        self._documents: OrderedDict[tuple[str, tuple[str, ...]], bytes] = OrderedDict()

    def document(self, base: str, sections: tuple[str, ...] = SECTIONS) -> bytes:
        """The ServiceMetadata document (07-057r7 section 7.1) for clients reaching the gateway
        at ``base`` (no trailing slash), with only ``sections`` (a subset of ``SECTIONS``, in
        document order). Byte-identical for identical arguments."""
        key = (base, sections)
        body = self._documents.get(key)
        if body is None:
            body = self._documents[key] = _serialise(self._capabilities(base, sections))
            if len(self._documents) > _MAX_DOCUMENTS:
                self._documents.popitem(last=False)
        else:
            self._documents.move_to_end(key)
        return body

    def locate(
        self,
        pipeline: TilePipeline,
        layer: str,
        style: str,
        media_type: str,
        tile_matrix_set: str,
        tile_matrix: str,
        tile_row: str,
        tile_col: str,
    ) -> TileRequest:
        """The pipeline's ``TileRequest`` for a GetTile (07-057r7 section 7.2) whose values are
        still text, checked against what the document advertises.

        Raises ``WmtsError`` (400) with InvalidParameterValue for an unknown Layer, Style,
        Format, TileMatrixSet or TileMatrix identifier or a non-integer TileRow/TileCol, and
        TileOutOfRange (locator ``TileRow`` or ``TileCol``) for a tile outside the layer's
        TileMatrixSetLimits, even when the matrix itself holds it.
        """
        offer = self.layers.get(layer)
        if offer is None:
            raise WmtsError(400, _invalid("Layer", f"no layer {layer!r}"))
        if style != STYLE:
            raise WmtsError(400, _invalid("Style", f"layer {layer!r} has only style {STYLE!r}"))
        ext = offer.formats.get(media_type)
        if ext is None:
            offered = ", ".join(offer.formats)
            raise WmtsError(
                400, _invalid("Format", f"layer {layer!r} offers {offered}, not {media_type!r}")
            )
        matrices = offer.links.get(tile_matrix_set)
        if matrices is None:
            offered = ", ".join(offer.links)
            raise WmtsError(
                400,
                _invalid(
                    "TileMatrixSet",
                    f"layer {layer!r} is served in {offered}, not {tile_matrix_set!r}",
                ),
            )
        found = matrices.get(tile_matrix)
        if found is None:
            raise WmtsError(
                400,
                _invalid(
                    "TileMatrix",
                    f"layer {layer!r} has no TileMatrix {tile_matrix!r} in {tile_matrix_set}",
                ),
            )
        z, (min_col, max_col, min_row, max_row) = found
        where = f"for layer {layer!r} at TileMatrix {tile_matrix} of {tile_matrix_set}"
        row = _index("TileRow", tile_row, min_row, max_row, where)
        col = _index("TileCol", tile_col, min_col, max_col, where)
        return pipeline.resolve(layer, tile_matrix_set, z, col, row, ext)

    # -- the document (07-057r7 section 7.1, wmtsGetCapabilities_response.xsd order) --

    def _capabilities(self, base: str, sections: tuple[str, ...]) -> etree._Element:
        root = etree.Element(_wmts("Capabilities"), nsmap=_NSMAP, version=VERSION)
        root.set(f"{{{XSI_NS}}}schemaLocation", _CAPABILITIES_SCHEMA)
        if "ServiceIdentification" in sections:
            self._service_identification(root)
        if "ServiceProvider" in sections:
            self._service_provider(root)
        if "OperationsMetadata" in sections:
            _operations_metadata(root, base)
        if "Contents" in sections:
            contents = _child(root, _wmts("Contents"))
            for name, offer in self.layers.items():
                _layer(contents, base, name, offer)
            for identifier, (grid, zooms) in self.matrix_sets.items():
                _tile_matrix_set(contents, identifier, grid, zooms)
        _child(root, _wmts("ServiceMetadataURL"), href=base + CAPABILITIES_PATH)
        return root

    def _service_identification(self, root: etree._Element) -> None:
        """OWS 06-121r3 section 7.4.4, from the config's ``service``."""
        service = self.service
        element = _child(root, _ows("ServiceIdentification"))
        _child(element, _ows("Title"), service.title)
        _child(element, _ows("Abstract"), service.abstract)
        if service.keywords:
            keywords = _child(element, _ows("Keywords"))
            for keyword in service.keywords:
                _child(keywords, _ows("Keyword"), keyword)
        _child(element, _ows("ServiceType"), "OGC WMTS")
        _child(element, _ows("ServiceTypeVersion"), VERSION)
        _child(element, _ows("Fees"), service.fees)
        _child(element, _ows("AccessConstraints"), service.access_constraints)

    def _service_provider(self, root: etree._Element) -> None:
        """OWS 06-121r3 section 7.4.5, from the config's ``service``."""
        service = self.service
        element = _child(root, _ows("ServiceProvider"))
        _child(element, _ows("ProviderName"), service.provider_name)
        if service.provider_site is not None:
            _child(element, _ows("ProviderSite"), href=str(service.provider_site))
        contact = _child(element, _ows("ServiceContact"))
        if service.contact_name:
            _child(contact, _ows("IndividualName"), service.contact_name)
        if service.contact_email:
            info = _child(contact, _ows("ContactInfo"))
            address = _child(info, _ows("Address"))
            _child(address, _ows("ElectronicMailAddress"), service.contact_email)


def _operations_metadata(root: etree._Element, base: str) -> None:
    """OWS 06-121r3 section 7.4.6: GetCapabilities by KVP (listed first: the ETS's KVP tests
    take the first ``ows:Get``) and RESTful, GetTile by KVP; the RESTful GetTile is announced by
    each layer's ResourceURL (07-057r7 section 10.2)."""
    element = _child(root, _ows("OperationsMetadata"))
    kvp = f"{base}/wmts?"
    for operation, gets in (
        ("GetCapabilities", ((kvp, "KVP"), (base + CAPABILITIES_PATH, "RESTful"))),
        ("GetTile", ((kvp, "KVP"),)),
    ):
        http = _child(
            _child(_child(element, _ows("Operation"), name=operation), _ows("DCP")), _ows("HTTP")
        )
        for href, encoding in gets:
            get = _child(http, _ows("Get"), href=href)
            constraint = _child(get, _ows("Constraint"), name="GetEncoding")
            _child(_child(constraint, _ows("AllowedValues")), _ows("Value"), encoding)


def _layer(contents: etree._Element, base: str, name: str, offer: LayerOffer) -> None:
    """One ``Layer`` (07-057r7 section 7.1, LayerType): Title, WGS84BoundingBox (lon/lat),
    Identifier, the default Style (Title = Identifier: OpenLayers matches styles by Title),
    Formats, TileMatrixSetLinks with limits, one RESTful ResourceURL per Format."""
    element = _child(contents, _wmts("Layer"))
    _child(element, _ows("Title"), offer.layer.config.title or name)
    west, south, east, north = offer.wgs84
    box = _child(element, _ows("WGS84BoundingBox"))
    _child(box, _ows("LowerCorner"), _coordinates(west, south))
    _child(box, _ows("UpperCorner"), _coordinates(east, north))
    _child(element, _ows("Identifier"), name)
    # The extent in each linked set's CRS: GDAL prefers it to a reprojected WGS84BoundingBox,
    # which it would not clip to Web Mercator's +-85.05 degrees (a raster 12 times too tall).
    for crs, ((xmin, ymin, xmax, ymax), lat_first) in offer.boxes.items():
        box = _child(element, _ows("BoundingBox"), crs=crs)
        _child(box, _ows("LowerCorner"), _coordinates(xmin, ymin, swap=lat_first))
        _child(box, _ows("UpperCorner"), _coordinates(xmax, ymax, swap=lat_first))
    style = _child(element, _wmts("Style"), isDefault="true")
    _child(style, _ows("Title"), STYLE)
    _child(style, _ows("Identifier"), STYLE)
    for media_type in offer.formats:
        _child(element, _wmts("Format"), media_type)
    for identifier, matrices in offer.links.items():
        link = _child(element, _wmts("TileMatrixSetLink"))
        _child(link, _wmts("TileMatrixSet"), identifier)
        limits_element = _child(link, _wmts("TileMatrixSetLimits"))
        for matrix_id, (_, (min_col, max_col, min_row, max_row)) in matrices.items():
            limits = _child(limits_element, _wmts("TileMatrixLimits"))
            _child(limits, _wmts("TileMatrix"), matrix_id)
            _child(limits, _wmts("MinTileRow"), str(min_row))
            _child(limits, _wmts("MaxTileRow"), str(max_row))
            _child(limits, _wmts("MinTileCol"), str(min_col))
            _child(limits, _wmts("MaxTileCol"), str(max_col))
    for media_type, ext in offer.formats.items():
        _child(
            element,
            _wmts("ResourceURL"),
            format=media_type,
            resourceType="tile",
            template=(
                f"{base}/wmts/{VERSION}/{name}/{{Style}}/{{TileMatrixSet}}/{{TileMatrix}}"
                f"/{{TileRow}}/{{TileCol}}.{ext}"
            ),
        )


def _tile_matrix_set(
    contents: etree._Element, identifier: str, grid: Grid, zooms: tuple[int, ...]
) -> None:
    """One ``TileMatrixSet`` (07-057r7 section 7.1, wmtsGetCapabilities_response.xsd) from
    morecantile, with the TileMatrices ``zooms``.

    SupportedCRS is a URN every client parses (``urn:ogc:def:crs:EPSG::3857``, not the
    spec's ``EPSG:6.18:3:3857``); the BoundingBox (which GDAL's EXTENT_METHOD=TILE_MATRIX_SET
    needs) and each TopLeftCorner are in the CRS's axis order: ``90 -180`` for EPSG:4326.
    WellKnownScaleSet is only claimed for WebMercatorQuad, which is GoogleMapsCompatible
    (Annex E.4); WorldCRS84Quad is not GoogleCRS84Quad (2x1 tiles at TileMatrix 0, not 1x1).
    """
    tms = grid.tms
    element = _child(contents, _wmts("TileMatrixSet"))
    _child(element, _ows("Title"), tms.title or identifier)
    _child(element, _ows("Identifier"), identifier)
    crs, lat_first = _crs(grid)
    area = tms.xy_bbox
    box = _child(element, _ows("BoundingBox"), crs=crs)
    _child(box, _ows("LowerCorner"), _coordinates(area.left, area.bottom, swap=lat_first))
    _child(box, _ows("UpperCorner"), _coordinates(area.right, area.top, swap=lat_first))
    _child(element, _ows("SupportedCRS"), crs)
    if identifier == WEB_MERCATOR_QUAD:
        _child(element, _wmts("WellKnownScaleSet"), _GOOGLE_MAPS_COMPATIBLE)
    for z in zooms:
        matrix = tms.matrix(z)
        matrix_element = _child(element, _wmts("TileMatrix"))
        _child(matrix_element, _ows("Identifier"), matrix.id)
        _child(matrix_element, _wmts("ScaleDenominator"), repr(float(matrix.scaleDenominator)))
        # pointOfOrigin is already in the CRS's axis order (lat, lon for EPSG:4326).
        _child(matrix_element, _wmts("TopLeftCorner"), _coordinates(*matrix.pointOfOrigin))
        _child(matrix_element, _wmts("TileWidth"), str(matrix.tileWidth))
        _child(matrix_element, _wmts("TileHeight"), str(matrix.tileHeight))
        _child(matrix_element, _wmts("MatrixWidth"), str(matrix.matrixWidth))
        _child(matrix_element, _wmts("MatrixHeight"), str(matrix.matrixHeight))


# -- small helpers ----------------------------------------------------------------------------


def _wmts(tag: str) -> str:
    return f"{{{WMTS_NS}}}{tag}"


def _ows(tag: str) -> str:
    return f"{{{OWS_NS}}}{tag}"


def _child(
    parent: etree._Element,
    tag: str,
    text: str | None = None,
    href: str | None = None,
    **attrib: str,
) -> etree._Element:
    """A new ``tag`` element under ``parent``, with ``text``, ``xlink:href`` and attributes."""
    element = etree.SubElement(parent, tag, attrib)
    if href is not None:
        element.set(f"{{{XLINK_NS}}}href", href)
    if text is not None:
        element.text = text
    return element


def _serialise(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _coordinates(x: float, y: float, swap: bool = False) -> str:
    """``"x y"`` (``"y x"`` with ``swap``) with ``repr`` floats: full precision, since the ETS
    compares numbers with an absolute tolerance of 1e-6."""
    first, second = (y, x) if swap else (x, y)
    return f"{float(first)!r} {float(second)!r}"


def _crs(grid: Grid) -> tuple[str, bool]:
    """The OGC URN of the set's CRS and whether its first axis is northing/latitude.

    ``http://www.opengis.net/def/crs/EPSG/0/3857`` -> ``urn:ogc:def:crs:EPSG::3857`` (version
    ``0`` means unversioned, an empty URN field), ``.../OGC/1.3/CRS84`` ->
    ``urn:ogc:def:crs:OGC:1.3:CRS84`` (OGC 07-092r3 section 7). Raises ``ValueError`` for a CRS
    without such a URI (the config only allows EPSG codes).
    """
    match = _OGC_CRS_URI.fullmatch(grid.tms.crs.srs)
    if match is None:
        raise ValueError(f"{grid.identifier}: no OGC CRS URI for {grid.tms.crs.srs!r}")
    authority, version, code = match.groups()
    urn = f"urn:ogc:def:crs:{authority}:{'' if version == '0' else version}:{code}"
    return urn, grid.crs.axis_info[0].direction in ("north", "south")


def _extent(grid: Grid, bounds: Bounds | None) -> Bounds | None:
    """The data extent in the set's CRS, x/y order, clipped to the set (its whole area when
    ``bounds`` is unknown); ``None`` when they do not meet."""
    if bounds is None:
        area = grid.tms.xy_bbox
        return (area.left, area.bottom, area.right, area.top)
    return grid.extent_from_wgs84(bounds)


def _lon_lat_area(grid: Grid) -> Bounds:
    area = grid.tms.bbox  # the whole matrix set in lon/lat
    return (area.left, area.bottom, area.right, area.top)


def _union(boxes: Iterable[Bounds]) -> Bounds:
    west, south, east, north = zip(*boxes, strict=True)
    return (min(west), min(south), max(east), max(north))


def _index(locator: str, text: str, low: int, high: int, where: str) -> int:
    """TileRow or TileCol ``text`` as an int within ``low..high`` of the TileMatrixSetLimits
    ``where`` describes (07-057r7 Table 24: TileOutOfRange, else InvalidParameterValue)."""
    if not _INTEGER.fullmatch(text):
        raise WmtsError(400, _invalid(locator, f"{locator} must be an integer, not {text!r}"))
    value = int(text)
    if not low <= value <= high:
        raise WmtsError(
            400,
            OwsException(
                "TileOutOfRange", locator, f"{locator} {value} is outside {low}..{high} {where}"
            ),
        )
    return value


def _accepts_xml(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits ``application/xml`` (absent: anything goes)."""
    if accept is None:
        return True
    for media_range in accept.split(","):
        kind, *parameters = (part.strip() for part in media_range.split(";"))
        if kind.lower() in _XML_RANGES and not any(_is_zero_q(p) for p in parameters):
            return True
    return False


def _is_zero_q(parameter: str) -> bool:
    """Whether a media-range parameter is a zero weight (``q=0``: "not acceptable")."""
    name, _, value = parameter.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False


_CONTENTS: weakref.WeakKeyDictionary[TilePipeline, Contents] = weakref.WeakKeyDictionary()


def contents_of(request: web.Request) -> Contents:
    """The ``Contents`` of the request's app, made on first use (after start-up, when layers
    know their data extent) and kept as long as its pipeline lives."""
    pipeline = request.app[PIPELINE]
    contents = _CONTENTS.get(pipeline)
    if contents is None:
        contents = _CONTENTS[pipeline] = Contents(pipeline, request.app[CONFIG].service)
    return contents


def _kvp_parameters(query: Mapping[str, str]) -> dict[str, str]:
    """Query parameters by lower-cased name (06-121r3 section 11.5.2: names are
    case-insensitive, values are not); the first of repeated names wins."""
    parameters: dict[str, str] = {}
    for name, value in query.items():
        parameters.setdefault(name.lower(), value)
    return parameters


# -- handlers -----------------------------------------------------------------------------------


def capabilities_response(
    request: web.Request, sections: tuple[str, ...] = SECTIONS
) -> web.Response:
    """200 with the cached ServiceMetadata document for the request's public base URL."""
    body = contents_of(request).document(public_base(request), sections)
    headers = {"Cache-Control": CAPABILITIES_CACHE_CONTROL}
    server = request.app[CONFIG].server
    if server.trust_proxy and server.public_url is None:
        # The absolute URLs inside depend on these headers.
        headers["Vary"] = "X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Prefix"
    return web.Response(body=body, content_type="application/xml", headers=headers)


async def kvp(request: web.Request) -> web.StreamResponse:
    """``GET /wmts?...``: GetCapabilities or GetTile by KVP (07-057r7 section 8).

    No parameters at all, or ``SERVICE=WMS&REQUEST=GetCapabilities``, also get the document.
    Errors (400 unless said otherwise): MissingParameterValue (service, request, and each
    missing GetTile parameter), InvalidParameterValue (service, request, Sections, a GetTile
    value), VersionNegotiationFailed (AcceptVersions without 1.0.0), TileOutOfRange,
    OperationNotSupported 501 for GetFeatureInfo, NoApplicableCode 502/504 from the upstream.
    """
    try:
        parameters = _kvp_parameters(request.query)
        if not parameters:
            return capabilities_response(request)
        missing = [_missing(name) for name in ("service", "request") if not parameters.get(name)]
        if missing:
            raise WmtsError(400, *missing)
        service = parameters["service"]
        # Operation names are matched in any case, like parameter names: clients differ.
        operation = _OPERATIONS.get(parameters["request"].lower(), parameters["request"])
        if service.upper() != "WMTS" and not (
            service.upper() == "WMS" and operation == "GetCapabilities"
        ):
            raise WmtsError(400, _invalid("service", f"this is a WMTS, not {service!r}"))
        if operation == "GetCapabilities":
            return _get_capabilities(request, parameters)
        if operation == "GetTile":
            return await _get_tile(request, parameters)
        if operation == "GetFeatureInfo":
            raise WmtsError(
                501,
                OwsException(
                    "OperationNotSupported", "GetFeatureInfo", "GetFeatureInfo is not offered"
                ),
            )
        raise WmtsError(
            400, _invalid("request", f"unknown request {operation!r}: GetCapabilities, GetTile")
        )
    except WmtsError as error:
        return exception_report(error)


def _get_capabilities(request: web.Request, parameters: Mapping[str, str]) -> web.Response:
    """GetCapabilities by KVP (07-057r7 section 8.1) with AcceptVersions and Sections
    (06-121r3 sections 7.3.2 and 7.3.3); ``version``, updateSequence and AcceptFormats are
    ignored, as the service keeps no update sequence and has one format (06-121r3 sections
    7.3.4 and 7.3.5)."""
    versions = parameters.get("acceptversions")
    if versions is not None:
        if not versions.strip():
            raise WmtsError(400, _missing("AcceptVersions"))
        if VERSION not in (version.strip() for version in versions.split(",")):
            raise WmtsError(
                400,
                OwsException(
                    "VersionNegotiationFailed", None, f"this service speaks WMTS {VERSION} only"
                ),
            )
    sections = SECTIONS
    requested = parameters.get("sections")
    if requested is not None:
        names = [name.strip() for name in requested.split(",") if name.strip()]
        if not names:
            raise WmtsError(400, _missing("Sections"))
        unknown = [name for name in names if name not in _SECTION_NAMES]
        if unknown:
            allowed = ", ".join(sorted(_SECTION_NAMES))
            raise WmtsError(
                400, _invalid("Sections", f"unknown section {unknown[0]!r}; one of {allowed}")
            )
        if "All" not in names:
            sections = tuple(section for section in SECTIONS if section in names)
    return capabilities_response(request, sections)


async def _get_tile(request: web.Request, parameters: Mapping[str, str]) -> web.StreamResponse:
    """GetTile by KVP (07-057r7 section 8.2, Table 29; exceptions as section 7.2)."""
    missing = [_missing(name) for name in _GET_TILE_PARAMETERS if not parameters.get(name.lower())]
    if missing:
        raise WmtsError(400, *missing)
    if parameters["version"] != VERSION:
        raise WmtsError(
            400, _invalid("Version", f"GetTile is WMTS {VERSION}, not {parameters['version']!r}")
        )
    pipeline = request.app[PIPELINE]
    tile = contents_of(request).locate(
        pipeline,
        parameters["layer"],
        parameters["style"],
        parameters["format"],
        parameters["tilematrixset"],
        parameters["tilematrix"],
        parameters["tilerow"],
        parameters["tilecol"],
    )
    return await _serve(request, pipeline, tile)


async def _serve(
    request: web.Request, pipeline: TilePipeline, tile: TileRequest
) -> web.StreamResponse:
    """The tile from the pipeline (ETag/304 like XYZ); an upstream failure is NoApplicableCode
    with the upstream's status (502/504), code and message, never its URL."""
    try:
        result = await pipeline.get_tile(tile)
    except UpstreamError as exc:
        code = "" if exc.code is None else f" (code {exc.code})"
        raise WmtsError(
            exc.status,
            OwsException(
                "NoApplicableCode",
                None,
                f"the upstream of layer {tile.layer!r} failed{code}: {exc.message}",
            ),
        ) from None
    return tile_response(request, result, pipeline.layers[tile.layer].cache_control)


async def rest_capabilities(request: web.Request) -> web.Response:
    """``GET /wmts/1.0.0/WMTSCapabilities.xml``: the ServiceMetadata resource (07-057r7
    sections 7.1.3 and 10.1); any query (OWSLib appends one) is ignored. 406 when ``Accept``
    excludes XML."""
    if not _accepts_xml(request.headers.get("Accept")):
        return exception_report(
            WmtsError(
                406,
                OwsException(
                    "NoApplicableCode",
                    None,
                    "the ServiceMetadata is only served as application/xml",
                ),
            )
        )
    return capabilities_response(request)


async def rest_tile(request: web.Request) -> web.StreamResponse:
    """``GET /wmts/1.0.0/<layer>/<Style>/<TileMatrixSet>/<TileMatrix>/<TileRow>/<TileCol>.<ext>``
    (07-057r7 section 10.2). A tile the KVP encoding would refuse with 400 is 404 here, with
    the same exceptionCode and locator (section 10.2.5: illegal path values are 404); upstream
    failures keep their 502/504."""
    match = _REST_TILE_NAME.fullmatch(request.match_info["name"])
    try:
        if match is None:
            raise WmtsError(404, _invalid("TileCol", "a tile is <TileCol>.<png|jpg>, e.g. 17.png"))
        info = request.match_info
        pipeline = request.app[PIPELINE]
        try:
            tile = contents_of(request).locate(
                pipeline,
                info["layer"],
                info["style"],
                _MEDIA_TYPES.get(match["ext"], match["ext"]),
                info["tms"],
                info["matrix"],
                info["row"],
                match["col"],
            )
        except WmtsError as error:
            raise WmtsError(404, *error.exceptions) from None
        return await _serve(request, pipeline, tile)
    except WmtsError as error:
        return exception_report(error)


async def not_found(request: web.Request) -> web.Response:
    """Any other path under ``/wmts/``: 404 as an ExceptionReport (the ETS probes
    ``<ServiceMetadataURL>/Bogus``)."""
    return exception_report(
        WmtsError(404, OwsException("NoApplicableCode", None, f"no WMTS resource {request.path}"))
    )


def routes() -> list[web.RouteDef]:
    """The WMTS route table; the catch-all comes last so it only takes what nothing else does."""
    return [
        web.get("/wmts", kvp),
        web.get(CAPABILITIES_PATH, rest_capabilities),
        web.get(
            f"/wmts/{VERSION}/{{layer}}/{{style}}/{{tms}}/{{matrix}}/{{row}}/{{name}}", rest_tile
        ),
        web.get("/wmts/{tail:.*}", not_found),
    ]
