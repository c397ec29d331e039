"""Small servers for ``bench/cache.py``: the bare baselines and a counting reference ImageServer.

Each runs in its own process (``bench/cache.py`` starts and stops them)::

    python bench/servers.py dict     --port P --manifest tiles.json
    python bench/servers.py redis    --port P --manifest tiles.json --redis-url redis://...
    python bench/servers.py upstream --port P
    python bench/servers.py proxy    --port P --upstream http://127.0.0.1:U

``dict`` and ``redis`` are the baselines of the gateway's cache hits: one aiohttp handler on
the gateway's XYZ route that answers a tile path with the bytes the gateway gave for it (from a
dict, or after one redis-py ``GET`` of the gateway's own cache entry, whose fixed-size header
is sliced off) and the headers the gateway sent with it. They run on uvloop when it is
installed, like ``tile-gateway serve``, with aiohttp's access log off (the gateway runs at
``--log-level WARNING``, which turns its access log off too).

``upstream`` is the reference ImageServer (``imageserver.app.create_app``, built-in services,
asyncio loop and no access log) with a middleware that counts ``exportImage`` calls and the
bytes of their answers, and can hold each one back for a while, controlled through two extra
routes::

    GET  /_bench/stats               {"export": <calls so far>, "export_bytes": <body bytes>,
                                      "kinds": {<kind>: {"calls", "bytes", "example"}},
                                      "delay": <seconds>}
    POST /_bench/delay?seconds=S     hold every later exportImage S seconds before rendering

A call's kind is its ``format``, ``size``, ``bboxSR`` and ``imageSR`` (``format=jpeg
size=1024,1024 bboxSR=3857 imageSR=3857``); ``example`` is the latest query of that kind, so a
benchmark can show what the client it just ran really asked for. Counting in the server itself
costs a dict update per call, where a counting proxy in front would add a hop to every call.

``proxy`` is the floor of any gateway for cold misses: one aiohttp ``ClientSession.get`` to the
upstream per request (keep-alive pool, like the gateway's), the body answered as it came, no
cache; on uvloop like the gateway.

The manifest (written by ``bench/cache.py``) is ``{"tiles": [{"path", "file", "headers",
"key", "skip"}, ...]}``: the request path, the file holding the tile bytes, the response
headers, and for ``redis`` the cache key and the length of the entry header to skip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

# The gateway's XYZ route (gateway/services/xyz.py), so routing costs the same.
TILE_ROUTE = "/tiles/{layer}/{z}/{x}/{name}"


def load_manifest(path: Path) -> list[dict[str, Any]]:
    """The tile records of a manifest written by ``bench/cache.py``."""
    return list(json.loads(path.read_text())["tiles"])


def dict_app(manifest: Path) -> web.Application:
    """Baseline (a): each tile's bytes and headers from a dict keyed by request path."""
    tiles: dict[str, tuple[bytes, dict[str, str]]] = {
        tile["path"]: (Path(tile["file"]).read_bytes(), tile["headers"])
        for tile in load_manifest(manifest)
    }

    async def handler(request: web.Request) -> web.Response:
        found = tiles.get(request.path)
        if found is None:
            raise web.HTTPNotFound()
        body, headers = found
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get(TILE_ROUTE, handler)
    return app


def redis_app(manifest: Path, redis_url: str) -> web.Application:
    """Baseline (b): one redis-py asyncio ``GET`` of the gateway's entry per request."""
    import redis.asyncio as redis

    tiles: dict[str, tuple[str, int, dict[str, str]]] = {
        tile["path"]: (tile["key"], tile["skip"], tile["headers"])
        for tile in load_manifest(manifest)
    }
    clients: list[redis.Redis] = []

    async def handler(request: web.Request) -> web.Response:
        found = tiles.get(request.path)
        if found is None:
            raise web.HTTPNotFound()
        key, skip, headers = found
        value = await clients[0].get(key)
        if value is None:
            raise web.HTTPNotFound()
        return web.Response(body=value[skip:], headers=headers)

    async def client(_app: web.Application) -> AsyncIterator[None]:
        # The client the gateway builds for a redis:// URL (gateway/cache/redis_client.py).
        clients.append(redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5))
        yield
        await clients[0].aclose()

    app = web.Application()
    app.router.add_get(TILE_ROUTE, handler)
    app.cleanup_ctx.append(client)
    return app


def upstream_app() -> web.Application:
    """The reference ImageServer with the exportImage counter and delay (see module doc)."""
    from imageserver.app import create_app
    from imageserver.config import load_config

    state: dict[str, Any] = {"export": 0, "export_bytes": 0, "kinds": {}, "delay": 0.0}

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.lower().endswith("/exportimage"):
            return await handler(request)
        state["export"] += 1
        if state["delay"]:
            await asyncio.sleep(state["delay"])
        response = await handler(request)
        # exportImage answers with a body in memory (web.Response); f=image is the image itself.
        size = response.content_length or 0
        query = request.query
        kind = " ".join(f"{k}={query.get(k, '-')}" for k in ("format", "size", "bboxSR", "imageSR"))
        found = state["kinds"].setdefault(kind, {"calls": 0, "bytes": 0})
        found["example"] = request.path_qs
        found["calls"] += 1
        found["bytes"] += size
        state["export_bytes"] += size
        return response

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(state)

    async def delay(request: web.Request) -> web.Response:
        state["delay"] = float(request.query.get("seconds", "0"))
        return web.json_response(state)

    app = create_app(load_config(None), middlewares=[count])
    app.router.add_get("/_bench/stats", stats)
    app.router.add_post("/_bench/delay", delay)
    return app


def proxy_app(upstream: str) -> web.Application:
    """Reference for cold misses: forward each request's path and query to ``upstream``."""
    import aiohttp

    sessions: list[aiohttp.ClientSession] = []

    async def handler(request: web.Request) -> web.Response:
        async with sessions[0].get(upstream + request.path_qs) as response:
            body = await response.read()
            return web.Response(
                body=body, status=response.status, content_type=response.content_type
            )

    async def session(_app: web.Application) -> AsyncIterator[None]:
        # The gateway's upstream session (gateway/resources.py): one keep-alive pool.
        connector = aiohttp.TCPConnector(limit=100, limit_per_host=100)
        sessions.append(aiohttp.ClientSession(connector=connector))
        yield
        await sessions[0].close()

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    app.cleanup_ctx.append(session)
    return app


async def serve(app: web.Application, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` without access log until cancelled."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Parse the command line and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("kind", choices=("dict", "redis", "upstream", "proxy"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--manifest", type=Path, help="tile manifest (dict, redis)")
    parser.add_argument("--redis-url", help="Redis holding the gateway's entries (redis)")
    parser.add_argument("--upstream", help="origin to forward to (proxy)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.kind == "upstream":
        # Like `python -m imageserver`: aiohttp's default asyncio loop.
        app = upstream_app()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(app, args.port))
        return
    if args.kind == "proxy":
        if not args.upstream:
            parser.error("proxy needs --upstream")
        app = proxy_app(args.upstream.rstrip("/"))
    elif args.manifest is None or (args.kind == "redis" and not args.redis_url):
        parser.error("dict needs --manifest; redis needs --manifest and --redis-url")
    elif args.kind == "dict":
        app = dict_app(args.manifest)
    else:
        app = redis_app(args.manifest, args.redis_url)
    try:
        import uvloop
    except ImportError:
        runner: Callable[[Any], None] = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(app, args.port))


if __name__ == "__main__":
    main()
