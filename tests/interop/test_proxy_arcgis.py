"""The ArcGIS API for Python (``arcgis`` from PyPI) through the reverse proxy, pointed at the
gateway's ``.../rgb/ImageServer`` of a token-secured upstream: it never receives a token, and
the image it exports is the source raster.

The client (``arcgis_client.py``) runs in its own process with the interpreter of
``.venv/arcgis`` (scripts/install-test-deps.sh), connected to the gateway as to a stand-alone
ArcGIS Server (``ServicesDirectory``) and using ``ImageryLayer(url, gis=directory)``; every
connection and name lookup outside the loopback interface is refused in that process, so a call
to ArcGIS Online fails the test at once. It exports the whole Landsat scene (RGB.byte.tif,
EPSG:32618) at its own size as PNG; the pixels are compared with the file read by rasterio
(mean absolute difference under 3.5 of 255), and with the file shifted by a few pixels to show
that the comparison can tell a misplaced image. Every response it received (status, headers,
body) is searched for the API key the gateway sends upstream, the password of the upstream's
account, the upstream's address and the word ``token``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from tests.conftest import DATA
from tests.interop.proxy_support import (
    API_KEY,
    PASSWORD,
    SecuredImageServer,
    proxy_gateway_url,
    secured_imageserver,
)

__all__ = ["proxy_gateway_url", "secured_imageserver"]  # session fixtures, used by name
SCENE = DATA / "RGB.byte.tif"
CLIENT = Path(__file__).with_name("arcgis_client.py")
# scripts/install-test-deps.sh puts the package in a virtualenv of its own inside the test one.
ARCGIS_PYTHON = Path(sys.prefix) / "arcgis" / "bin" / "python"


@pytest.fixture(scope="module")
def arcgis_python() -> str:
    """The interpreter of ``.venv/arcgis``; the test is skipped, saying so, when it cannot
    import the ArcGIS API for Python."""
    if not ARCGIS_PYTHON.exists():
        pytest.skip(f"{ARCGIS_PYTHON} missing: run scripts/install-test-deps.sh (arcgis)")
    check = subprocess.run(
        [str(ARCGIS_PYTHON), "-c", "import arcgis.raster"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check.returncode != 0:
        pytest.skip(f"{ARCGIS_PYTHON} cannot import arcgis.raster: {check.stderr[-500:]}")
    return str(ARCGIS_PYTHON)


def test_arcgis_api_for_python_exports_the_secured_scene_through_the_proxy(
    arcgis_python: str,
    proxy_gateway_url: str,
    secured_imageserver: SecuredImageServer,
    tmp_path: Path,
) -> None:
    with rasterio.open(SCENE) as source:
        bounds, width, height = source.bounds, source.width, source.height
        expected = source.read().astype(np.int16)
        valid = source.dataset_mask() > 0
    bbox = f"{bounds.left},{bounds.bottom},{bounds.right},{bounds.top}"
    site = f"{proxy_gateway_url}/arcgis"
    arguments = [site, "rgb", bbox, str(width), str(height), "32618", str(tmp_path)]
    # A home of its own (the package keeps profiles there) and no proxy variables: the client
    # talks to the gateway directly.
    result = subprocess.run(
        [arcgis_python, str(CLIENT), *arguments],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_PROXY": "*"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["refused"] == []
    # Every request went to the gateway: the site's probes, the service, its exports.
    assert report["requests"], report
    assert all(line.split(" ", 1)[1].startswith(site) for line in report["requests"]), report
    assert f"POST {site}/rest/services/rgb/ImageServer/exportImage" in report["requests"]
    assert len(report["answers"]) == len(report["requests"])
    assert f"200 {site}/rest/services/rgb/ImageServer/exportImage" in report["answers"]
    assert report["properties"] == {
        "name": "rgb",
        "bandCount": 3,
        "extent": [bounds.left, bounds.bottom, bounds.right, bounds.top],
    }
    # exportImage?f=json: the href of the output file is the gateway's, without a token.
    assert report["href"].startswith(f"{site}/rest/services/_outputs/"), report["href"]

    with Image.open(report["image"]) as exported:
        assert exported.format == "PNG"
        assert exported.size == (width, height)
        pixels = np.asarray(exported.convert("RGBA")).astype(np.int16)
    got = np.moveaxis(pixels[:, :, :3], 2, 0)
    error = np.abs(got - expected).mean()
    shifted = np.abs(got[:, :, 5:] - expected[:, :, :-5]).mean()
    assert error < 3.5, (error, shifted)
    assert shifted > 5 * max(error, 1.0)
    # The source's nodata (0 in every band) is transparent in the PNG, the rest opaque.
    assert ((pixels[:, :, 3] > 0) == valid).mean() > 0.999

    received = (tmp_path / "received.bin").read_bytes()
    for secret in (API_KEY, PASSWORD, secured_imageserver.root):
        assert secret.encode() not in received, secret
    assert b"token" not in received.lower()
