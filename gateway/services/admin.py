"""Operational endpoints: ``/healthz`` (liveness) and ``/readyz`` (readiness)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.services.common import NO_STORE, PIPELINE
from gateway.sources.imageserver import UpstreamError
from gateway.tiles import Layer


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


def routes() -> list[web.RouteDef]:
    """The admin route table."""
    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
