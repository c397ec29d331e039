"""The tile pipeline and what it holds open, built from a config: one keep-alive session per
upstream origin, the tile cache, the TileMatrixSets and the layers. Used by the web app for its
lifetime and by the one-shot commands (seed, purge)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from gateway.cache.store import TileCache
from gateway.config import GatewayConfig
from gateway.grids import GridRegistry
from gateway.sources.imageserver import UpstreamError
from gateway.tiles import Layer, TilePipeline, build_layers, origin_of

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_pipeline(
    config: GatewayConfig, *, l1: bool = True, agent: str = "tile-gateway/0.1"
) -> AsyncIterator[TilePipeline]:
    """The pipeline of ``config``, closed (background refreshes awaited, cache and sessions
    closed) on exit. ``l1`` False turns the in-process LRU off (a command that serves no tile
    has no use for it); ``agent`` is the upstream User-Agent. Service info is not loaded: see
    ``load_service_info``."""
    cache_config = config.cache if l1 else config.cache.model_copy(update={"l1_max_bytes": 0})
    cache = TileCache(cache_config)
    origins = {origin_of(layer.service_url) for layer in config.layers.values()}
    sessions = {
        origin: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, limit_per_host=100),
            headers={"User-Agent": agent},
        )
        for origin in origins
    }
    grids = GridRegistry(config.tile_matrix_sets)
    pipeline = TilePipeline(
        build_layers(config, sessions, grids),
        cache,
        config.cache.prefix,
        grids,
        config.cache.lock_lease,
    )
    try:
        yield pipeline
    finally:
        await pipeline.close()
        await cache.close()
        for session in sessions.values():
            await session.close()


async def load_service_info(layers: list[Layer], timeout: float) -> None:
    """Each layer's data extent and maximum image size from its upstream, concurrently, within
    ``timeout`` seconds. A layer whose upstream does not answer keeps its configured bounds (or
    none: every tile of the matrix is then asked for) and the default image limits."""

    async def load(layer: Layer) -> None:
        try:
            await asyncio.wait_for(layer.load_service_info(), timeout)
        except (UpstreamError, TimeoutError) as exc:
            reason = (
                exc.message if isinstance(exc, UpstreamError) else f"no answer in {timeout:g} s"
            )
            log.warning("layer %s: service info unavailable: %s", layer.name, reason)

    await asyncio.gather(*(load(layer) for layer in layers))
