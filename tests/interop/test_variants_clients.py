"""Real WMTS clients with a layer's styles and Time dimension (issue 13): OWSLib reads the
Styles and the Dimension and asks a style at a date by KVP; GDAL's WMTS driver opens a style
(``style=`` in the connection string) through the RESTful template with ``{Style}`` and
``{Time}``, which it fills with the Dimension's Default. The layer is the reference
ImageServer's mosaic of the 2010 and 2020 NAIP scenes. Pixels compare across styles (NAIP's
false colour, NIR, R, G, carries the natural-colour red in its green band) and dates."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from owslib.wmts import WebMapTileService
from PIL import Image

LAYER = {
    "url": "${IMAGESERVER}/naip_time/ImageServer",
    "formats": ["png"],
    "maxzoom": 16,
    "styles": {
        "natural": {"title": "Natural colour", "bandIds": [0, 1, 2]},
        "falsecolor": {"title": "Colour infrared", "bandIds": [3, 0, 1]},
    },
    "default_style": "natural",
    "time": {"values": ["2010-06-29", "2020-08-31"]},
}
# A WebMercatorQuad tile wholly inside the NAIP quarter-quad (47.02 N, 99.155 W).
Z, COL, ROW = 15, 7358, 11522


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[[dict[str, Any]], str]) -> str:
    return start_gateway({"layers": {"naip": LAYER}})


def test_owslib_reads_styles_and_the_time_dimension(gateway: str) -> None:
    service = WebMapTileService(f"{gateway}/wmts?SERVICE=WMTS&REQUEST=GetCapabilities")
    layer = service.contents["naip"]
    assert set(layer.styles) == {"natural", "falsecolor"}
    assert layer.styles["natural"].get("isDefault") is True
    assert not layer.styles["falsecolor"].get("isDefault")
    assert layer.dimensions["Time"]["values"] == ["2010-06-29", "2020-08-31"]
    assert layer.dimensions["Time"]["default"] == "2020-08-31"

    def tile(style: str, **dimension: str) -> np.ndarray:
        response = service.gettile(
            layer="naip",
            style=style,
            tilematrixset="WebMercatorQuad",
            tilematrix=str(Z),
            row=ROW,
            column=COL,
            format="image/png",
            **dimension,
        )
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGBA"))

    natural = tile("natural", TIME="2010-06-29")
    false = tile("falsecolor", TIME="2010-06-29")
    assert (natural[..., 3] == 255).all()
    assert np.array_equal(false[..., 1], natural[..., 0])
    assert np.array_equal(false[..., 2], natural[..., 1])
    assert not np.array_equal(false[..., 0], natural[..., 0])
    assert not np.array_equal(tile("natural", TIME="2020-08-31"), natural)


@pytest.fixture(scope="module")
def gdal_translate() -> str:
    found = shutil.which("gdal_translate")
    if found is None:
        pytest.fail("gdal_translate not found: install gdal-bin (scripts/install-test-deps.sh)")
    return found


def translate(gdal_translate: str, source: str, out: Path) -> np.ndarray:
    """A 256 x 256 window of TileMatrix ``Z`` around the tile ``COL``/``ROW`` from ``source``
    (a GDAL WMTS connection string), its RGB bands as (3, 256, 256)."""
    span = 2 * 20037508.342789244 / 2**Z
    west, north = -20037508.342789244 + COL * span, 20037508.342789244 - ROW * span
    command = [
        gdal_translate,
        "-of",
        "GTiff",
        "-projwin",
        *(repr(v) for v in (west, north, west + span, north - span)),
        "-outsize",
        "256",
        "256",
        source,
        str(out),
    ]
    result = subprocess.run(
        command,
        env={**os.environ, "GDAL_ENABLE_WMS_CACHE": "NO"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    with rasterio.open(out) as dataset:
        return dataset.read()[:3]


def test_gdal_opens_each_style_through_the_restful_template(
    gateway: str, gdal_translate: str, tmp_path: Path
) -> None:
    caps = f"{gateway}/wmts/1.0.0/WMTSCapabilities.xml"
    base = f"WMTS:{caps},layer=naip,tilematrixset=WebMercatorQuad,zoom_level={Z}"
    natural = translate(gdal_translate, f"{base},style=natural", tmp_path / "natural.tif")
    false = translate(gdal_translate, f"{base},style=falsecolor", tmp_path / "false.tif")
    assert natural.any()
    assert np.array_equal(false[1], natural[0])
    assert np.array_equal(false[2], natural[1])
    assert not np.array_equal(false[0], natural[0])
    # {Time} took the Default, 2020-08-31: GDAL's window is the 2020 scene's tile.
    for date, same in (("2020-08-31", True), ("2010-06-29", False)):
        url = f"{gateway}/tiles/naip/{Z}/{COL}/{ROW}.png?time={date}"
        with urllib.request.urlopen(url, timeout=30) as response:
            xyz = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
        assert np.array_equal(natural, xyz.transpose(2, 0, 1)) is same, date
