"""MapLibre GL 3D terrain in Debian Chromium from the gateway's elevation tiles.

``pages/maplibre-terrain.html`` (served from another origin than the gateway) drapes the
``dtm`` layer's PNG tiles over its Terrain-RGB or Terrarium tiles as MapLibre terrain, both
sources set up from the gateway's TileJSON (the elevation one carries ``encoding`` and
``tileSize``). Once the map is idle the page asks MapLibre for the terrain's height at probe
points (``map.queryTerrainElevation``); the test compares them with ``tests/data/dtm.tif``
read with rasterio, within the encoding's step plus what resampling can move: the source's
relief within one source pixel of the probe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform

from tests.browser.harness import run_driver
from tests.conftest import DATA

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
CHECK_PAGE = HERE / "check_page.mjs"
STEP = {"terrain-rgb": 0.1, "terrarium": 1 / 256}
ENCODING = {"terrain-rgb": "mapbox", "terrarium": "terrarium"}
# TileMatrix of the map tiles shown (MapLibre zoom Z - 1). MapLibre drapes them over
# elevation tiles two levels up (its terrain takes 512-pixel tiles, and one level less), here
# TileMatrix 16: 1.9 m pixels at 38.8 N, about the DEM's 2 m.
Z = 18
DEM_Z = 16
# Probes: the DEM's pixels at these (row, col), in the 200 m square the map shows, from 10.9 m
# to 13.8 m high; no nodata within RADIUS pixels of them.
PROBE_PIXELS = [(180, 90), (180, 105), (100, 155), (115, 140), (85, 190), (170, 175)]
RADIUS = 3
# The terrain's height at a probe may be any height within this many source pixels of it: one
# for the ImageServer's bilinear resampling to the tile's grid, one for MapLibre's between the
# elevation tile's pixels.
RESAMPLING = 2
BROWSER_TIMEOUT_MS = 75_000


def probes() -> list[tuple[float, float, float, float]]:
    """``(lon, lat, height, relief)`` at the centre of each of ``PROBE_PIXELS``: the DEM's
    height there, and the encoding-independent part of the tolerance (the largest height
    difference to a pixel within ``RESAMPLING`` pixels)."""
    with rasterio.open(DATA / "dtm.tif") as dataset:
        heights = dataset.read(1, masked=True)
        found = []
        for row, col in PROBE_PIXELS:
            window = heights[row - RADIUS : row + RADIUS + 1, col - RADIUS : col + RADIUS + 1]
            assert not np.ma.is_masked(window), f"nodata near pixel {(row, col)}"
            x, y = dataset.xy(row, col)
            (lon,), (lat,) = transform(dataset.crs, "EPSG:4326", [x], [y])
            centre = float(heights[row, col])
            near = heights[
                row - RESAMPLING : row + RESAMPLING + 1, col - RESAMPLING : col + RESAMPLING + 1
            ]
            relief = float(np.abs(near - centre).max())
            found.append((lon, lat, centre, relief))
    return found


@pytest.fixture(scope="module")
def dem_gateway(start_gateway: Callable[[dict[str, Any]], str]) -> str:
    """A gateway process with the layer ``dtm`` (tests/data/dtm.tif): PNG map tiles and both
    elevation encodings."""
    return start_gateway(
        {
            "layers": {
                "dtm": {
                    "url": "${IMAGESERVER}/dtm/ImageServer",
                    "formats": ["png", "terrarium", "terrain-rgb"],
                    "maxzoom": 18,
                    "export": {"interpolation": "RSP_BilinearInterpolation"},
                }
            }
        }
    )


@pytest.mark.parametrize("encoding", ["terrarium", "terrain-rgb"])
def test_maplibre_terrain_heights_match_the_dem(
    encoding: str,
    dem_gateway: str,
    page_origin: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    points = probes()
    heights = [height for _, _, height, _ in points]
    # The probes differ by more than twice any tolerance: a flat or misplaced terrain fails.
    tolerance = max(relief for _, _, _, relief in points) + STEP[encoding]
    assert max(heights) - min(heights) > 2 * tolerance
    lons = [lon for lon, _, _, _ in points]
    lats = [lat for _, lat, _, _ in points]
    query = {
        "gw": dem_gateway,
        "layer": "dtm",
        "format": encoding,
        "lon": (min(lons) + max(lons)) / 2,
        "lat": (min(lats) + max(lats)) / 2,
        "z": Z,
        "pitch": 20,
        "probes": json.dumps([[lon, lat] for lon, lat, _, _ in points]),
    }
    url = f"{page_origin}/maplibre-terrain.html?{urlencode(query)}"
    # Terrain in software WebGL over cold tiles (each a float metatile rendered upstream) takes
    # longer than a flat map: the page gets most of the driver's 90 s.
    monkeypatch.setenv("BROWSER_TIMEOUT_MS", str(BROWSER_TIMEOUT_MS))
    report = run_driver(CHECK_PAGE, [url, str(tmp_path / "terrain.png"), "--allow", dem_gateway])
    why = f"\nreport: {json.dumps({k: v for k, v in report.items() if k != 'requests'})}"
    stats = report["stats"]
    assert report["timedOut"] is None, why
    assert stats["done"] and stats["loaded"] > 0 and stats["errors"] == 0, why
    assert report["consoleErrors"] == [] and report["failedRequests"] == [], why
    info = stats["info"]
    # MapLibre took the encoding and tile size from the gateway's TileJSON.
    assert info["encoding"] == ENCODING[encoding] and info["tileSize"] == 256, why
    assert info["terrain"] == {"source": "dem", "exaggeration": 1}, why
    to_gateway = [r for r in report["requests"] if r["url"].startswith(dem_gateway + "/")]
    dem_tiles = [r for r in to_gateway if r["path"].startswith(f"/tiles/dtm/{encoding}/")]
    assert dem_tiles and all(r["status"] == 200 for r in dem_tiles), why
    assert all(r["contentType"] == "image/png" for r in dem_tiles), why
    assert max(int(r["path"].split("/")[4]) for r in dem_tiles) == DEM_Z, why
    for (lon, lat, height, relief), seen in zip(points, info["heights"], strict=True):
        assert seen is not None, f"no terrain at {lon}, {lat}{why}"
        assert abs(seen - height) <= relief + STEP[encoding], (
            f"terrain at {lon:.6f}, {lat:.6f} is {seen:.3f} m, the DEM {height:.3f} m "
            f"(relief {relief:.3f} m){why}"
        )
