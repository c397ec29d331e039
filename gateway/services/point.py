"""Pixel values at a point, under ``/tiles``: ``GET /<layer>/point?lon=<deg>&lat=<deg>``, with
``&style=`` and ``&time=`` choosing a variant as for tiles.

WGS 84 degrees, longitude first; the answer is the upstream's ``identify`` as plain JSON
(``tiles.point``), not cached (``Cache-Control: no-cache``). Errors are the gateway's JSON:
404 unknown layer, 400 a missing or bad ``lon``/``lat`` or a style or time the layer does not
offer, 502/504 upstream failure.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import UpstreamError, VariantRefused
from gateway.services.http import PIPELINE, json_error, upstream_error
from gateway.tiles import InvalidPoint, parse_point, pixel_values


async def get_point(request: web.Request) -> web.Response:
    """Answer the band values of a layer at ``lon``/``lat`` (module docstring)."""
    name = request.match_info["layer"]
    layer = request.app[PIPELINE].layers.get(name)
    if layer is None:
        return json_error(404, f"unknown layer {name!r}")
    try:
        lon, lat = parse_point(request.query)
    except InvalidPoint as exc:
        return json_error(400, str(exc))
    style, time = request.query.get("style"), request.query.get("time")
    try:
        variant = "" if style is None and time is None else layer.variants.choose(style, time).token
    except VariantRefused as exc:
        return json_error(400, str(exc))
    try:
        answer = await pixel_values(layer, lon, lat, variant)
    except UpstreamError as exc:
        return upstream_error(name, exc)
    return web.json_response(answer, headers={"Cache-Control": "no-cache"})


def routes() -> list[web.RouteDef]:
    """The point route, relative to ``/tiles``."""
    return [web.get("/{layer}/point", get_point)]
