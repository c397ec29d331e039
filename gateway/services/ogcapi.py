"""OGC API - Tiles - Part 1: Core (OGC 20-057) for map tiles: the ``/ogcapi`` front.

    /ogcapi                         landing page (OGC API - Common, 19-072 /req/landing-page)
    /ogcapi/conformance             the conformance classes claimed
    /ogcapi/tileMatrixSets          every TileMatrixSet a layer is served in (``_2x`` and custom
    /ogcapi/tileMatrixSets/<id>     ones too); a definition is OGC TMS 2.0 JSON (17-083r4)
    /ogcapi/collections             one collection per layer
    /ogcapi/collections/<layer>
    /ogcapi/collections/<layer>/map/tiles            tilesets list (20-057 /req/tilesets-list)
    /ogcapi/collections/<layer>/map/tiles/<tms>      tileset metadata (20-057 /req/tileset)
    /ogcapi/collections/<layer>/map/tiles/<tms>/<tileMatrix>/<tileRow>/<tileCol>   a tile
                                                     (20-057 /req/core; row before column)
    /ogcapi/collections/<layer>/styles/<style>/map/tiles[/...]   the same, of one of the
                                                     layer's styles (20-057 styled map tiles)

A tile takes ``datetime`` (20-057 /req/datetime) for a time-enabled layer: one of its time
values, an ISO 8601 instant or interval; without it the layer's default time.

Documents are JSON only: ``f=json`` or no ``f``; another ``f`` is a 400, and an ``Accept``
header that rules out ``application/json`` a 406. A tile's format is ``f=png|jpg|webp`` when given,
else negotiated from ``Accept`` (default the layer's first format; 406 when ``Accept`` admits
none of the layer's formats, as OGC API - Common and RFC 9110 section 15.5.7 allow). Every link
is absolute, from ``public_base``.

Errors use the gateway's JSON ``{"error": {"code", "message"}}``, not the OGC API Common
exception schema: 20-057 /req/core/tc-error leaves the exception body optional, and the
front's middleware answers routing misses and 500s the same way.

Tiles go through the one tile pipeline, so an OGC API tile and the XYZ or WMTS tile of the
same address share one cache entry (``<tms>_2x`` tiles are the ``@2x`` tiles of ``<tms>``).
The tileset metadata advertises ``tileMatrixSetLimits`` from the layer's data extent, and a tile
outside them is a 404 (/req/core/tc-error A), not the transparent tile XYZ answers there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.config import ServiceConfig
from gateway.errors import (
    InvalidTileAddress,
    TileOutOfRange,
    UnknownLayer,
    UnknownTileMatrixSet,
    UpstreamError,
    VariantRefused,
)
from gateway.grids import Grid
from gateway.services.http import (
    CONFIG,
    PIPELINE,
    DocumentCache,
    json_error,
    negotiate,
    serve_tile,
    upstream_error,
)
from gateway.tiles import Layer, TilePipeline, shown_number

JSON = "application/json"
# Map tile formats (the elevation encodings are for MapLibre's raster-dem, through XYZ/TileJSON).
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
REL_TILING_SCHEME = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"
REL_TILING_SCHEMES = "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes"
REL_TILESETS_MAP = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-map"
_TILES_CONF = "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/"
_TMS_CONF = "http://www.opengis.net/spec/tms/2.0/conf/"
_F_VALUES = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
# OGC API - Tiles Part 1 has conformance classes for PNG and JPEG, none for WebP.
_FORMAT_CONFORMANCE = {"png": "png", "jpg": "jpeg"}


class FormatError(Exception):
    """The representation asked for cannot be given: ``status`` 400 (a bad ``f``) or 406 (an
    ``Accept`` header nothing offered satisfies)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_json(f: str | None, accept: str | None) -> None:
    """Raise ``FormatError`` unless a JSON document may answer (``f`` absent or ``json``, and
    ``Accept`` absent or admitting ``application/json``)."""
    if f is not None:
        if f.lower() != "json":
            raise FormatError(400, f"f={f!r}: this resource is available as f=json only")
    elif accept and negotiate(accept, (JSON,)) is None:
        raise FormatError(406, f"this resource is available as {JSON} only")


