"""The aiohttp application: ArcGIS REST routes of the reference ImageServer.

Routes (GET and POST, each also with a trailing slash)::

    /arcgis/rest/info                                   server info
    /arcgis/rest/services                               catalog
    /arcgis/rest/services/<name>/ImageServer            service root resource
    /arcgis/rest/services/<name>/ImageServer/exportImage
    /arcgis/rest/services/<name>/ImageServer/identify
    /arcgis/rest/services/<name>/ImageServer/getSamples
    /arcgis/rest/services/<name>/ImageServer/computeStatisticsHistograms
    /arcgis/rest/services/<name>/ImageServer/keyProperties
    /arcgis/rest/services/<name>/ImageServer/tile/<level>/<row>/<col>   cached services
    /arcgis/rest/services/<name>/ImageServer/query        (mosaic services: their catalog)
    /arcgis/rest/directories/arcgisoutput/<name>_ImageServer/_ags_<id>.<ext>   (GET)
    /arcgis/rest/services/System                        folder of the GP service
    /arcgis/rest/services/System/RasterAnalysisTools/GPServer/...   see imageserver.gp
    /arcgis/rest/services/Hosted                        folder of the image collections
    /arcgis/rest/services/Hosted/<name>/ImageServer[/<operation>]   as above, for them
    /arcgis/rest/directories/arcgisoutput/Hosted/<name>_ImageServer/_ags_<id>.<ext>   (GET)

plus the token services of :mod:`imageserver.tokens` when ``security.enabled`` is set; then
secured services (their root, operations and output files) answer 499 without a token and
498 with an invalid one, and the catalog lists them only to a valid token. Every answer
carries CORS headers per ``security.allowed_origins`` (:mod:`imageserver.cors`).

Errors follow ArcGIS: HTTP 200 with ``{"error": {"code": 400|404, ...}}`` for client mistakes
(ArcGIS REST "Error handling"; ``docs/arcgis-rest.md`` §3). Rendering and pixel queries run in
the app's own thread pool so the event loop never blocks on GDAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from imageserver import functions, mosaic, pixels, tilecache
from imageserver.config import GP_FOLDER, HOSTED_FOLDER, ImageServerConfig
from imageserver.cors import cors_middleware
from imageserver.encode import EncodedImage, encode
from imageserver.functions import RasterFunction
from imageserver.geometry import Geometry, centroid, parse_geometry, parse_pixel_size
from imageserver.gp import GP_SERVICE, add_gp_routes, folder_json, hosted_folder_json
from imageserver.metadata import catalog, error_payload, server_info, service_info
from imageserver.mosaic import MosaicSource, for_request, open_service
from imageserver.params import (
    Bounds,
    ExportParams,
    ImageFormat,
    ParameterError,
    ResponseFormat,
    parse_export_params,
)
from imageserver.raster import RasterSource, RenderRequest
from imageserver.responses import add_route, error_response, json_response, request_params
from imageserver.security import TokenState
from imageserver.spatialref import spatial_reference_json
from imageserver.state import CONFIG, EXECUTOR, SOURCES, find_source
from imageserver.tilecache import TileStore
from imageserver.tokens import (
    SECURITY,
    add_token_routes,
    guard,
    is_secured,
    owning_system_url,
    token_error,
    token_services_url,
    token_state,
)

log = logging.getLogger(__name__)

REST_ROOT = "/arcgis/rest"
OUTPUT_ROOT = f"{REST_ROOT}/directories/arcgisoutput"
DEFAULT_RESAMPLING = Resampling.bilinear
_BAD_REQUEST = "Unable to complete operation."


class OutputStore:
    """Bounded in-memory store for ``exportImage?f=json`` results, oldest evicted first.

    ArcGIS writes these to its output directory and cleans them up later; clients fetch the
    ``href`` right after the JSON response, so a small LRU is enough.
    """

    def __init__(self, max_items: int = 256, max_bytes: int = 256 * 2**20) -> None:
        self._items: OrderedDict[str, EncodedImage] = OrderedDict()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._bytes = 0

    def put(self, service: str, image: EncodedImage) -> str:
        """Store ``image``; return its path below the output root.

        The path is ``<service>_ImageServer/_ags_<hex id>.<ext>``, like ArcGIS output files.
        """
        key = f"{service}_ImageServer/_ags_{uuid.uuid4().hex}.{image.extension}"
        self._items[key] = image
        self._bytes += len(image.content)
        while self._items and (len(self._items) > self._max_items or self._bytes > self._max_bytes):
            _, evicted = self._items.popitem(last=False)
            self._bytes -= len(evicted.content)
        return key

    def get(self, key: str) -> EncodedImage | None:
        """Return the stored image for a path from :meth:`put`, or ``None`` if evicted/unknown."""
        return self._items.get(key)


OUTPUTS = web.AppKey("imageserver_outputs", OutputStore)
TILES = web.AppKey("imageserver_tiles", TileStore)


def create_app(
    config: ImageServerConfig, *, middlewares: Sequence[Middleware] = ()
) -> web.Application:
    """Build the ImageServer application for ``config``.

    Rasters are opened at startup (in the app's thread pool, concurrently) and closed at
    cleanup. ``middlewares`` run before the handlers, inside the CORS middleware; tests use
    them to record or alter requests.

    Raises (at startup):
        rasterio.errors.RasterioError: a raster cannot be opened.
        ValueError: a raster has no CRS.
    """
    app = web.Application(middlewares=[cors_middleware(config.security), *middlewares])
    app[CONFIG] = config
    app[OUTPUTS] = OutputStore()
    app[TILES] = TileStore()
    app.cleanup_ctx.append(_lifecycle)
    add_token_routes(app, config.security)
    rest = REST_ROOT
    service = f"{rest}/services/{{name}}"
    add_route(app, f"{rest}/info", _handle_info)
    add_route(app, f"{rest}/services", _handle_catalog)
    # Before the generic service routes: ".../System/RasterAnalysisTools/GPServer" would
    # otherwise read as an operation of a service "System".
    add_gp_routes(app)
    # The collections in the Hosted folder, before the generic routes too:
    # ".../Hosted/<name>/ImageServer" would read as the operation <name>/ImageServer of a
    # service "Hosted" (a name the config refuses for that reason).
    hosted = f"{rest}/services/{{folder:{HOSTED_FOLDER}}}/{{name}}"
    add_route(app, f"{hosted}/{{kind}}", _handle_service)
    add_route(app, f"{hosted}/{{kind}}/{{operation}}", _handle_operation)
    add_route(app, service, _handle_folder)
    add_route(app, f"{service}/{{kind}}", _handle_service)
    add_route(app, f"{service}/{{kind}}/{{operation}}", _handle_operation)
    add_route(app, f"{service}/{{kind}}/tile/{{level}}/{{row}}/{{col}}", _handle_tile)
    app.router.add_get(f"{OUTPUT_ROOT}/{{folder}}/{{filename}}", _handle_output)
    app.router.add_get(f"{OUTPUT_ROOT}/{{parent}}/{{folder}}/{{filename}}", _handle_output)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: thread pool and rasters live exactly as long as the app runs."""
    executor = ThreadPoolExecutor(
        max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="imageserver"
    )
    loop = asyncio.get_running_loop()
    specs = app[CONFIG].all_services()
    results = await asyncio.gather(
        *(loop.run_in_executor(executor, open_service, s) for s in specs.values()),
        return_exceptions=True,
    )
    sources = [r for r in results if isinstance(r, RasterSource)]
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        for source in sources:
            source.close()
        executor.shutdown()
        raise failure
    app[SOURCES] = dict(zip(specs, sources, strict=True))
    app[EXECUTOR] = executor
    log.info("imageserver: serving %s", ", ".join(specs) or "no services")
    try:
        yield
    finally:
        executor.shutdown(wait=True)
        # Configured services and the image collections published since.
        for source in app[SOURCES].values():
            source.close()


def _service_not_found(params: Mapping[str, str], name: str) -> web.Response:
    return error_response(params, 404, f"Service {name}/ImageServer not found")


async def _handle_info(request: web.Request) -> web.Response:
    lifetime_minutes = math.ceil(request.app[SECURITY].token_lifetime / 60)
    info = server_info(
        token_services_url=token_services_url(request),
        owning_system_url=owning_system_url(request),
        short_lived_minutes=lifetime_minutes,
    )
    return json_response(info, await request_params(request))


async def _handle_catalog(request: web.Request) -> web.Response:
    # ArcGIS lists secured services only to a caller whose token may use them.
    params = await request_params(request)
    state = token_state(request, params)
    if state is TokenState.INVALID:
        return token_error(request, params, 498)
    # The root lists its own services; the collections are listed in their folder.
    visible = [name for name in _visible(request, state) if "/" not in name]
    return json_response(catalog(visible), params)


def _visible(request: web.Request, state: TokenState) -> list[str]:
    """The services (``<name>`` or ``Hosted/<name>``) a caller whose token is in ``state``
    may see listed: ArcGIS lists secured services only to a valid token."""
    return [
        name
        for name in request.app[SOURCES]
        if state is TokenState.VALID or not is_secured(request.app, name)
    ]


async def _handle_folder(request: web.Request) -> web.Response:
    # Image services live at the root, the GP service in "System" and the collections in
    # "Hosted"; any other ".../services/<x>" is a folder that does not exist.
    params = await request_params(request)
    name = request.match_info["name"]
    if name not in (GP_FOLDER, HOSTED_FOLDER):
        return error_response(params, 404, f"Folder {name} not found")
    state = token_state(request, params)
    if state is TokenState.INVALID:
        return token_error(request, params, 498)
    if name == HOSTED_FOLDER:
        prefix = f"{HOSTED_FOLDER}/"
        hosted = [service for service in _visible(request, state) if service.startswith(prefix)]
        return json_response(hosted_folder_json(hosted), params)
    visible = state is TokenState.VALID or not is_secured(request.app, GP_SERVICE)
    return json_response(folder_json(visible), params)


def _service_name(request: web.Request) -> str:
    """The service a route names: ``<name>``, or ``Hosted/<name>`` in the Hosted folder."""
    name = request.match_info["name"]
    folder = request.match_info.get("folder")
    return name if folder is None else f"{folder}/{name}"


def _open_service(
    request: web.Request, params: Mapping[str, str]
) -> tuple[str, RasterSource] | web.Response:
    """The service a request names (``<folder>/<name>`` in a folder) and its source, once the
    caller may use it (``security.guard``); else the answer: service not found, or refused."""
    name = _service_name(request)
    found = find_source(request.app, name)
    if found is None or request.match_info["kind"].lower() != "imageserver":
        return _service_not_found(params, name)
    refused = guard(request, params, found[0])
    return found if refused is None else refused


async def _handle_service(request: web.Request) -> web.Response:
    params = await request_params(request)
    found = _open_service(request, params)
    if isinstance(found, web.Response):
        return found
    return json_response(service_info(*found), params)


Operation = Callable[[web.Request, Mapping[str, str], str, RasterSource], Any]


async def _handle_operation(request: web.Request) -> web.StreamResponse:
    params = await request_params(request)
    found = _open_service(request, params)
    if isinstance(found, web.Response):
        return found
    operation = _OPERATIONS.get(request.match_info["operation"].lower())
    if operation is None:
        return error_response(params, 400, "Requested operation is not supported by this service.")
    response: web.StreamResponse = await operation(request, params, *found)
    return response


async def _export_image(
    request: web.Request, params: Mapping[str, str], name: str, source: RasterSource
) -> web.StreamResponse:
    try:
        export = parse_export_params(params, band_count=source.count)
        source = for_request(source, params)
        render_request = _render_request(source, export)
        function = _rendering_rule(params, source)
    except ParameterError as exc:
        return error_response(params, 400, _BAD_REQUEST, exc.details)
    loop = asyncio.get_running_loop()
    try:
        image = await loop.run_in_executor(
            request.app[EXECUTOR], _render_and_encode, source, render_request, export, function
        )
    except ParameterError as exc:
        # A function argument that does not fit the raster (e.g. a band it lacks).
        return error_response(params, 400, _BAD_REQUEST, exc.details)
    if export.response_format is ResponseFormat.IMAGE:
        return web.Response(body=image.content, content_type=image.content_type)
    key = request.app[OUTPUTS].put(name, image)
    xmin, ymin, xmax, ymax = render_request.bounds
    payload = {
        "href": str(request.url.origin().with_path(f"{OUTPUT_ROOT}/{key}")),
        "width": render_request.width,
        "height": render_request.height,
        "extent": {
            "xmin": xmin,
            "ymin": ymin,
            "xmax": xmax,
            "ymax": ymax,
            "spatialReference": spatial_reference_json(render_request.crs),
        },
        "scale": 0,
    }
    return json_response(payload, params)


async def _handle_tile(request: web.Request) -> web.Response:
    """``tile/<level>/<row>/<col>`` of a cached service (:mod:`imageserver.tilecache`): the
    tile's bytes, or HTTP 404 with an error JSON when the cache does not hold it, as ArcGIS
    answers a missing tile (``docs/arcgis-rest.md`` §2.1)."""
    params = await request_params(request)
    found = _open_service(request, params)
    if isinstance(found, web.Response):
        return found
    service, source = found
    spec = source.spec.cache
    if spec is None:
        return error_response(params, 400, "Requested operation is not supported by this service.")
    try:
        level, row, col = (int(request.match_info[key]) for key in ("level", "row", "col"))
    except ValueError:
        return error_response(params, 400, _BAD_REQUEST, ["level, row and col must be integers"])
    store = request.app[TILES]
    if not tilecache.holds(spec, store.extent(service, source), level, row, col):
        payload = error_payload(404, "Tile not found", [f"tile/{level}/{row}/{col}"])
        return json_response(payload, params, status=404)
    key = (service, level, row, col)
    tile = store.get(key)
    if tile is None:
        # A cache holds the default rendering: a mosaic's default selection, no time.
        drawn = for_request(source, {})
        tile = await _in_pool(request, tilecache.render_tile, drawn, spec, level, row, col)
        store.put(key, tile)
    return web.Response(body=tile.content, content_type=tile.content_type)


async def _handle_output(request: web.Request) -> web.Response:
    # Output files of a secured service need the token too (esri-leaflet appends ?token= to
    # the href for that reason, docs/arcgis-rest.md §1.2). A collection's files are one
    # folder deeper, as its service is: "Hosted/<name>_ImageServer/_ags_<id>.<ext>".
    folder = request.match_info["folder"]
    parent = request.match_info.get("parent")
    if parent is not None:
        folder = f"{parent}/{folder}"
    service = folder.removesuffix("_ImageServer")
    refused = guard(request, await request_params(request), service)
    if refused is not None:
        return refused
    key = f"{folder}/{request.match_info['filename']}"
    image = request.app[OUTPUTS].get(key)
    if image is None:
        raise web.HTTPNotFound()
    return web.Response(body=image.content, content_type=image.content_type)


async def _identify(
    request: web.Request, params: Mapping[str, str], name: str, source: RasterSource
) -> web.Response:
    """identify: the pixel value at ``geometry`` (a point, or the centroid of another
    geometry), read at the base resolution, after ``renderingRule`` when given (the function's
    output at that pixel). A mosaic service answers for its ``time`` and ``mosaicRule``
    (:func:`imageserver.mosaic.identify`); a raster-dataset service has one raster and ignores
    both. ``pixelSize`` is accepted and ignored."""
    try:
        geometry = _geometry(params, "esriGeometryPoint")
        point = centroid(geometry)
        source = for_request(source, params)
        function = _rendering_rule(params, source)
    except ParameterError as exc:
        return error_response(params, 400, _BAD_REQUEST, exc.details)
    except ValueError as exc:
        return error_response(params, 400, _BAD_REQUEST, [f"Invalid geometry: {exc}"])
    identify = mosaic.identify if isinstance(source, MosaicSource) else pixels.identify
    answer = await _in_pool(request, identify, source, geometry, point)
    if function is not None:
        location = answer["location"]
        try:
            answer["value"] = await _in_pool(
                request, _function_value, source, (location["x"], location["y"]), function
            )
        except ParameterError as exc:
            return error_response(params, 400, _BAD_REQUEST, exc.details)
    return json_response(answer, params)


def _function_value(
    source: RasterSource, point: tuple[float, float], function: RasterFunction
) -> str:
    """The identify ``value`` of ``function`` at the source pixel containing ``point`` (raster
    CRS): the function applied to that pixel (and the neighbours it needs) at native
    resolution, nearest neighbour.

    Raises:
        ParameterError: a function argument does not fit the raster.
    """
    x, y = point
    bounds = source.bounds
    if not (bounds.left <= x < bounds.right and bounds.bottom < y <= bounds.top):
        return pixels.NO_DATA
    res_x, res_y = source.resolution
    left = bounds.left + math.floor((x - bounds.left) / res_x) * res_x
    top = bounds.top - math.floor((bounds.top - y) / res_y) * res_y
    request = RenderRequest(
        bounds=(left, top - res_y, left + res_x, top),
        crs=source.crs,
        width=1,
        height=1,
        bands=tuple(range(source.count)),
        resampling=Resampling.nearest,
        nodata=None,
        expand_palette=False,
    )
    return functions.format_values(functions.render(source, request, function))


async def _get_samples(
    request: web.Request, params: Mapping[str, str], name: str, source: RasterSource
) -> web.Response:
    """getSamples for a point or multipoint ``geometry`` (see :func:`pixels.samples`; on a
    mosaic service, for its ``time`` and ``mosaicRule``: :func:`imageserver.mosaic.samples`)."""
    try:
        geometry = _geometry(params, None)
        source = for_request(source, params)
    except ParameterError as exc:
        return error_response(params, 400, _BAD_REQUEST, exc.details)
    sample = mosaic.samples if isinstance(source, MosaicSource) else pixels.samples
    try:
        answer = await _in_pool(request, sample, source, geometry)
    except ValueError as exc:
        return error_response(params, 400, _BAD_REQUEST, [f"Invalid geometry: {exc}"])
    return json_response(answer, params)


async def _compute_statistics_histograms(
    request: web.Request, params: Mapping[str, str], name: str, source: RasterSource
) -> web.Response:
    """computeStatisticsHistograms over an envelope or polygon ``geometry`` at ``pixelSize``
    (default: the native cell size), see :func:`pixels.statistics_histograms`."""
    try:
        geometry = _geometry(params, None)
        pixel_size = None
        if "pixelsize" in params:
            pixel_size = parse_pixel_size(params["pixelsize"])
        source = for_request(source, params)
    except ParameterError as exc:
        return error_response(params, 400, _BAD_REQUEST, exc.details)
    except ValueError as exc:
        return error_response(params, 400, _BAD_REQUEST, [f"Invalid pixelSize: {exc}"])
    try:
        centre = pixels.to_source_points(source, [centroid(geometry)], geometry.crs)[0]
        size = pixels.source_pixel_size(source, pixel_size, centre)
        answer = await _in_pool(request, pixels.statistics_histograms, source, geometry, size)
    except ValueError as exc:
        return error_response(params, 400, _BAD_REQUEST, [f"Invalid geometry: {exc}"])
    return json_response(answer, params)


async def _key_properties(
    request: web.Request, params: Mapping[str, str], name: str, source: RasterSource
) -> web.Response:
    return json_response(pixels.key_properties(source), params)


async def _query(
    request: web.Request, params: Mapping[str, str], name: str, source: RasterSource
) -> web.Response:
    """query: the catalog of a mosaic service (:func:`imageserver.mosaic.query`); a
    raster-dataset service has no catalog (no ``Catalog`` capability)."""
    if not isinstance(source, MosaicSource):
        return error_response(params, 400, "Requested operation is not supported by this service.")
    try:
        answer = mosaic.query(source, params)
    except ParameterError as exc:
        return error_response(params, 400, _BAD_REQUEST, exc.details)
    return json_response(answer, params)


_OPERATIONS: dict[str, Operation] = {
    "exportimage": _export_image,
    "query": _query,
    "identify": _identify,
    "getsamples": _get_samples,
    "computestatisticshistograms": _compute_statistics_histograms,
    "keyproperties": _key_properties,
}


def _geometry(params: Mapping[str, str], default_type: str | None) -> Geometry:
    """The ``geometry`` parameter typed by ``geometryType`` (``default_type`` when absent).

    Raises:
        ParameterError: missing or malformed.
    """
    if "geometry" not in params:
        raise ParameterError(["geometry is required"])
    try:
        return parse_geometry(params["geometry"], params.get("geometrytype", default_type))
    except ValueError as exc:
        raise ParameterError([f"Invalid geometry: {exc}"]) from exc


async def _in_pool(request: web.Request, function: Callable[..., Any], *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR], functools.partial(function, *args))


