"""Reading request parameters and writing ArcGIS-style JSON answers, shared by the routes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from imageserver.metadata import error_payload
from imageserver.params import (
    ResponseFormat,
    normalize_params,
    parse_callback,
    parse_response_format,
)


async def request_params(request: web.Request) -> dict[str, str]:
    """Query and form parameters merged, names lower-cased, empty values dropped."""
    form = await request.post() if request.method == "POST" else {}
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    return normalize_params(request.query, fields)


def json_response(
    payload: Mapping[str, Any], params: Mapping[str, str], *, status: int = 200
) -> web.Response:
    """Serialize ``payload`` as ``f=json`` / ``f=pjson``, wrapped in the JSONP ``callback``."""
    pretty = parse_response_format(params) is ResponseFormat.PJSON
    text = json.dumps(payload, indent=2 if pretty else None)
    callback = parse_callback(params)
    if callback is not None:
        return web.Response(
            text=f"{callback}({text});", content_type="application/javascript", status=status
        )
    return web.json_response(text=text, status=status)


def error_response(
    params: Mapping[str, str],
    code: int,
    message: str,
    details: Sequence[str] = (),
    *,
    message_code: str | None = None,
) -> web.Response:
    """An ArcGIS error under HTTP 200: ArcGIS puts the real status in the body (§3)."""
    return json_response(error_payload(code, message, details, message_code=message_code), params)


def add_route(app: web.Application, path: str, handler: Handler) -> None:
    """Route GET and POST on ``path`` and ``path/``: clients use both (§0)."""
    for route in (path, f"{path}/"):
        app.router.add_get(route, handler)
        app.router.add_post(route, handler)
