"""The WMTS ServiceMetadata (capabilities) document, OGC 07-057r7 section 7.1: what the service
advertises, built once per pipeline and serialised once per public base URL and Sections
choice, so answering it never builds XML.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from lxml import etree

from gateway.config import ServiceConfig
from gateway.grids import WEB_MERCATOR_QUAD, Grid, TileLimits
from gateway.imaging import MAP_FORMATS
from gateway.imaging import MEDIA_TYPES as IMAGE_TYPES
from gateway.services.http import (
    CONFIG,
    PIPELINE,
    Document,
    DocumentCache,
    document_response,
    public_base,
    public_vary,
)
from gateway.services.wmts.ows import OWS_NS, VERSION, XLINK_NS, XSI_NS, child, ows, serialise
from gateway.tiles import Layer, TilePipeline
from gateway.tiles.variants import DEFAULT_STYLE, StyleOffer

WMTS_NS: Final = "http://www.opengis.net/wmts/1.0"
_NSMAP: Final = {None: WMTS_NS, "ows": OWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}
_CAPABILITIES_SCHEMA: Final = (
    f"{WMTS_NS} http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"
)

STYLE: Final = DEFAULT_STYLE
# The identifier of the time Dimension (07-057r7 Annex B), also its KVP parameter name.
TIME: Final = "Time"
CAPABILITIES_PATH: Final = f"/wmts/{VERSION}/WMTSCapabilities.xml"
# The sections a GetCapabilities ``Sections`` parameter may name (06-121r3 section 7.3.3, plus
# WMTS Themes), in document order; this service has no Themes to list.
SECTIONS: Final = ("ServiceIdentification", "ServiceProvider", "OperationsMetadata", "Contents")
_SECTION_NAMES: Final = frozenset((*SECTIONS, "Themes", "All"))
Bounds = tuple[float, float, float, float]
"""``(xmin, ymin, xmax, ymax)``: west, south, east, north in degrees (lon/lat) or in a CRS's
units, easting/northing order."""
# WMTS Format (a media type) of each map tile format; the elevation encodings, PNG files of
# heights for MapLibre's raster-dem, are served by XYZ and TileJSON alone.
MEDIA_TYPES: Final = {ext: IMAGE_TYPES[ext] for ext in MAP_FORMATS}
_OGC_CRS_URI: Final = re.compile(r"https?://www\.opengis\.net/def/crs/([^/]+)/([^/]+)/([^/]+)")
_GOOGLE_MAPS_COMPATIBLE: Final = "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible"
# The document only changes when the gateway restarts with another config; a short lifetime
# still lets clients see a new one soon after.
CAPABILITIES_CACHE_CONTROL: Final = "public, max-age=300"
# Documents kept per pipeline: one per public base URL and Sections choice. Bounded because,
# with trust_proxy, the base comes from request headers anyone can set.
_MAX_DOCUMENTS: Final = 32


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
                matrices = {
                    grid.definition.matrix(z).id: (z, limits)
                    for z, limits in layer.tile_matrix_set_limits(grid).items()
                }
                if matrices:
                    links[identifier] = matrices
                    grids[identifier] = grid
                    zooms.setdefault(identifier, set()).update(z for z, _ in matrices.values())
                    extent = _extent(grid, layer.bounds)
                    if extent is not None:
                        boxes.setdefault(_crs(grid), []).append(extent)
            if links:
                formats = {
                    MEDIA_TYPES[ext]: ext for ext in layer.config.formats if ext in MEDIA_TYPES
                }
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
        self.documents = DocumentCache(_MAX_DOCUMENTS)

    def document(self, base: str, sections: tuple[str, ...] = SECTIONS) -> bytes:
        """The ServiceMetadata document (07-057r7 section 7.1) for clients reaching the gateway
        at ``base`` (no trailing slash), with only ``sections`` (a subset of ``SECTIONS``, in
        document order). Byte-identical for identical arguments."""
        return self._cached(base, sections).body

    def _cached(self, base: str, sections: tuple[str, ...]) -> Document:
        return self.documents.get(
            (base, sections), lambda: serialise(self._capabilities(base, sections))
        )

    def response(self, request: web.Request, sections: tuple[str, ...] = SECTIONS) -> web.Response:
        """200 with the document for the request's public base URL (gzip-compressed when the
        client accepts it)."""
        return document_response(
            request,
            self._cached(public_base(request), sections),
            "application/xml",
            CAPABILITIES_CACHE_CONTROL,
            # The absolute URLs inside depend on these headers.
            public_vary(request),
        )

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
            contents = child(root, _wmts("Contents"))
            for name, offer in self.layers.items():
                _layer(contents, base, name, offer)
            for identifier, (grid, zooms) in self.matrix_sets.items():
                _tile_matrix_set(contents, identifier, grid, zooms)
        child(root, _wmts("ServiceMetadataURL"), href=base + CAPABILITIES_PATH)
        return root

    def _service_identification(self, root: etree._Element) -> None:
        """OWS 06-121r3 section 7.4.4, from the config's ``service``."""
        service = self.service
        element = child(root, ows("ServiceIdentification"))
        child(element, ows("Title"), service.title)
        child(element, ows("Abstract"), service.abstract)
        if service.keywords:
            keywords = child(element, ows("Keywords"))
            for keyword in service.keywords:
                child(keywords, ows("Keyword"), keyword)
        child(element, ows("ServiceType"), "OGC WMTS")
        child(element, ows("ServiceTypeVersion"), VERSION)
        child(element, ows("Fees"), service.fees)
        child(element, ows("AccessConstraints"), service.access_constraints)

    def _service_provider(self, root: etree._Element) -> None:
        """OWS 06-121r3 section 7.4.5, from the config's ``service``."""
        service = self.service
        element = child(root, ows("ServiceProvider"))
        child(element, ows("ProviderName"), service.provider_name)
        if service.provider_site is not None:
            child(element, ows("ProviderSite"), href=str(service.provider_site))
        contact = child(element, ows("ServiceContact"))
        if service.contact_name:
            child(contact, ows("IndividualName"), service.contact_name)
        if service.contact_email:
            info = child(contact, ows("ContactInfo"))
            address = child(info, ows("Address"))
            child(address, ows("ElectronicMailAddress"), service.contact_email)


