"""The built-in elevation service ``jacksboro``: matplotlib's sample DEM of the Jacksboro fault
(Tennessee) as a georeferenced float32 GeoTIFF, built in memory from the ``.npz`` the
matplotlib package ships (``mpl-data/sample_data/jacksboro_fault_dem.npz``).

The archive holds ``elevation`` (344 x 403 int16 metres, row 0 at the north, as matplotlib's
own examples draw it), the pixel size ``dx``/``dy`` (1/1200 degree, 3 arc-seconds) and the
bounds ``xmin``/``xmax`` (west/east edges, degrees) and ``ymin``/``ymax`` (the north and south
edges: the archive names them the other way round; the larger is taken as north). It names no
datum: the grid is taken as WGS 84 (EPSG:4326). It has no nodata.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.io import MemoryFile

# The package file and its path inside the package.
PACKAGE = "matplotlib"
RESOURCE = "mpl-data/sample_data/jacksboro_fault_dem.npz"

_cache: dict[Path, MemoryFile] = {}
_lock = threading.Lock()


def sample_dem_geotiff(path: Path) -> MemoryFile:
    """An in-memory float32 GeoTIFF (EPSG:4326) of the DEM archive at ``path`` (see the module
    docstring), built once per process and kept for its lifetime, as the plate-carrée images
    are (``imageserver.raster``).

    Raises:
        OSError, KeyError, ValueError: ``path`` is not such an archive.
    """
    with _lock:
        if path not in _cache:
            _cache[path] = _build(path)
        return _cache[path]


def _build(path: Path) -> MemoryFile:
    with np.load(path) as archive:
        heights = archive["elevation"].astype(np.float32)
        dx, dy = float(archive["dx"]), float(archive["dy"])
        west = float(archive["xmin"])
        north = max(float(archive["ymin"]), float(archive["ymax"]))
    height, width = heights.shape
    memfile = MemoryFile()
    with memfile.open(
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=Affine(dx, 0.0, west, 0.0, -dy, north),
    ) as dataset:
        dataset.write(heights, 1)
    return memfile
