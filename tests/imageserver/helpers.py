"""Helpers shared by the ImageServer tests: requests, decoding, sampling source rasters."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from aiohttp.test_utils import TestClient
from PIL import Image
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import rowcol
from rasterio.warp import transform

SERVICES = "/arcgis/rest/services"


def export_path(service: str) -> str:
    return f"{SERVICES}/{service}/ImageServer/exportImage"


async def export(client: TestClient, service: str, **params: Any) -> tuple[str, bytes]:
    """GET exportImage with ``f=image``; return (content type, body)."""
    query = {"f": "image", **{k: str(v) for k, v in params.items()}}
    response = await client.get(export_path(service), params=query)
    assert response.status == 200
    body = await response.read()
    assert response.content_type.startswith("image/"), body[:500]
    return response.content_type, body


async def export_error(client: TestClient, service: str, **params: Any) -> dict[str, Any]:
    """GET exportImage expecting an ArcGIS error; return the ``error`` object."""
    query = {"f": "image", **{k: str(v) for k, v in params.items()}}
    response = await client.get(export_path(service), params=query)
    assert response.status == 200
    document = json.loads(await response.text())
    assert set(document) == {"error"}, document
    return document["error"]


def decode_png(body: bytes, mode: str = "RGBA") -> np.ndarray:
    """``(height, width, channels)`` uint8 pixels of a PNG/JPEG body, converted to ``mode``."""
    with Image.open(io.BytesIO(body)) as image:
        return np.asarray(image.convert(mode))


def read_tiff(body: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(bands, height, width)`` pixels, the dataset mask and the profile of a GeoTIFF body."""
    with MemoryFile(body) as memfile, memfile.open() as dataset:
        return dataset.read(), dataset.dataset_mask(), dict(dataset.profile)


def native_grid(path: Path) -> dict[str, str]:
    """exportImage params reproducing the raster's own grid (bbox = bounds, size = shape)."""
    with rasterio.open(path) as dataset:
        bounds, width, height = dataset.bounds, dataset.width, dataset.height
    return {
        "bbox": ",".join(repr(v) for v in bounds),
        "size": f"{width},{height}",
        "interpolation": "RSP_NearestNeighbor",
    }


def pixel_centres(
    bbox: tuple[float, float, float, float], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every output pixel centre, each ``(height, width)``, in the bbox's CRS."""
    xmin, ymin, xmax, ymax = bbox
    xs = xmin + (np.arange(width) + 0.5) * (xmax - xmin) / width
    ys = ymax - (np.arange(height) + 0.5) * (ymax - ymin) / height
    return np.meshgrid(xs, ys)


def sample_source(
    path: Path,
    crs: CRS,
    xs: np.ndarray,
    ys: np.ndarray,
    bands: list[int],
    shift: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Source pixel values (``len(bands)`` x ``xs.shape``) under points given in ``crs``.

    ``shift`` moves the sampled source pixel by (rows, columns).
    """
    with rasterio.open(path) as dataset:
        sx, sy = transform(crs, dataset.crs, xs.ravel(), ys.ravel())
        rows, cols = rowcol(dataset.transform, sx, sy)
        data = dataset.read([b + 1 for b in bands])
    rows = np.clip(np.asarray(rows) + shift[0], 0, data.shape[1] - 1)
    cols = np.clip(np.asarray(cols) + shift[1], 0, data.shape[2] - 1)
    return data[:, rows, cols].reshape(len(bands), *xs.shape)


def match_rates(
    actual: np.ndarray, path: Path, crs: CRS, xs: np.ndarray, ys: np.ndarray, bands: list[int]
) -> tuple[float, float]:
    """Compare nearest-neighbour output ``(bands, h, w)`` with the source under its pixels.

    Returns the fraction of pixels equal to the source pixel under their centre, and the
    fraction equal to it or to one of its 8 neighbours. GDAL's warper approximates the
    transformation to 1/8 source pixel, so pixels near a source pixel edge may pick the
    neighbour; a misplaced image fails the first rate.
    """
    exact = (actual == sample_source(path, crs, xs, ys, bands)).all(axis=0)
    near = np.zeros_like(exact)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            shifted = sample_source(path, crs, xs, ys, bands, (dr, dc))
            near |= (actual == shifted).all(axis=0)
    return float(exact.mean()), float(near.mean())
