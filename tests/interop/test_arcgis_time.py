"""The ArcGIS API for Python (``arcgis`` from PyPI) on the reference ImageServer's time-enabled
``naip_time``: ``export_image(time=...)``, ``filter_by(time=...)`` (a catalog ``query``, then a
LockRaster mosaic rule), ``mosaic_by(...)`` and ``identify`` give the scene each asks for,
compared with rasterio reads of the two NAIP scenes (which differ at every pixel).

The client (``arcgis_time_client.py``) runs in its own process with the interpreter of
``.venv/arcgis``, connected to the ImageServer (on a real socket of this test's event loop) as to
a stand-alone ArcGIS Server; every connection outside the loopback interface is refused there.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS

from imageserver.app import create_app
from imageserver.config import ImageServerConfig
from tests.conftest import DATA
from tests.imageserver.conftest import AiohttpClient
from tests.imageserver.helpers import pixel_centres, sample_source
from tests.interop.test_proxy_arcgis import arcgis_python

__all__ = ["arcgis_python"]  # a module fixture, used by name
CLIENT = Path(__file__).with_name("arcgis_time_client.py")
SCENE_2010 = DATA / "m_4709963_se_14_1_20100629.tif"
SCENE_2020 = DATA / "m_4709963_se_14_1_20200831.tif"
# 200 x 150 pixels of the 2010 scene's grid, inside both scenes.
BBOX = (487400.0, 5207495.0, 488400.0, 5208245.0)
SIZE = (200, 150)
POINT = (488012.3, 5207033.7)
UTM14 = CRS.from_epsg(26914)
BANDS = [0, 1, 2, 3]


def ms(year: int, month: int, day: int) -> int:
    """Milliseconds since the epoch of a UTC midnight."""
    return int(datetime.datetime(year, month, day, tzinfo=datetime.UTC).timestamp()) * 1000


T2010, T2020 = ms(2010, 6, 29), ms(2020, 8, 31)


def scene(path: Path) -> np.ndarray:
    """``(4, 150, 200)`` pixels of the scene under the centres of the exported pixels."""
    xs, ys = pixel_centres(BBOX, *SIZE)
    return sample_source(path, UTM14, xs, ys, BANDS)


def value_at(path: Path) -> str:
    """identify's ``value`` of the scene at ``POINT``."""
    values = sample_source(path, UTM14, np.array([POINT[0]]), np.array([POINT[1]]), BANDS)
    return ", ".join(str(int(v)) for v in values[:, 0])


async def test_arcgis_api_for_python_selects_scenes_by_time_and_mosaic_rule(
    arcgis_python: str, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(ImageServerConfig()))
    site = str(client.make_url("/arcgis"))
    arguments = [
        site,
        "naip_time",
        ",".join(map(str, BBOX)),
        *map(str, SIZE),
        "26914",
        str(T2010),
        str(T2020),
        ",".join(map(str, POINT)),
        str(tmp_path),
    ]
    process = await asyncio.create_subprocess_exec(
        arcgis_python,
        str(CLIENT),
        *arguments,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_PROXY": "*", "TZ": "UTC"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, stderr.decode()[-4000:]
    report = json.loads(stdout.decode().splitlines()[-1])
    assert report["refused"] == []
    assert all(line.split(" ", 1)[1].startswith(site) for line in report["requests"])

    assert report["timeInfo"]["startTimeField"] == "AcquisitionDate"
    assert report["timeInfo"]["timeExtent"] == [T2010, T2020]
    # filter_by asked the catalog for the rasters acquired after 2015: the 2020 one.
    assert any("/naip_time/ImageServer/query" in line for line in report["requests"])
    assert report["objectIds"] == [2]
    early, late = scene(SCENE_2010), scene(SCENE_2020)
    assert (early != late).any(axis=0).all()
    for file, expected in (
        ("default.tif", late),  # the newest on top
        ("time_2010.tif", early),
        ("filter_2020.tif", late),
        ("locked_1.tif", early),
        ("oldest_first.tif", early),
    ):
        with rasterio.open(tmp_path / file) as exported:
            assert (exported.width, exported.height) == SIZE, file
            np.testing.assert_array_equal(exported.read(), expected, err_msg=file)

    assert report["identify"] == [value_at(SCENE_2010), value_at(SCENE_2020)]