def tile_format(f: str | None, accept: str | None, formats: tuple[str, ...]) -> str:
    """The tile extension to answer with, of the layer's map ``formats`` (the first = default;
    elevation encodings are left out).

    ``f`` (``png``, ``jpg``, ``jpeg`` or ``webp``) wins over ``Accept``. Raises
    ``FormatError``: 400 for an ``f`` the layer does not offer, 406 for an ``Accept`` admitting
    none of its formats.
    """
    formats = tuple(ext for ext in formats if ext in MEDIA_TYPES)
    if f is not None:
        ext = _F_VALUES.get(f.lower())
        if ext not in formats:
            raise FormatError(400, f"f={f!r}: this layer's tiles are f={'|'.join(formats)}")
        return ext
    if not accept:
        return formats[0]
    chosen = negotiate(accept, tuple(MEDIA_TYPES[ext] for ext in formats))
    if chosen is None:
        offered = ", ".join(MEDIA_TYPES[ext] for ext in formats)
        raise FormatError(406, f"this layer's tiles are {offered}; Accept admits none of them")
    return next(ext for ext in formats if MEDIA_TYPES[ext] == chosen)


def link(rel: str, href: str, media_type: str, title: str, **extra: Any) -> dict[str, Any]:
    """A link object (RFC 8288 fields as OGC API encodes them in JSON)."""
    return {"rel": rel, "type": media_type, "title": title, "href": href, **extra}


def registered_uri(grid: Grid) -> str | None:
    """The OGC register URI of ``grid``'s TileMatrixSet, or ``None`` for an unregistered set.

    morecantile gives WGS1984Quad the URI of WorldCRS84Quad (same matrices, but CRS84 is
    lon/lat where EPSG:4326 is lat/lon); a URI naming another set is not this set's.
    """
    uri = grid.definition.uri
    return uri if uri is not None and uri.rsplit("/", 1)[-1] == grid.identifier else None


def tile_matrix_set_document(grid: Grid) -> dict[str, Any]:
    """The OGC TMS 2.0 definition of ``grid`` (17-083r4 /req/json-tilematrixset), by morecantile.

    ``pointOfOrigin`` and ``boundingBox`` corners are in the CRS's axis order (``[90, -180]``
    for the EPSG:4326 set WGS1984Quad); a ``_2x`` set has 512-pixel tiles and half the scale
    denominators of its base; an unregistered set carries no ``uri``.
    """
    document: dict[str, Any] = grid.definition.model_dump(mode="json", exclude_none=True)
    if registered_uri(grid) is None:
        document.pop("uri", None)
    return document


def used_grids(pipeline: TilePipeline) -> dict[str, Grid]:
    """Every TileMatrixSet some layer is served in, in configuration order."""
    grids: dict[str, Grid] = {}
    for layer in pipeline.layers.values():
        grids.update(layer.grids)
    return grids


def landing_page(service: ServiceConfig, base: str) -> dict[str, Any]:
    """The landing page: service title/abstract and links to the API's resources."""
    root = f"{base}/ogcapi"
    return {
        "title": service.title,
        "description": service.abstract,
        "links": [
            link("self", root, JSON, "This document"),
            link("conformance", f"{root}/conformance", JSON, "Conformance classes"),
            link("data", f"{root}/collections", JSON, "Layers"),
            link(REL_TILING_SCHEMES, f"{root}/tileMatrixSets", JSON, "Tile matrix sets"),
        ],
    }


