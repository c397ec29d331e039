"""The tile pipeline, where the protocol fronts, the cache and the upstream meet: one tile
address for every front (``address``), ready layers (``layer``), the pipeline that finds
or makes each tile (``pipeline``) and pixel values at a point (``point``)."""

from gateway.tiles.address import TileRequest, shown_number
from gateway.tiles.layer import Layer, load_service_info
from gateway.tiles.pipeline import CacheStatus, TilePipeline, TileResult, open_pipeline
from gateway.tiles.point import InvalidPoint, parse_point, pixel_values

__all__ = [
    "CacheStatus",
    "InvalidPoint",
    "Layer",
    "TilePipeline",
    "TileRequest",
    "TileResult",
    "load_service_info",
    "open_pipeline",
    "parse_point",
    "pixel_values",
    "shown_number",
]
