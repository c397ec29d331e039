"""WMTS 1.0.0 (OGC 07-057r7): the ``/wmts`` front, the ServiceMetadata document and tiles,
by KVP and RESTful.

Routes (under ``/wmts``):

- ``GET /wmts?SERVICE=WMTS&REQUEST=GetCapabilities`` and ``GET /wmts/1.0.0/WMTSCapabilities.xml``:
  the ServiceMetadata (capabilities) document. A bare ``/wmts`` and
  ``SERVICE=WMS&REQUEST=GetCapabilities`` (what QGIS asks a bare endpoint) get it too.
- ``GET /wmts?SERVICE=WMTS&REQUEST=GetTile&...`` (KVP, 07-057r7 section 8) and
  ``GET /wmts/1.0.0/<layer>/<Style>[/<Time>]/<TileMatrixSet>/<TileMatrix>/<TileRow>/<TileCol>.png``
  (or ``.jpg``; RESTful, section 10): one tile, through the same ``TilePipeline`` (and cache
  entries) as XYZ.
  A layer's styles are its WMTS Styles and its time values the ``Time`` Dimension
  (KVP ``TIME=``).

Errors are OWS 1.1 ExceptionReports (06-121r3 section 8) with the exceptionCode, locator and HTTP
status the OGC ETS (ets-wmts10) checks: 400 for KVP requests, 404 for RESTful misses and any
other path under ``/wmts``, 406 for an ``Accept`` that excludes XML, 501 for GetFeatureInfo,
the upstream's 502/504 when it fails, 503 with ``Retry-After`` when it is busy.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from gateway import errors
from gateway.services.http import PIPELINE, negotiate, serve_tile
from gateway.services.wmts import kvp as kvp_encoding
from gateway.services.wmts.capabilities import CAPABILITIES_PATH, MEDIA_TYPES, TIME, contents_of
from gateway.services.wmts.ows import (
    VERSION,
    OwsException,
    WmtsError,
    exception_report,
    invalid,
    render_error,
)
from gateway.tiles import TileRequest, shown_number

__all__ = ["render_error", "routes"]

_REST_TILE_NAME: Final = re.compile(r"(?P<col>-?[0-9]+)\.(?P<ext>[A-Za-z0-9]+)")
_EXTENSIONS: Final = {media_type: ext for ext, media_type in MEDIA_TYPES.items()}
# The media types under which the ServiceMetadata may be sent (RFC 9110 section 12.5.1).
_XML_TYPES: Final = ("application/xml", "text/xml")


def locate(
    request: web.Request,
    layer: str,
    style: str,
    media_type: str,
    tile_matrix_set: str,
    tile_matrix: str,
    tile_row: str,
    tile_col: str,
    time: str | None = None,
) -> TileRequest:
    """The pipeline's ``TileRequest`` for a GetTile (07-057r7 section 7.2) whose values are
    still text, checked against what the document advertises (the layer's
    TileMatrixSetLimits, Styles and Time Dimension values; ``time`` ``None``, or the keyword
    ``default``, is the Dimension's Default).

    Raises ``WmtsError`` (400) with InvalidParameterValue for an unknown Layer, Style, Format,
    TileMatrixSet or TileMatrix identifier, Time value or a non-integer TileRow/TileCol, and
    TileOutOfRange
    (locator ``TileRow`` or ``TileCol``) for a tile outside the layer's TileMatrixSetLimits,
    even when the matrix itself holds it.
    """
    pipeline = request.app[PIPELINE]
    try:
        tile = pipeline.resolve(
            layer,
            tile_matrix_set,
            tile_matrix,
            tile_row,
            tile_col,
            # An unknown media type is no format at all, even one that is an extension.
            _EXTENSIONS.get(media_type, ""),
            within_limits=True,
            wmts=True,
            # WMTS clients send the style even when there is one: resolve checks it.
            style=style,
            time=time if _timed(request, layer) else None,
        )
    except errors.UnknownLayer:
        raise WmtsError(400, invalid("Layer", f"no layer {layer!r}")) from None
    except errors.UnknownTileMatrixSet as exc:
        served = ", ".join(exc.offered)
        raise WmtsError(
            400,
            invalid(
                "TileMatrixSet", f"layer {layer!r} is served in {served}, not {tile_matrix_set!r}"
            ),
        ) from None
    except errors.UnsupportedFormat as exc:
        offered = ", ".join(MEDIA_TYPES[ext] for ext in exc.offered if ext in MEDIA_TYPES)
        raise WmtsError(
            400, invalid("Format", f"layer {layer!r} offers {offered}, not {media_type!r}")
        ) from None
    except (errors.InvalidTileAddress, errors.TileOutOfRange) as exc:
        if exc.part == "TileMatrix":
            raise WmtsError(
                400,
                invalid(
                    "TileMatrix",
                    f"layer {layer!r} has no TileMatrix {tile_matrix!r} in {tile_matrix_set}",
                ),
            ) from None
        if isinstance(exc, errors.InvalidTileAddress):
            raise WmtsError(400, invalid(exc.part, str(exc))) from None
        shown = (
            exc.value
            if exc.value is not None
            else shown_number(tile_row if exc.part == "TileRow" else tile_col)
        )
        raise WmtsError(
            400,
            OwsException(
                "TileOutOfRange",
                exc.part,
                f"{exc.part} {shown} is outside {exc.low}..{exc.high} for layer {layer!r} at "
                f"TileMatrix {tile_matrix} of {tile_matrix_set}",
            ),
        ) from None
    except errors.VariantRefused as exc:
        raise WmtsError(400, invalid(exc.part, f"layer {layer!r}: {exc}")) from None
    return tile


def _timed(request: web.Request, layer: str) -> bool:
    """Whether ``layer`` has a Time Dimension: without one, a TIME parameter is a parameter
    the layer does not know, which a GetTile ignores as it ignores any other
    (ogc-interop.md section 1.4)."""
    found = request.app[PIPELINE].layers.get(layer)
    return found is not None and found.variants.default_time is not None


async def _serve(request: web.Request, tile: TileRequest) -> web.StreamResponse:
    """The tile from the pipeline (ETag/304 like XYZ); an upstream failure is NoApplicableCode
    with the upstream's status (502/504), code and message, never its URL.

    A busy upstream (``UpstreamBusy``) is NoApplicableCode too, with HTTP 503 and
    ``Retry-After``: OWS 1.1 (06-121r3 Table 25) and WMTS 1.0.0 (07-057r7 Table 24) have no
    exceptionCode for an overloaded server, and NoApplicableCode is the one for a failure no
    other code fits; the HTTP status and header carry what a client acts on.
    """
    try:
        return await serve_tile(request, tile)
    except errors.UpstreamBusy as exc:
        raise WmtsError(
            exc.status,
            OwsException(
                "NoApplicableCode",
                None,
                f"the upstream of layer {tile.layer!r} is busy: "
                f"{exc.message}; retry in {exc.retry_after} s",
            ),
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except errors.UpstreamError as exc:
        code = "" if exc.code is None else f" (code {exc.code})"
        raise WmtsError(
            exc.status,
            OwsException(
                "NoApplicableCode",
                None,
                f"the upstream of layer {tile.layer!r} failed{code}: {exc.message}",
            ),
        ) from None


async def kvp(request: web.Request) -> web.StreamResponse:
    """``GET /wmts?...``: GetCapabilities or GetTile by KVP (07-057r7 section 8).

    No parameters at all, or ``SERVICE=WMS&REQUEST=GetCapabilities``, also get the document.
    Errors (400 unless said otherwise): MissingParameterValue (service, request, and each
    missing GetTile parameter), InvalidParameterValue (service, request, Sections, a GetTile
    value), VersionNegotiationFailed (AcceptVersions without 1.0.0), TileOutOfRange,
    OperationNotSupported 501 for GetFeatureInfo, NoApplicableCode 502/503/504 from the upstream.
    """
    try:
        found = kvp_encoding.parameters(request.query)
        if not found:
            return contents_of(request).response(request)
        operation = kvp_encoding.operation(found)
        if operation == "GetCapabilities":
            sections = kvp_encoding.capabilities_sections(found)
            return contents_of(request).response(request, sections)
        if operation == "GetTile":
            kvp_encoding.check_get_tile(found)
            tile = locate(
                request,
                found["layer"],
                found["style"],
                found["format"],
                found["tilematrixset"],
                found["tilematrix"],
                found["tilerow"],
                found["tilecol"],
                found.get(TIME.lower()),
            )
            return await _serve(request, tile)
        if operation == "GetFeatureInfo":
            raise WmtsError(
                501,
                OwsException(
                    "OperationNotSupported", "GetFeatureInfo", "GetFeatureInfo is not offered"
                ),
            )
        raise WmtsError(
            400, invalid("request", f"unknown request {operation!r}: GetCapabilities, GetTile")
        )
    except WmtsError as error:
        return exception_report(error)


async def rest_capabilities(request: web.Request) -> web.Response:
    """``GET /wmts/1.0.0/WMTSCapabilities.xml``: the ServiceMetadata resource (07-057r7
    sections 7.1.3 and 10.1); any query (OWSLib appends one) is ignored. 406 when ``Accept``
    excludes XML."""
    accept = request.headers.get("Accept")
    if accept is not None and negotiate(accept, _XML_TYPES) is None:
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
    return contents_of(request).response(request)


async def rest_tile(request: web.Request) -> web.StreamResponse:
    """``GET /wmts/1.0.0/<layer>/<Style>[/<Time>]/<TileMatrixSet>/<TileMatrix>/<TileRow>/<TileCol>
    .<ext>`` (07-057r7 section 10.2; ``<Time>`` for a time-enabled layer, else its default).
    A tile the KVP encoding would refuse with 400 is 404 here, with
    the same exceptionCode and locator (section 10.2.5: illegal path values are 404); upstream
    failures keep their 502/503/504."""
    info = request.match_info
    if "time" in info:
        found = request.app[PIPELINE].layers.get(info["layer"])
        if found is None or found.variants.default_time is None:
            # Without a Time dimension the path has one part too many: no such resource.
            return render_error(request, 404, "")
    match = _REST_TILE_NAME.fullmatch(info["name"])
    try:
        if match is None:
            raise WmtsError(
                404, invalid("TileCol", "a tile is <TileCol>.<png|jpg|webp>, e.g. 17.png")
            )
        try:
            tile = locate(
                request,
                info["layer"],
                info["style"],
                MEDIA_TYPES.get(match["ext"], match["ext"]),
                info["tms"],
                info["matrix"],
                info["row"],
                match["col"],
                info.get("time"),
            )
        except WmtsError as error:
            raise WmtsError(404, *error.exceptions) from None
        return await _serve(request, tile)
    except WmtsError as error:
        return exception_report(error)


def routes() -> list[web.RouteDef]:
    """The WMTS route table, relative to ``/wmts``; any other path under it is a 404
    ExceptionReport from the front's middleware (``ows.render_error``)."""
    return [
        web.get("", kvp),
        web.get(CAPABILITIES_PATH.removeprefix("/wmts"), rest_capabilities),
        web.get(f"/{VERSION}/{{layer}}/{{style}}/{{tms}}/{{matrix}}/{{row}}/{{name}}", rest_tile),
        web.get(
            f"/{VERSION}/{{layer}}/{{style}}/{{time}}/{{tms}}/{{matrix}}/{{row}}/{{name}}",
            rest_tile,
        ),
    ]
