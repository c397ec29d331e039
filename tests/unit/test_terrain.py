"""The elevation encoders of ``gateway.terrain``, decoded here by the published formulas
(Mapbox "Terrain-RGB v1", Tilezen "terrarium"), and the float TIFF reader against GeoTIFFs
written by rasterio (GDAL), as ArcGIS and the reference ImageServer write them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from affine import Affine
from PIL import Image
from rasterio.io import MemoryFile

from gateway.imaging import UndecodableImage
from gateway.terrain import NODATA, cut_heights, encode_heights, read_heights


def decode(png: bytes, encoding: str) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        rgb = np.asarray(image, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if encoding == "terrain-rgb":
        return -10000 + (r * 256 * 256 + g * 256 + b) * 0.1
    return r * 256 + g + b / 256 - 32768


def geotiff(heights: np.ndarray, nodata: float | None) -> bytes:
    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            width=heights.shape[1],
            height=heights.shape[0],
            count=1,
            dtype="float32",
            nodata=nodata,
            crs="EPSG:3857",
            transform=Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0),
        ) as dataset:
            dataset.write(heights.astype(np.float32), 1)
        return memfile.read()


@pytest.mark.parametrize(("encoding", "step"), [("terrain-rgb", 0.1), ("terrarium", 1 / 256)])
def test_heights_round_trip_within_half_a_step(encoding: str, step: float) -> None:
    rng = np.random.default_rng(13)
    heights = rng.uniform(-420.0, 8848.0, (64, 64))
    heights[0, :4] = [-0.04, 0.0, 0.06, 1234.5678]
    decoded = decode(encode_heights(heights, encoding), encoding)
    assert np.abs(decoded - heights).max() <= step / 2 + 1e-9


def test_no_data_is_sea_level_and_heights_clip_to_the_range() -> None:
    heights = np.array([[np.nan, -50000.0, 40000.0, 2e6]])
    assert decode(encode_heights(heights, "terrarium"), "terrarium").tolist() == [
        [0.0, -32768.0, 32768 - 1 / 256, 32768 - 1 / 256]
    ]
    rgb = decode(encode_heights(heights, "terrain-rgb"), "terrain-rgb")
    assert rgb[0, :3].tolist() == pytest.approx([0.0, -10000.0, 40000.0])
    assert rgb[0, 3] == pytest.approx(-10000 + (2**24 - 1) * 0.1)


def test_float_tiff_no_data_from_the_tag_the_sentinel_and_nan() -> None:
    heights = np.array([[1.5, -9999.0], [NODATA, np.nan], [7.25, 0.0]], dtype=np.float32)
    read = read_heights(geotiff(heights, -9999.0), (2, 3))
    assert read[0, 0] == 1.5 and read[2, 0] == 7.25 and read[2, 1] == 0.0
    assert np.isnan(read[[0, 1, 1], [1, 0, 1]]).all()
    # Without a nodata tag, -9999 is a height like any other.
    assert read_heights(geotiff(heights, None), (2, 3))[0, 1] == -9999.0


def test_cut_heights_cuts_the_boxes() -> None:
    heights = np.arange(16, dtype=np.float32).reshape(4, 4)
    tiles = cut_heights(geotiff(heights, None), (4, 4), [(0, 0, 2, 2), (2, 2, 4, 4)], "terrarium")
    assert decode(tiles[0], "terrarium").tolist() == [[0, 1], [4, 5]]
    assert decode(tiles[1], "terrarium").tolist() == [[10, 11], [14, 15]]


# Pillow warns of the truncated TIFF's tags before it fails to read its pixels.
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_what_is_not_one_band_of_float_heights_is_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    with pytest.raises(UndecodableImage, match="not one band of float32"):
        read_heights(buffer.getvalue(), (2, 2))
    tiff = geotiff(np.zeros((2, 2)), None)
    with pytest.raises(UndecodableImage, match="2 x 2 pixels, not 4 x 4"):
        read_heights(tiff, (4, 4))
    with pytest.raises(UndecodableImage):
        read_heights(tiff[: len(tiff) // 2], (2, 2))