def _operations_metadata(root: etree._Element, base: str) -> None:
    """OWS 06-121r3 section 7.4.6: GetCapabilities by KVP (listed first: the ETS's KVP tests
    take the first ``ows:Get``) and RESTful, GetTile by KVP; the RESTful GetTile is announced by
    each layer's ResourceURL (07-057r7 section 10.2)."""
    element = child(root, ows("OperationsMetadata"))
    kvp = f"{base}/wmts?"
    for operation, gets in (
        ("GetCapabilities", ((kvp, "KVP"), (base + CAPABILITIES_PATH, "RESTful"))),
        ("GetTile", ((kvp, "KVP"),)),
    ):
        http = child(
            child(child(element, ows("Operation"), name=operation), ows("DCP")), ows("HTTP")
        )
        for href, encoding in gets:
            get = child(http, ows("Get"), href=href)
            constraint = child(get, ows("Constraint"), name="GetEncoding")
            child(child(constraint, ows("AllowedValues")), ows("Value"), encoding)


def _layer(contents: etree._Element, base: str, name: str, offer: LayerOffer) -> None:
    """One ``Layer`` (07-057r7 section 7.1, LayerType): Title, WGS84BoundingBox (lon/lat),
    Identifier, its Styles (the layer's styles, else ``default``; Title = Identifier:
    OpenLayers matches styles by Title, the configured title is the Abstract; the default one
    ``isDefault``), Formats, the ``Time`` Dimension of a time-enabled layer (its values and
    default), TileMatrixSetLinks with limits, one RESTful ResourceURL per Format (with
    ``{Time}`` after ``{Style}`` for a time-enabled layer)."""
    element = child(contents, _wmts("Layer"))
    child(element, ows("Title"), offer.layer.config.title or name)
    west, south, east, north = offer.wgs84
    box = child(element, ows("WGS84BoundingBox"))
    child(box, ows("LowerCorner"), _coordinates(west, south))
    child(box, ows("UpperCorner"), _coordinates(east, north))
    child(element, ows("Identifier"), name)
    # The extent in each linked set's CRS: GDAL prefers it to a reprojected WGS84BoundingBox,
    # which it would not clip to Web Mercator's +-85.05 degrees (a raster 12 times too tall).
    for crs, ((xmin, ymin, xmax, ymax), lat_first) in offer.boxes.items():
        box = child(element, ows("BoundingBox"), crs=crs)
        child(box, ows("LowerCorner"), _coordinates(xmin, ymin, swap=lat_first))
        child(box, ows("UpperCorner"), _coordinates(xmax, ymax, swap=lat_first))
    variants = offer.layer.variants
    for style_offer in variants.styles or (StyleOffer(STYLE, STYLE, None),):
        default = style_offer.name == variants.default_style
        style = child(element, _wmts("Style"), **({"isDefault": "true"} if default else {}))
        # Title = Identifier: OpenLayers' optionsFromCapabilities finds a style by its Title.
        child(style, ows("Title"), style_offer.name)
        described = " ".join(
            text
            for text in (
                None if style_offer.title == style_offer.name else style_offer.title,
                style_offer.abstract,
            )
            if text
        )
        if described:
            child(style, ows("Abstract"), described)
        child(style, ows("Identifier"), style_offer.name)
    for media_type in offer.formats:
        child(element, _wmts("Format"), media_type)
    if variants.default_time is not None:
        # 07-057r7 section 7.2.4.6.2 (Dimension) and Annex B: ISO 8601 time values.
        dimension = child(element, _wmts("Dimension"))
        child(dimension, ows("Identifier"), TIME)
        child(dimension, ows("UOM"), "ISO8601")
        child(dimension, _wmts("Default"), variants.default_time)
        for value in variants.times:
            child(dimension, _wmts("Value"), value)
    for identifier, matrices in offer.links.items():
        link = child(element, _wmts("TileMatrixSetLink"))
        child(link, _wmts("TileMatrixSet"), identifier)
        limits_element = child(link, _wmts("TileMatrixSetLimits"))
        for matrix_id, (_, (min_col, max_col, min_row, max_row)) in matrices.items():
            limits = child(limits_element, _wmts("TileMatrixLimits"))
            child(limits, _wmts("TileMatrix"), matrix_id)
            child(limits, _wmts("MinTileRow"), str(min_row))
            child(limits, _wmts("MaxTileRow"), str(max_row))
            child(limits, _wmts("MinTileCol"), str(min_col))
            child(limits, _wmts("MaxTileCol"), str(max_col))
    # The dimension's value follows the style in the path, as 07-057r7 section 10.2.1 lays a
    # tile's resource out: layer, style, each dimension, TileMatrixSet, TileMatrix, row, col.
    time = "" if variants.default_time is None else f"{{{TIME}}}/"
    for media_type, ext in offer.formats.items():
        child(
            element,
            _wmts("ResourceURL"),
            format=media_type,
            resourceType="tile",
            template=(
                f"{base}/wmts/{VERSION}/{name}/{{Style}}/{time}{{TileMatrixSet}}/{{TileMatrix}}"
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
    definition = grid.definition
    element = child(contents, _wmts("TileMatrixSet"))
    child(element, ows("Title"), definition.title or identifier)
    child(element, ows("Identifier"), identifier)
    crs, lat_first = _crs(grid)
    area = definition.xy_bbox
    box = child(element, ows("BoundingBox"), crs=crs)
    child(box, ows("LowerCorner"), _coordinates(area.left, area.bottom, swap=lat_first))
    child(box, ows("UpperCorner"), _coordinates(area.right, area.top, swap=lat_first))
    child(element, ows("SupportedCRS"), crs)
    if identifier == WEB_MERCATOR_QUAD:
        child(element, _wmts("WellKnownScaleSet"), _GOOGLE_MAPS_COMPATIBLE)
    for z in zooms:
        matrix = definition.matrix(z)
        matrix_element = child(element, _wmts("TileMatrix"))
        child(matrix_element, ows("Identifier"), matrix.id)
        child(matrix_element, _wmts("ScaleDenominator"), repr(float(matrix.scaleDenominator)))
        # pointOfOrigin is already in the CRS's axis order (lat, lon for EPSG:4326).
        child(matrix_element, _wmts("TopLeftCorner"), _coordinates(*matrix.pointOfOrigin))
        child(matrix_element, _wmts("TileWidth"), str(matrix.tileWidth))
        child(matrix_element, _wmts("TileHeight"), str(matrix.tileHeight))
        child(matrix_element, _wmts("MatrixWidth"), str(matrix.matrixWidth))
        child(matrix_element, _wmts("MatrixHeight"), str(matrix.matrixHeight))


# -- small helpers ----------------------------------------------------------------------------


def _wmts(tag: str) -> str:
    return f"{{{WMTS_NS}}}{tag}"


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
    match = _OGC_CRS_URI.fullmatch(grid.definition.crs.srs)
    if match is None:
        raise ValueError(f"{grid.identifier}: no OGC CRS URI for {grid.definition.crs.srs!r}")
    authority, version, code = match.groups()
    urn = f"urn:ogc:def:crs:{authority}:{'' if version == '0' else version}:{code}"
    return urn, grid.crs.axis_info[0].direction in ("north", "south")


def _extent(grid: Grid, bounds: Bounds | None) -> Bounds | None:
    """The data extent in the set's CRS, x/y order, clipped to the set (its whole area when
    ``bounds`` is unknown); ``None`` when they do not meet."""
    if bounds is None:
        area = grid.definition.xy_bbox
        return (area.left, area.bottom, area.right, area.top)
    return grid.extent_from_wgs84(bounds)


def _lon_lat_area(grid: Grid) -> Bounds:
    area = grid.definition.bbox  # the whole matrix set in lon/lat
    return (area.left, area.bottom, area.right, area.top)


def _union(boxes: Iterable[Bounds]) -> Bounds:
    west, south, east, north = zip(*boxes, strict=True)
    return (min(west), min(south), max(east), max(north))


_CONTENTS: weakref.WeakKeyDictionary[TilePipeline, tuple[int, Contents]] = (
    weakref.WeakKeyDictionary()
)


def contents_of(request: web.Request) -> Contents:
    """The ``Contents`` of the request's app, made on first use (after start-up, when layers
    know their data extent) and kept as long as its pipeline lives and its layers stay the
    same (``TilePipeline.layers_version``: published layers come and go)."""
    pipeline = request.app[PIPELINE]
    known = _CONTENTS.get(pipeline)
    if known is not None and known[0] == pipeline.layers_version:
        return known[1]
    contents = Contents(pipeline, request.app[CONFIG].service)
    _CONTENTS[pipeline] = (pipeline.layers_version, contents)
    return contents
