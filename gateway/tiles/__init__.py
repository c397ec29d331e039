"""The tile pipeline, where the protocol fronts, the cache and the upstream meet: one tile
address for every front (``address``), ready layers (``layer``) and the pipeline that finds
or makes each tile (``pipeline``)."""

from gateway.tiles.address import TileRequest, shown_number
from gateway.tiles.layer import Layer, load_service_info
from gateway.tiles.pipeline import CacheStatus, TilePipeline, TileResult, open_pipeline

__all__ = [
    "CacheStatus",
    "Layer",
    "TilePipeline",
    "TileRequest",
    "TileResult",
    "load_service_info",
    "open_pipeline",
    "shown_number",
]
