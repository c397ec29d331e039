"""Fixtures for the reference ImageServer tests: real rasters from ``tests/data``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from imageserver.app import create_app
from imageserver.config import ImageServerConfig, ServiceSpec
from tests.conftest import DATA

# Service name -> file in tests/data.
RASTERS = {
    "rgb": "RGB.byte.tif",  # EPSG:32618, 3 x uint8, nodata 0
    "dtm": "dtm.tif",  # EPSG:26918, float32, nodata -9999 with holes
    "naip": "m_4709963_se_14_1_20100629.tif",  # EPSG:26914, 4 x uint8 (R,G,B,NIR), nodata 0
    "earth": "earth_day_UHD.tif",  # EPSG:4326, paletted uint8
    "landsat": "mosaic_cog1.tif",  # EPSG:32618, 3 x uint16, nodata 0
}

AiohttpClient = Callable[[web.Application], Awaitable[TestClient]]


def data_path(name: str) -> Path:
    """Path of a test raster of ``tests/data``, failing the test with a clear message when it
    is missing."""
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"the test raster is missing: {path}")
    return path


@pytest.fixture
def config() -> ImageServerConfig:
    """Built-in services plus the rasters of ``RASTERS``."""
    services = {
        name: ServiceSpec(name=name, path=data_path(file), description=f"test {name}")
        for name, file in RASTERS.items()
    }
    return ImageServerConfig(services=services, builtin=True)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, config: ImageServerConfig) -> TestClient:
    """A client of the ImageServer app running on a real socket."""
    return await aiohttp_client(create_app(config))
