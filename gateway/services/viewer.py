"""The viewer page at ``/``, its script ``/viewer.js``, the layer list it reads,
``/layers.json``, and the map libraries it loads, ``/vendor/<name>@<version>/<path>``."""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

from aiohttp import web

from gateway.config import ELEVATION_FORMATS
from gateway.grids import WEB_MERCATOR_QUAD
from gateway.imaging import MAP_FORMATS
from gateway.services.http import CONFIG, PIPELINE, json_error

_WEB = files("gateway.web")
# index.html's stand-in for the base URL of the map libraries (see index()).
_LIBRARIES_PLACEHOLDER = "{{libraries}}"
# Relative to the page, so the gateway may sit behind a proxy's path prefix.
_LOCAL_LIBRARIES = "vendor/"
# The path names a package version, so a file never changes under it.
_IMMUTABLE = "public, max-age=31536000, immutable"
# By suffix; the scripts hold UTF-8 text (e.g. "©" in attributions), so the charset matters.
_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # Leaflet's LICENSE
}


def _vendored_files() -> dict[str, Traversable]:
    """Every file of gateway/web/vendor/<name>@<version>/, by its path below vendor/.

    The vendor route answers these names and nothing else, so no path from a request ever
    reaches the file system: ``..``, encoded slashes or symlinks cannot lead anywhere else.
    (aiohttp's static route would walk the folder per request, and cannot add Cache-Control
    without an app-wide signal.)
    """
    found: dict[str, Traversable] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file():
                found[prefix + entry.name] = entry

    for package in _WEB.joinpath("vendor").iterdir():
        if package.is_dir():
            walk(package, f"{package.name}/")
    return found


_VENDORED = _vendored_files()


@cache
def _vendored_body(path: str) -> bytes:
    # Keyed by _VENDORED's names only: at most the vendored files (about 2.4 MB) stay in memory.
    return _VENDORED[path].read_bytes()


async def index(request: web.Request) -> web.Response:
    """The viewer: a layer list, a map of the chosen layer in Leaflet, OpenLayers or MapLibre,
    and copy-paste snippets.

    The page's ``<meta name="tile-gateway-libraries">`` gives viewer.js the base URL of the map
    libraries: ``vendor/`` (relative to the page) or ``viewer.cdn_url``, after
    ``viewer.libraries``.
    """
    viewer = request.app[CONFIG].viewer
    base = _LOCAL_LIBRARIES if viewer.libraries == "local" else str(viewer.cdn_url)
    page = _WEB.joinpath("index.html").read_text(encoding="utf-8")
    return web.Response(
        text=page.replace(_LIBRARIES_PLACEHOLDER, html.escape(base, quote=True)),
        content_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


async def script(request: web.Request) -> web.Response:
    """The viewer's script."""
    return web.Response(
        text=_WEB.joinpath("viewer.js").read_text(encoding="utf-8"),
        content_type="text/javascript",
        headers={"Cache-Control": "no-cache"},
    )


async def vendored(request: web.Request) -> web.Response:
    """``/vendor/<name>@<version>/<path>``: a file of a map library the viewer loads, as the
    npm package holds it (gateway/web/vendor, written by scripts/vendor-web-libraries.py).

    Answered with its content type and ``Cache-Control: public, max-age=31536000, immutable``;
    any other path below ``/vendor/`` is a JSON 404.
    """
    path = request.match_info["path"]
    if path not in _VENDORED:
        return json_error(404, f"no vendored file {path!r}")
    content_type = _CONTENT_TYPES.get(PurePosixPath(path).suffix, "application/octet-stream")
    return web.Response(
        body=_vendored_body(path),
        headers={
            "Content-Type": content_type,
            "Cache-Control": _IMMUTABLE,
        },
    )


async def layers(request: web.Request) -> web.Response:
    """``{"layers": [{name, title, formats, minzoom, maxzoom, attribution, tiles, terrain,
    styles, default_style, times, default_time}]}``.

    ``tiles`` is an XYZ URL template relative to the gateway's root, in the layer's first map
    format (png, jpg, webp) and default variant; ``terrain`` its first elevation encoding
    (``terrain-rgb`` or ``terrarium``, which the viewer's MapLibre map shows as 3D terrain),
    else ``None``. ``styles`` lists the layer's styles (``[{name, title}]``, empty when it has
    none) and ``times`` its time values (empty when it is not time-enabled), which the viewer
    offers to pick (``?style=``, ``?time=`` of the tile URLs).
    """
    pipeline = request.app[PIPELINE]
    body = [
        {
            "name": name,
            "title": layer.config.title or name,
            "formats": layer.config.formats,
            "minzoom": zooms[0],
            "maxzoom": zooms[1],
            "attribution": layer.config.attribution,
            "tiles": f"tiles/{name}/{{z}}/{{x}}/{{y}}.{_first(layer.formats, MAP_FORMATS)}",
            "terrain": _first(layer.formats, ELEVATION_FORMATS),
            "styles": [
                {"name": style.name, "title": style.title} for style in layer.variants.styles
            ],
            "default_style": layer.variants.default_style,
            "times": list(layer.variants.times),
            "default_time": layer.variants.default_time,
        }
        for name, layer in pipeline.layers.items()
        # The viewer's maps are Web Mercator XYZ.
        for zooms in [layer.zoom_range(pipeline.grids[WEB_MERCATOR_QUAD])]
    ]
    return web.json_response({"layers": body}, headers={"Cache-Control": "no-cache"})


def _first(formats: tuple[str, ...], kinds: tuple[str, ...]) -> str | None:
    """The first of ``formats`` that is one of ``kinds``, else ``None``."""
    return next((ext for ext in formats if ext in kinds), None)


def routes() -> list[web.RouteDef]:
    """The viewer route table."""
    return [
        web.get("/", index),
        web.get("/viewer.js", script),
        web.get("/layers.json", layers),
        web.get("/vendor/{path:.+}", vendored),
    ]
