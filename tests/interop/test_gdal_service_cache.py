"""GDAL's WMS driver reads the reference ImageServer's tile cache from its ``tileInfo``
(``<service>/ImageServer?f=json``: GDAL's ArcGIS tiled-service mode builds
``tile/${z}/${y}/${x}`` from the LODs), and the pixels land where the source raster says."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform

from tests.conftest import DATA, free_port, wait_for_port
from tests.interop.test_gdal import PROBES, Z9, errors, gdal, run_gdal, translate

__all__ = ["gdal"]  # the fixture, used by name


@pytest.fixture(scope="module")
def cached_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of RGB.byte.tif as a cached service (LODs 0-12) of a reference ImageServer
    process."""
    workdir = tmp_path_factory.mktemp("cached-imageserver")
    config, log = workdir / "imageserver.yaml", workdir / "imageserver.log"
    config.write_text(
        "builtin: false\nservices:\n"
        f"  rgb:\n    path: {DATA / 'RGB.byte.tif'}\n    cache: {{max_level: 12}}\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "imageserver", "--config", str(config), "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    wait_for_port(port, process, log, timeout=60)
    try:
        yield f"http://127.0.0.1:{port}/arcgis/rest/services/rgb/ImageServer"
    finally:
        process.terminate()
        process.wait(10)


def test_gdal_reads_the_cache_through_its_tile_info(
    gdal: dict[str, str], cached_service: str, tmp_path: Path
) -> None:
    source = f"{cached_service}?f=json"
    info = run_gdal([gdal["gdalinfo"], source]).stdout
    # Level 12 is the last LOD: 256 x 2^12 pixels across the Web Mercator square.
    assert "Size is 1048576, 1048576" in info
    out = tmp_path / "cache.tif"
    # Inside the scene (Landsat 7 over the Bahamas, EPSG:32618) at level 9.
    translate(gdal, source, out, (-8760000, 2920000, -8560000, 2720000), Z9)
    with rasterio.open(out) as result:
        # GDAL's ArcGIS tiled mode opens 3 bands (no alpha): transparent pixels read black.
        assert result.count == 3 and result.crs.to_string() == "EPSG:3857"
        pixels = result.read()
        rows, cols = np.meshgrid(
            np.linspace(4, result.height - 5, PROBES).astype(int),
            np.linspace(4, result.width - 5, PROBES).astype(int),
            indexing="ij",
        )
        rows, cols = rows.ravel(), cols.ravel()
        xs, ys = (np.asarray(v) for v in rasterio.transform.xy(result.transform, rows, cols))
    got = pixels[:, rows, cols].T
    with rasterio.open(DATA / "RGB.byte.tif") as scene:
        data = scene.read()
        sx, sy = transform("EPSG:3857", scene.crs, xs.tolist(), ys.tolist())
        rows, cols = rasterio.transform.rowcol(scene.transform, sx, sy)
    rows = np.clip(np.asarray(rows), 0, data.shape[1] - 1)
    cols = np.clip(np.asarray(cols), 0, data.shape[2] - 1)
    expected = data[:, rows, cols].T
    shifted = data[:, rows, np.clip(cols + 8, 0, data.shape[2] - 1)].T
    has_data = expected.any(axis=1)
    assert has_data.sum() > len(has_data) // 2
    error, shifted_error = errors(got[has_data], expected[has_data], shifted[has_data])
    assert error < 10, error
    assert shifted_error > error + 10, (error, shifted_error)