def _render_request(source: RasterSource, export: ExportParams) -> RenderRequest:
    """Resolve defaults and turn the bbox into the output extent in ``imageSR``.

    Defaults: bbox = the service extent, bboxSR = imageSR = the service SR, all bands,
    bilinear resampling (the advertised ``defaultResamplingMethod``).

    Raises:
        ParameterError: the bbox cannot be expressed in the image SR.
    """
    if export.bbox is None:
        left, bottom, right, top = source.bounds
        bbox: Bounds = (left, bottom, right, top)
        bbox_crs = source.crs
    else:
        bbox, bbox_crs = export.bbox, export.bbox_crs or source.crs
    image_crs = export.image_crs or source.crs
    if bbox_crs != image_crs:
        bbox = _project_bbox(bbox, bbox_crs, image_crs)
    if export.adjust_aspect_ratio:
        bbox = adjust_aspect_ratio(bbox, export.width, export.height)
    return RenderRequest(
        bounds=bbox,
        crs=image_crs,
        width=export.width,
        height=export.height,
        bands=tuple(range(source.count)) if export.band_ids is None else export.band_ids,
        # Not `or`: Resampling.nearest is 0 and falsy.
        resampling=DEFAULT_RESAMPLING if export.resampling is None else export.resampling,
        nodata=export.nodata,
        expand_palette=export.image_format is not ImageFormat.TIFF,
    )