def conformance(formats: set[str], datetime: bool = False) -> dict[str, Any]:
    """The conformance classes of 20-057 and 17-083r4 implemented; PNG and JPEG only when a
    layer offers that format, ``datetime`` when a layer is time-enabled. No ``oas30``: there
    is no OpenAPI document."""
    tiles = ["core", "tileset", "tilesets-list", "geodata-tilesets"]
    tiles += ["datetime"] if datetime else []
    tiles += [_FORMAT_CONFORMANCE[ext] for ext in ("png", "jpg") if ext in formats]
    tms = ["tilematrixset", "json-tilematrixset", "tilesetmetadata", "json-tilesetmetadata"]
    tms += ["tilematrixsetlimits", "json-tilematrixsetlimits"]
    return {"conformsTo": [_TILES_CONF + c for c in tiles] + [_TMS_CONF + c for c in tms]}


def tile_matrix_sets(grids: dict[str, Grid], base: str) -> dict[str, Any]:
    """The list of TileMatrixSets: id, title, register ``uri`` if any, and a ``self`` link to
    the definition."""
    root = f"{base}/ogcapi/tileMatrixSets"
    items = []
    for identifier, grid in grids.items():
        item: dict[str, Any] = {"id": identifier, "title": grid.definition.title or identifier}
        uri = registered_uri(grid)
        if uri is not None:
            item["uri"] = uri
        item["links"] = [link("self", f"{root}/{identifier}", JSON, "Definition")]
        items.append(item)
    return {"links": [link("self", root, JSON, "This document")], "tileMatrixSets": items}


def _title(layer: Layer) -> str:
    return layer.config.title or layer.name


def collection(layer: Layer, base: str) -> dict[str, Any]:
    """A layer as a collection: ``extent`` (CRS84 lon/lat, when the data extent is known) and a
    ``tilesets-map`` link to its tilesets (20-057 /req/geodata-tilesets/desc-links)."""
    href = f"{base}/ogcapi/collections/{layer.name}"
    document: dict[str, Any] = {"id": layer.name, "title": _title(layer), "dataType": "map"}
    if layer.config.attribution:
        document["attribution"] = layer.config.attribution
    if layer.bounds is not None:
        document["extent"] = {"spatial": {"bbox": [list(layer.bounds)], "crs": CRS84}}
    document["links"] = [
        link("self", href, JSON, "This collection"),
        link(REL_TILESETS_MAP, f"{href}/map/tiles", JSON, "Map tilesets"),
    ]
    variants = layer.variants
    if variants.styles:
        # As OGC API - Styles describes a collection's styles: ids, titles and their tiles.
        document["styles"] = [
            {
                "id": style.name,
                "title": style.title,
                "links": [
                    link(
                        REL_TILESETS_MAP,
                        f"{href}/styles/{style.name}/map/tiles",
                        JSON,
                        f"Map tilesets, style {style.name}",
                    )
                ],
            }
            for style in variants.styles
        ]
        document["defaultStyle"] = variants.default_style
    if variants.default_time is not None:
        # The values a tile's datetime may take, the default (sent without one) last.
        document["extent"] = {
            **document.get("extent", {}),
            "temporal": {"interval": [_interval(value) for value in variants.times]},
        }
        document["datetime"] = {"values": list(variants.times), "default": variants.default_time}
    return document


def _interval(value: str) -> list[str]:
    """A time value as an OGC API temporal interval ``[start, end]``."""
    start, _, end = value.partition("/")
    return [start, end or start]


def collections(layers: dict[str, Layer], base: str) -> dict[str, Any]:
    """Every layer as a collection."""
    return {
        "links": [link("self", f"{base}/ogcapi/collections", JSON, "This document")],
        "collections": [collection(layer, base) for layer in layers.values()],
    }


def _tiles_href(layer: Layer, base: str, style: str | None) -> str:
    """The map tilesets of ``layer``, of ``style`` when given (20-057 styled map tiles)."""
    styled = "" if style is None else f"/styles/{style}"
    return f"{base}/ogcapi/collections/{layer.name}{styled}/map/tiles"


