"""GDAL's ArcGIS Server minidriver (``AGS``, what QGIS's ArcGIS REST provider uses for image
services) through the reverse proxy, pointed at the gateway's ``.../rgb/ImageServer`` of a
token-secured upstream: it never holds a token, and the image it reads is the source raster.

``gdal_translate`` reads the whole Landsat scene (RGB.byte.tif, EPSG:32618) at its own
resolution through ``ServerUrl=<gateway>/arcgis/rest/services/rgb/ImageServer/exportImage?``;
the pixels are compared with the file read by rasterio, and with the file shifted by a few
pixels to show that the comparison can tell a misplaced image.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import DATA
from tests.interop.proxy_support import proxy_gateway_url, secured_imageserver

__all__ = ["proxy_gateway_url", "secured_imageserver"]  # session fixtures, used by name
SCENE = DATA / "RGB.byte.tif"


@pytest.fixture(scope="module")
def gdal_translate() -> str:
    """The Debian ``gdal_translate``; the test fails (never skips) without it."""
    path = shutil.which("gdal_translate")
    if path is None:
        pytest.fail(
            "gdal_translate not found: install gdal-bin (Debian: apt-get install gdal-bin, or "
            "scripts/install-test-deps.sh)"
        )
    return path


def ags_xml(server_url: str, bounds: rasterio.coords.BoundingBox, width: int, height: int) -> str:
    """A GDAL WMS service description for the AGS minidriver (GDAL ``frmts/wms`` docs)."""
    return f"""<GDAL_WMS>
  <Service name="AGS">
    <ServerUrl>{server_url}</ServerUrl>
    <BBoxOrder>xyXY</BBoxOrder>
    <SRS>EPSG:32618</SRS>
    <CRS>EPSG:32618</CRS>
    <ImageFormat>png</ImageFormat>
    <Transparent>FALSE</Transparent>
  </Service>
  <DataWindow>
    <UpperLeftX>{bounds.left}</UpperLeftX>
    <UpperLeftY>{bounds.top}</UpperLeftY>
    <LowerRightX>{bounds.right}</LowerRightX>
    <LowerRightY>{bounds.bottom}</LowerRightY>
    <SizeX>{width}</SizeX>
    <SizeY>{height}</SizeY>
  </DataWindow>
  <BandsCount>3</BandsCount>
  <BlockSizeX>{width}</BlockSizeX>
  <BlockSizeY>{height}</BlockSizeY>
  <MaxConnections>1</MaxConnections>
</GDAL_WMS>
"""


def test_gdal_ags_reads_the_secured_scene_through_the_proxy(
    gdal_translate: str, proxy_gateway_url: str, tmp_path: Path
) -> None:
    with rasterio.open(SCENE) as source:
        bounds, width, height = source.bounds, source.width, source.height
        expected = source.read().astype(np.int16)
    service = f"{proxy_gateway_url}/arcgis/rest/services/rgb/ImageServer"
    xml = tmp_path / "ags.xml"
    xml.write_text(ags_xml(f"{service}/exportImage?", bounds, width, height))
    output = tmp_path / "scene.tif"
    result = subprocess.run(
        [gdal_translate, "-q", str(xml), str(output)],
        env={"GDAL_ENABLE_WMS_CACHE": "NO", "CPL_DEBUG": "OFF", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    with rasterio.open(output) as read:
        got = read.read().astype(np.int16)
        assert read.crs.to_epsg() == 32618
    assert got.shape == expected.shape
    error = np.abs(got - expected).mean()
    shifted = np.abs(got[:, :, 5:] - expected[:, :, :-5]).mean()
    assert error < 1.0, (error, shifted)
    assert shifted > 5 * max(error, 1.0)
    # The service info QGIS reads before exporting holds neither a token nor the API key.
    with urllib.request.urlopen(f"{service}?f=json", timeout=30) as answer:
        info = answer.read().decode()
    assert "token" not in info.lower() and "proxy-test-api-key" not in info
