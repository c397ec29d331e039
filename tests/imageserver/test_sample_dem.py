"""The built-in elevation service ``jacksboro``: matplotlib's sample DEM, read independently
with numpy and compared with what exportImage returns as float32 GeoTIFF."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
from aiohttp.test_utils import TestClient

from tests.imageserver.helpers import export, read_tiff

NPZ = files("matplotlib") / "mpl-data/sample_data/jacksboro_fault_dem.npz"


def archive() -> dict[str, np.ndarray]:
    with NPZ.open("rb") as file, np.load(file) as data:
        return {key: data[key] for key in data.files}


async def test_jacksboro_extent_is_the_bounds_the_archive_carries(client: TestClient) -> None:
    dem = archive()
    response = await client.get("/arcgis/rest/services/jacksboro/ImageServer", params={"f": "json"})
    info = await response.json(content_type=None)
    extent = info["extent"]
    # The archive calls its north edge ymin and its south edge ymax.
    assert extent["xmin"] == dem["xmin"] and extent["xmax"] == dem["xmax"]
    assert extent["ymax"] == max(dem["ymin"], dem["ymax"])
    assert extent["ymin"] == min(dem["ymin"], dem["ymax"])
    assert extent["spatialReference"]["wkid"] == 4326
    assert info["bandCount"] == 1 and info["pixelType"] == "F32"


async def test_jacksboro_exports_the_archive_heights_as_float_tiff(client: TestClient) -> None:
    dem = archive()
    heights = dem["elevation"]
    north = float(max(dem["ymin"], dem["ymax"]))
    dx = float(dem["dx"])
    # A 40 x 30 pixel window at the native grid, 100 columns and 50 rows in from the
    # north-west corner: pixels map one to one.
    west, top = float(dem["xmin"]) + 100 * dx, north - 50 * dx
    _, body = await export(
        client,
        "jacksboro",
        bbox=f"{west!r},{top - 30 * dx!r},{west + 40 * dx!r},{top!r}",
        bboxSR=4326,
        imageSR=4326,
        size="40,30",
        format="tiff",
        pixelType="F32",
    )
    pixels, _, profile = read_tiff(body)
    assert profile["dtype"] == "float32"
    np.testing.assert_array_equal(pixels[0], heights[50:80, 100:140].astype(np.float32))