def tileset_summary(
    layer: Layer, grid: Grid, base: str, style: str | None = None
) -> dict[str, Any]:
    """The part of a tileset's metadata that the tilesets list repeats: ``title``,
    ``dataType``, ``crs``, ``tileMatrixSetURI`` (registered sets only; 20-057
    /req/tileset/description C), a ``self`` link and the ``tiling-scheme`` link (D); of
    ``style`` when given."""
    href = f"{_tiles_href(layer, base, style)}/{grid.identifier}"
    styled = "" if style is None else f", style {style}"
    summary: dict[str, Any] = {
        "title": f"{_title(layer)}, {grid.identifier}{styled}",
        "dataType": "map",
        "crs": grid.definition.crs.model_dump(mode="json"),
    }
    uri = registered_uri(grid)
    if uri is not None:
        summary["tileMatrixSetURI"] = uri
    summary["links"] = [
        link("self", href, JSON, "Tileset metadata"),
        link(
            REL_TILING_SCHEME,
            f"{base}/ogcapi/tileMatrixSets/{grid.identifier}",
            JSON,
            f"{grid.identifier} definition",
        ),
    ]
    return summary


def tilesets(layer: Layer, base: str, style: str | None = None) -> dict[str, Any]:
    """The tilesets list of a layer (of ``style`` when given): one map tileset per
    TileMatrixSet it is served in."""
    href = _tiles_href(layer, base, style)
    return {
        "links": [link("self", href, JSON, "This document")],
        "tilesets": [tileset_summary(layer, grid, base, style) for grid in layer.grids.values()],
    }


def tileset(layer: Layer, grid: Grid, base: str, style: str | None = None) -> dict[str, Any]:
    """The tileset metadata (17-083r4 /req/json-tilesetmetadata) of ``layer`` in ``grid``.

    ``tileMatrixSetLimits`` lists every TileMatrix of the layer's zoom range that holds data,
    with the inclusive TileRow/TileCol range inside the data extent; ``boundingBox`` is the data
    extent in CRS84 (lon/lat) when known. One templated ``item`` link per format, with ``f`` in
    the URL so each template names one media type (20-057 /req/tileset/description E-G);
    the tiles of ``style`` when given.
    """
    document = tileset_summary(layer, grid, base, style)
    document["tileMatrixSetLimits"] = [
        {
            "tileMatrix": str(z),
            "minTileRow": min_row,
            "maxTileRow": max_row,
            "minTileCol": min_col,
            "maxTileCol": max_col,
        }
        for z, (min_col, max_col, min_row, max_row) in layer.tile_matrix_set_limits(grid).items()
    ]
    if layer.bounds is not None:
        west, south, east, north = layer.bounds
        document["boundingBox"] = {
            "lowerLeft": [west, south],
            "upperRight": [east, north],
            "crs": CRS84,
        }
    formats = [ext for ext in layer.config.formats if ext in MEDIA_TYPES]
    document["mediaTypes"] = [MEDIA_TYPES[ext] for ext in formats]
    if layer.config.attribution:
        document["attribution"] = layer.config.attribution
    template = document["links"][0]["href"] + "/{tileMatrix}/{tileRow}/{tileCol}"
    document["links"] += [
        link("item", f"{template}?f={ext}", MEDIA_TYPES[ext], f"{ext} tiles", templated=True)
        for ext in formats
    ]
    return document


def _timed(pipeline: TilePipeline, name: str) -> bool:
    """Whether layer ``name`` is time-enabled (has a temporal extent)."""
    layer = pipeline.layers.get(name)
    return layer is not None and layer.variants.default_time is not None


