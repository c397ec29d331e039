"""Operational endpoints: ``/healthz`` (liveness) and ``/readyz`` (readiness) at the root, and
the ``/admin`` front (bearer token from ``TILE_GATEWAY_ADMIN_TOKEN``): ``POST /admin/purge``,
and ``GET|POST /admin/layers``, ``DELETE /admin/layers/<name>`` for published layers."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from typing import Any

from aiohttp import web

from gateway.errors import UnknownLayer, UnknownTileMatrixSet, UpstreamError
from gateway.published import Publisher, PublishRefused
from gateway.purge import Purger, PurgeSpec, PurgeTooLarge
from gateway.services.http import NO_STORE, PIPELINE, json_error
from gateway.tiles import Layer

PURGER = web.AppKey("purger", Purger)
PUBLISHER = web.AppKey("publisher", Publisher)
# The admin API's bearer token, from the environment (never from the config file).
ADMIN_TOKEN_ENV = "TILE_GATEWAY_ADMIN_TOKEN"


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves requests; checks nothing else."""
    return web.json_response({"status": "ok"}, headers=NO_STORE)


async def _probe(layer: Layer) -> str:
    try:
        await layer.client.service_info()
    except UpstreamError as exc:
        return f"error: {exc.message}"
    return "ok"


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the config is loaded (or this would not answer), every layer's upstream
    answers its service info, and the cache's state is reported.

    200 when every upstream is reachable, else 503. A cache outage is reported but does not
    make the gateway unready: tiles are then served from the upstream.
    """
    pipeline = request.app[PIPELINE]
    names = list(pipeline.layers)
    states = await asyncio.gather(*(_probe(pipeline.layers[name]) for name in names))
    upstreams = dict(zip(names, states, strict=True))
    cache_ok = await pipeline.cache.ping()
    ready = all(state == "ok" for state in states)
    body = {
        "status": "ready" if ready else "unready",
        "upstreams": upstreams,
        "cache": {
            "backend": pipeline.cache.backend,
            "state": "ok" if cache_ok else "unavailable",
        },
    }
    return web.json_response(body, status=200 if ready else 503, headers=NO_STORE)


def _authorised(request: web.Request) -> web.Response | None:
    """``None`` when the request carries the admin token, else the error to answer."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        return json_error(403, f"the admin API is disabled: set {ADMIN_TOKEN_ENV}")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        response = json_error(401, "admin token missing or wrong")
        response.headers["WWW-Authenticate"] = 'Bearer realm="tile-gateway admin"'
        return response
    return None


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        return (
            ",".join(str(item) for item in value)
            if name == "bbox"
            else "-".join(str(item) for item in value)
        )
    return str(value)


async def _json_body(request: web.Request, named: str, shape: str) -> dict[str, Any] | web.Response:
    """The JSON object of an authorised admin request's body, naming ``named`` as a string;
    else the answer to give: 401/403 (``_authorised``), or 400 saying the body must be JSON
    of ``shape``."""
    refused = _authorised(request)
    if refused is not None:
        return refused
    try:
        # From bytes: JSON is UTF-8 (RFC 8259 section 8.1) whatever charset a client claims.
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        # RecursionError: arrays or objects nested thousands deep.
        return json_error(400, f"the body must be JSON: {shape}")
    if not isinstance(body, dict) or not isinstance(body.get(named), str):
        return json_error(400, f'the body must name a "{named}"')
    return body


async def purge(request: web.Request) -> web.Response:
    """Purge a layer, or part of it: JSON body ``{"layer": L, "tms"?: T, "zoom"?: "a-b" or
    [a, b], "bbox"?: "W,S,E,N" or [W, S, E, N] (degrees), "style"?: S, "time"?: ISO 8601}``.

    200 with what was done; 400 bad body (a style or time the layer does not offer included);
    401/403 without the token; 404 unknown layer/TMS;
    413 for a partial purge too large to compute.
    """
    body = await _json_body(request, "layer", '{"layer": ..., ...}')
    if isinstance(body, web.Response):
        return body
    try:
        spec = PurgeSpec.parse(
            body["layer"],
            _text(body, "tms"),
            _text(body, "zoom"),
            _text(body, "bbox"),
            _text(body, "style"),
            _text(body, "time"),
        )
        result = await request.app[PURGER].purge(spec)
    except (UnknownLayer, UnknownTileMatrixSet) as exc:
        return json_error(404, str(exc))
    except PurgeTooLarge as exc:
        return json_error(413, str(exc))
    except ValueError as exc:
        return json_error(400, str(exc))
    return web.json_response(
        {
            "layer": result.layer,
            "generation": result.generation,
            "keys": result.keys,
            "deleted": result.deleted,
        },
        headers=NO_STORE,
    )


async def published_layers(request: web.Request) -> web.Response:
    """``GET /admin/layers``: ``{"layers": [{name, jobId, published}]}``, the published
    layers this replica serves."""
    refused = _authorised(request)
    if refused is not None:
        return refused
    layers = request.app[PUBLISHER].published.values()
    return web.json_response({"layers": [layer.describe() for layer in layers]}, headers=NO_STORE)


async def publish(request: web.Request) -> web.Response:
    """``POST /admin/layers`` with ``{"jobId": J, "name"?: N}``: the ImageServer a succeeded
    CreateImageCollection job made becomes tile layer ``N`` (by default the collection's
    name) on every replica. 201 with the layer; 400 bad body, name or result; 404 unknown
    job; 409 a job not succeeded or a configured layer's name; 502/503 upstream or store."""
    body = await _json_body(request, "jobId", '{"jobId": ..., "name"?: ...}')
    if isinstance(body, web.Response):
        return body
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        return json_error(400, '"name" must be a string')
    try:
        layer = await request.app[PUBLISHER].publish_job(body["jobId"], name)
    except PublishRefused as exc:
        return json_error(exc.status, str(exc))
    return web.json_response(layer.describe(), status=201, headers=NO_STORE)


async def unpublish(request: web.Request) -> web.Response:
    """``DELETE /admin/layers/<name>``: the published layer is no longer served, on any
    replica. 200; 404 not published; 409 a configured layer."""
    refused = _authorised(request)
    if refused is not None:
        return refused
    name = request.match_info["name"]
    try:
        await request.app[PUBLISHER].unpublish(name)
    except PublishRefused as exc:
        return json_error(exc.status, str(exc))
    return web.json_response({"name": name, "unpublished": True}, headers=NO_STORE)


def health_routes() -> list[web.RouteDef]:
    """``/healthz`` and ``/readyz``, at the root where probes expect them."""
    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def routes() -> list[web.RouteDef]:
    """The admin route table, relative to ``/admin``."""
    return [
        web.post("/purge", purge),
        web.get("/layers", published_layers),
        web.post("/layers", publish),
        web.delete("/layers/{name}", unpublish),
    ]
