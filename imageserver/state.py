"""What the routes of the reference ImageServer share through the application: its
configuration, its services (configured ones, and image collections published at run time),
and the thread pool that runs GDAL work off the event loop."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from imageserver.config import ImageServerConfig
from imageserver.raster import RasterSource

CONFIG = web.AppKey("imageserver_config", ImageServerConfig)
SOURCES = web.AppKey("imageserver_sources", dict[str, RasterSource])
EXECUTOR = web.AppKey("imageserver_executor", ThreadPoolExecutor)


def find_source(app: web.Application, name: str) -> tuple[str, RasterSource] | None:
    """Look a service up by name: ``(its name as configured, its raster)``, or ``None``.
    ArcGIS service names are case-insensitive."""
    sources = app[SOURCES]
    if name in sources:
        return name, sources[name]
    folded = name.casefold()
    for key, source in sources.items():
        if key.casefold() == folded:
            return key, source
    return None
