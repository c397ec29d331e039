"""The viewer page at ``/``, its script ``/viewer.js`` and the layer list it reads,
``/layers.json``."""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

from gateway.services.http import PIPELINE

_WEB = files("gateway.web")


async def index(request: web.Request) -> web.Response:
    """The viewer: a layer list, a map of the chosen layer in Leaflet, OpenLayers or MapLibre,
    and copy-paste snippets."""
    return web.Response(
        text=_WEB.joinpath("index.html").read_text(encoding="utf-8"),
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


async def layers(request: web.Request) -> web.Response:
    """``{"layers": [{name, title, formats, minzoom, maxzoom, attribution, tiles}]}``.

    ``tiles`` is an XYZ URL template relative to the gateway's root, in the layer's first format.
    """
    pipeline = request.app[PIPELINE]
    body = [
        {
            "name": name,
            "title": layer.config.title or name,
            "formats": layer.config.formats,
            "minzoom": layer.config.minzoom,
            "maxzoom": layer.config.maxzoom,
            "attribution": layer.config.attribution,
            "tiles": f"tiles/{name}/{{z}}/{{x}}/{{y}}.{layer.config.formats[0]}",
        }
        for name, layer in pipeline.layers.items()
    ]
    return web.json_response({"layers": body}, headers={"Cache-Control": "no-cache"})


def routes() -> list[web.RouteDef]:
    """The viewer route table."""
    return [web.get("/", index), web.get("/viewer.js", script), web.get("/layers.json", layers)]
