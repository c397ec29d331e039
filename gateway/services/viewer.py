"""The viewer page at ``/`` and the layer list it reads, ``/layers.json``."""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

from gateway.services.common import PIPELINE

_INDEX = files("gateway.web").joinpath("index.html")


async def index(request: web.Request) -> web.Response:
    """The viewer: a layer list and a Leaflet map of the chosen layer."""
    return web.Response(
        text=_INDEX.read_text(encoding="utf-8"),
        content_type="text/html",
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
    return [web.get("/", index), web.get("/layers.json", layers)]