def _project_bbox(bbox: Bounds, src: CRS, dst: CRS) -> Bounds:
    try:
        projected = transform_bounds(src, dst, *bbox, densify_pts=21)
    except RasterioError as exc:
        raise ParameterError([f"The bbox cannot be projected to imageSR: {exc}"]) from exc
    xmin, ymin, xmax, ymax = projected
    if not all(math.isfinite(v) for v in projected) or xmin >= xmax or ymin >= ymax:
        raise ParameterError(["The bbox cannot be projected to imageSR"])
    return xmin, ymin, xmax, ymax


def adjust_aspect_ratio(bbox: Bounds, width: int, height: int) -> Bounds:
    """Grow ``bbox`` around its centre so that its aspect ratio is ``width / height``.

    This is ``adjustAspectRatio=true`` (ArcGIS REST "Export Image", 10.3+): pixels come out
    square and the image still shows all of the requested bbox.
    """
    xmin, ymin, xmax, ymax = bbox
    bbox_width, bbox_height = xmax - xmin, ymax - ymin
    target = width / height
    if bbox_width / bbox_height < target:
        half = bbox_height * target / 2
        centre = (xmin + xmax) / 2
        return centre - half, ymin, centre + half, ymax
    half = bbox_width / target / 2
    centre = (ymin + ymax) / 2
    return xmin, centre - half, xmax, centre + half


def _rendering_rule(params: Mapping[str, str], source: RasterSource) -> RasterFunction | None:
    """The ``renderingRule`` parameter, parsed against the service's templates.

    Raises:
        ParameterError: unknown function or template, or a bad argument.
    """
    if "renderingrule" not in params:
        return None
    return functions.parse_rendering_rule(params["renderingrule"], functions.templates(source))


def _render_and_encode(
    source: RasterSource,
    request: RenderRequest,
    export: ExportParams,
    function: RasterFunction | None = None,
) -> EncodedImage:
    function = functions.display_rule(source, function, export.image_format, export.pixel_type)
    rendered = functions.render(source, request, function)
    candidates: list[float] = []
    if export.nodata is not None and len(set(export.nodata.values)) == 1:
        candidates.append(export.nodata.values[0])
    # A function's output values are not the source's: its nodata could be a real value.
    if source.nodata is not None and function is None:
        candidates.append(source.nodata)
    return encode(
        rendered,
        image_format=export.image_format,
        pixel_type=export.pixel_type,
        quality=export.quality,
        crs=request.crs,
        nodata_candidates=candidates,
    )