class OgcApiService:
    """The OGC API - Tiles handlers and the documents they have built (one per application)."""

    def __init__(self) -> None:
        self._documents = DocumentCache()

    def _document(
        self,
        request: web.Request,
        key: tuple[str, ...],
        build: Callable[[str], Any],
        *,
        absolute: bool = True,
    ) -> web.Response:
        """A JSON document, ``build(public base)`` encoded once per base and ``key``; with
        ``absolute`` false the document holds no URL of the gateway (``build`` ignores the
        base), and so is one document whatever the request's host."""
        try:
            check_json(request.query.get("f"), request.headers.get("Accept"))
        except FormatError as exc:
            return json_error(exc.status, str(exc))
        # Documents list the layers, which published layers change.
        version = request.app[PIPELINE].layers_version
        return self._documents.json_answer(request, (version, *key), build, absolute=absolute)

    async def landing(self, request: web.Request) -> web.Response:
        """``GET /ogcapi``: the landing page."""
        service = request.app[CONFIG].service
        return self._document(request, ("landing",), lambda base: landing_page(service, base))

    async def conformance(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/conformance``."""
        layers = request.app[PIPELINE].layers.values()
        formats = {ext for layer in layers for ext in layer.config.formats}
        timed = any(layer.variants.default_time is not None for layer in layers)
        return self._document(
            request, ("conformance",), lambda _: conformance(formats, timed), absolute=False
        )

    async def tile_matrix_sets(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/tileMatrixSets``."""
        grids = used_grids(request.app[PIPELINE])
        return self._document(
            request, ("tileMatrixSets",), lambda base: tile_matrix_sets(grids, base)
        )

    async def tile_matrix_set(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/tileMatrixSets/<id>``; 404 for a set no layer is served in."""
        identifier = request.match_info["tms"]
        grid = used_grids(request.app[PIPELINE]).get(identifier)
        if grid is None:
            return json_error(404, f"no layer is served in TileMatrixSet {identifier!r}")
        return self._document(
            request,
            ("tileMatrixSet", identifier),
            lambda _: tile_matrix_set_document(grid),
            absolute=False,
        )

    async def collections(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/collections``."""
        layers = request.app[PIPELINE].layers
        return self._document(request, ("collections",), lambda base: collections(layers, base))

    def _layer_document(
        self, request: web.Request, kind: str, build: Callable[[Layer, str], Any]
    ) -> web.Response:
        """The ``kind`` document of the request's layer, ``build(layer, base)``; 404 for an
        unknown layer."""
        name = request.match_info["layer"]
        layer = request.app[PIPELINE].layers.get(name)
        if layer is None:
            return json_error(404, f"unknown collection {name!r}")
        return self._document(request, (kind, name), lambda base: build(layer, base))

    @staticmethod
    def _styled(request: web.Request) -> tuple[Layer, str | None] | web.Response:
        """The request's layer and style (``None`` on unstyled paths), or the 404 answer for
        an unknown layer or a style it does not offer."""
        name, style = request.match_info["layer"], request.match_info.get("style")
        layer = request.app[PIPELINE].layers.get(name)
        if layer is None:
            return json_error(404, f"unknown collection {name!r}")
        if style is not None and style not in layer.variants.style_names:
            offered = ", ".join(layer.variants.style_names)
            return json_error(404, f"{name!r} has the styles {offered}, not {style!r}")
        return layer, style

    async def collection(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/collections/<layer>``; 404 for an unknown layer."""
        return self._layer_document(request, "collection", collection)

    async def tilesets(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/collections/<layer>[/styles/<style>]/map/tiles``; 404 for an unknown
        layer or style."""
        found = self._styled(request)
        if isinstance(found, web.Response):
            return found
        layer, style = found
        return self._document(
            request,
            ("tilesets", layer.name, style or ""),
            lambda base: tilesets(layer, base, style),
        )

    async def tileset(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/collections/<layer>[/styles/<style>]/map/tiles/<tms>``; 404 for an
        unknown layer or style, or a TileMatrixSet the layer is not served in."""
        found = self._styled(request)
        if isinstance(found, web.Response):
            return found
        layer, style = found
        identifier = request.match_info["tms"]
        grid = layer.grids.get(identifier)
        if grid is None:
            return json_error(404, f"{layer.name!r} has no tileset in TileMatrixSet {identifier!r}")
        return self._document(
            request,
            ("tileset", layer.name, identifier, style or ""),
            lambda base: tileset(layer, grid, base, style),
        )

    async def tile(self, request: web.Request) -> web.Response:
        """``GET /ogcapi/collections/<layer>/map/tiles/<tms>/<tileMatrix>/<tileRow>/<tileCol>``.

        404 for an unknown layer or TileMatrixSet, a TileMatrix/TileRow/TileCol outside the set,
        the layer's zoom range or its ``tileMatrixSetLimits`` (/req/core/tc-error A); 400 for a
        non-numeric address or a bad ``f``; 406 for an unsatisfiable ``Accept``; 502/504 when
        the upstream fails. The image is tileWidth x tileHeight of the set (/req/core/tc-success
        C). Without ``f`` the answer varies with ``Accept``, and says so in ``Vary``. The
        path's style (404 when the layer has no such style) and ``datetime`` (400 for a value
        the layer does not offer) choose the variant.
        """
        pipeline = request.app[PIPELINE]
        info = request.match_info
        name, identifier = info["layer"], info["tms"]
        f = request.query.get("f")
        accept = request.headers.get("Accept")
        address = (info["tile_matrix"], info["tile_row"], info["tile_col"])
        style = info.get("style")
        try:
            tile = pipeline.resolve(
                name,
                identifier,
                *address,
                lambda formats: tile_format(f, accept, formats),
                within_limits=True,
                style=style,
                # A collection without a temporal extent ignores datetime.
                time=request.query.get("datetime") if _timed(pipeline, name) else None,
            )
        except UnknownLayer:
            return json_error(404, f"unknown collection {name!r}")
        except UnknownTileMatrixSet:
            return json_error(404, f"{name!r} has no tileset in TileMatrixSet {identifier!r}")
        except FormatError as exc:
            return json_error(exc.status, str(exc))
        except InvalidTileAddress:
            return json_error(400, "tileMatrix, tileRow and tileCol must be whole numbers")
        except TileOutOfRange as exc:
            if exc.scope == "limits":
                z, row, col = (shown_number(part.lstrip("0") or "0") for part in address)
                return json_error(
                    404, f"tile {z}/{row}/{col} is outside the tileMatrixSetLimits of {name!r}"
                )
            return json_error(404, str(exc))
        except VariantRefused as exc:
            if exc.part == "Style":
                return json_error(404, f"{name!r} has no style {style!r}")
            return json_error(400, f"datetime: {exc}", offered=list(exc.offered))
        try:
            return await serve_tile(
                request,
                tile,
                by_accept=True,
                # Without f the format came from Accept (tile_format).
                extra=None if f is not None else {"Vary": "Accept"},
            )
        except UpstreamError as exc:
            return upstream_error(name, exc)

    def routes(self) -> list[web.RouteDef]:
        """The route table, relative to ``/ogcapi``; ``/ogcapi/`` is the landing page too,
        because OWSLib asks for the landing page URL with a trailing slash."""
        prefix = "/collections/{layer}/map/tiles"
        styled = "/collections/{layer}/styles/{style}/map/tiles"
        return [
            # First: aiohttp tries the routes under /collections in this order, and tiles are
            # what is asked most (no path matches two of these patterns).
            web.get(prefix + "/{tms}/{tile_matrix}/{tile_row}/{tile_col}", self.tile),
            web.get(styled + "/{tms}/{tile_matrix}/{tile_row}/{tile_col}", self.tile),
            web.get("", self.landing),
            web.get("/", self.landing),
            web.get("/conformance", self.conformance),
            web.get("/tileMatrixSets", self.tile_matrix_sets),
            web.get("/tileMatrixSets/{tms}", self.tile_matrix_set),
            web.get("/collections", self.collections),
            web.get("/collections/{layer}", self.collection),
            web.get(prefix, self.tilesets),
            web.get(prefix + "/{tms}", self.tileset),
            web.get(styled, self.tilesets),
            web.get(styled + "/{tms}", self.tileset),
        ]


def routes() -> list[web.RouteDef]:
    """The OGC API - Tiles route table, relative to ``/ogcapi`` (a fresh document cache for
    each application)."""
    return OgcApiService().routes()
