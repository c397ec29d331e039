"""App startup/cleanup, the output store, and the command line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from aiohttp import web
from aiohttp.test_utils import TestServer
from rasterio.errors import RasterioError

from imageserver.__main__ import main
from imageserver.app import OutputStore, create_app
from imageserver.config import ImageServerConfig, ServiceSpec
from imageserver.encode import EncodedImage

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


def config_for(path: Path) -> ImageServerConfig:
    return ImageServerConfig(services={"x": ServiceSpec(name="x", path=path)}, builtin=False)


async def test_unreadable_raster_fails_startup(aiohttp_server: AiohttpServer, tmp_path: Path):
    path = tmp_path / "not-a-raster.tif"
    path.write_text("hello")
    with pytest.raises(RasterioError):
        await aiohttp_server(create_app(config_for(path)))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
async def test_raster_without_crs_fails_startup(aiohttp_server: AiohttpServer, tmp_path: Path):
    path = tmp_path / "no-crs.tif"
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no coordinate reference system"):
        await aiohttp_server(create_app(config_for(path)))


def test_output_store_evicts_oldest_first() -> None:
    store = OutputStore(max_items=2, max_bytes=10)
    image = EncodedImage(b"1234", "image/png", "png")
    first = store.put("svc", image)
    second = store.put("svc", image)
    assert first.startswith("svc_ImageServer/_ags_") and first.endswith(".png")
    assert store.get(first) == store.get(second) == image
    third = store.put("svc", image)
    assert store.get(first) is None
    assert store.get(third) == image
    big = store.put("svc", EncodedImage(b"0123456789", "image/png", "png"))  # fills max_bytes alone
    assert store.get(second) is None and store.get(third) is None and store.get(big) is not None


def test_cli_rejects_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services:\n  x:\n    path: missing.tif\n")
    assert main(["--config", str(path)]) == 2
    assert "no such file" in capsys.readouterr().err
