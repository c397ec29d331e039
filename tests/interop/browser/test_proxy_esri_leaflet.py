"""esri-leaflet's ``imageMapLayer`` in Debian Chromium through the reverse proxy, pointed at the
gateway's ``/arcgis/rest/services/rgb/ImageServer`` of a token-secured reference ImageServer:
the gateway holds the credential (the test API key), the browser has none and never sees one.

``pages/esri-leaflet.html`` loads Leaflet and esri-leaflet from tests/browser/node_modules
(served from another origin than the gateway, so every request to it crosses origins) and
shows the Landsat scene RGB.byte.tif (EPSG:32618) in Web Mercator, in each of esri-leaflet's
ways: ``f=image`` (exportImage straight into an ``<img>``), ``f=json`` (exportImage's JSON, then
its ``href`` from the output directory) and ``f=json`` read by JSONP instead of CORS.

The test checks: the image appeared, with no console error, failed or blocked request; every
request went to loopback, to the page's server or to the gateway's ImageServer; no request
carried a token and no response header or body the browser received holds the API key or a
``token``; and the screenshot is the source raster warped to the bbox and size of the export
request, while the same raster a few pixels off, or upside down, is not.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import Resampling, reproject, transform

from tests.browser.harness import run_driver
from tests.conftest import DATA
from tests.interop.proxy_support import (
    API_KEY,
    SecuredImageServer,
    proxy_gateway_url,
    secured_imageserver,
)

__all__ = ["proxy_gateway_url", "secured_imageserver"]  # session fixtures, used by name
pytestmark = pytest.mark.browser

CHECK_PAGE = Path(__file__).resolve().parent / "check_page.mjs"
SCENE = DATA / "RGB.byte.tif"
SERVICE = "/arcgis/rest/services/rgb/ImageServer"
# Where the gateway serves the upstream's output directory (the hrefs of exportImage?f=json).
OUTPUTS = "/arcgis/rest/services/_outputs/rgb_ImageServer/"
VIEWPORT = 512  # CSS pixels, square; device pixel ratio 1, so one image pixel per CSS pixel
# TileMatrix 10 of Web Mercator at the scene's centre: 512 pixels are about 70 km, inside the
# scene's data (the Landsat frame is rotated in its grid, with nodata corners).
ZOOM = 10
# Mean absolute difference per channel allowed between the screenshot and the warped source:
# room for rounding in resampling. (esri-leaflet asks for jpgpng with transparency: PNG.)
TOLERANCE = 1.0
# A misplaced image must differ at least this many times more.
CONTROL_FACTOR = 4.0
SHIFT = 5  # pixels, for the misplaced control


def scene_centre() -> tuple[float, float]:
    """Longitude and latitude of the centre of RGB.byte.tif."""
    with rasterio.open(SCENE) as scene:
        bounds, crs = scene.bounds, scene.crs
    xs, ys = transform(
        crs, "EPSG:4326", [(bounds.left + bounds.right) / 2], [(bounds.bottom + bounds.top) / 2]
    )
    return xs[0], ys[0]


def warped_source(bbox: list[float], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB.byte.tif warped (bilinear, the ImageServer's default) to the Web Mercator ``bbox``
    (four numbers, corners in either order: esri-leaflet sends ``xmin,ymax,xmax,ymin``) at
    ``width`` x ``height``: the pixels (3, height, width) and where the source has data."""
    xmin, xmax = sorted(bbox[0::2])
    ymin, ymax = sorted(bbox[1::2])
    target = rasterio.Affine((xmax - xmin) / width, 0, xmin, 0, -(ymax - ymin) / height, ymax)
    pixels = np.zeros((3, height, width), dtype=np.uint8)
    with rasterio.open(SCENE) as scene:
        reproject(
            scene.read(),
            pixels,
            src_transform=scene.transform,
            src_crs=scene.crs,
            src_nodata=0,
            dst_transform=target,
            dst_crs="EPSG:3857",
            dst_nodata=0,
            resampling=Resampling.bilinear,
        )
    return pixels.astype(np.int16), (pixels > 0).all(axis=0)


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is localhost or a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe(report: dict[str, Any]) -> str:
    """What an assertion message needs to explain a broken page."""
    lines = [f"{r['status']} {r['url']}" for r in report.get("requests", [])]
    summary = {k: v for k, v in report.items() if k != "requests"}
    return f"\nreport: {summary}\nrequests:\n" + "\n".join(lines)


def query_of(url: str) -> dict[str, str]:
    """The query parameters of ``url``, names in lower case."""
    return {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}


MODES = {
    "f-image": {"f": "image", "jsonp": "0"},
    "f-json": {"f": "json", "jsonp": "0"},
    "f-json-jsonp": {"f": "json", "jsonp": "1"},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_esri_leaflet_image_map_layer_through_the_proxy(
    mode: str, proxy_gateway_url: str, page_origin: str, tmp_path: Path
) -> None:
    """The secured scene shown by ``L.esri.imageMapLayer`` in one of its request flows."""
    gateway = proxy_gateway_url
    lon, lat = scene_centre()
    query = {
        "service": f"{gateway}{SERVICE}",
        "lon": lon,
        "lat": lat,
        "z": ZOOM,
        **MODES[mode],
    }
    url = f"{page_origin}/esri-leaflet.html?{urlencode(query)}"
    screenshot, record = tmp_path / f"{mode}.png", tmp_path / "responses"
    record.mkdir()
    report = run_driver(
        CHECK_PAGE, [url, str(screenshot), "--allow", gateway, "--record", str(record)]
    )
    why = describe(report)

    # The image appeared and nothing went wrong on the way.
    stats = report["stats"]
    assert report["timedOut"] is None, why
    assert stats["done"] and stats["loaded"] > 0 and stats["errors"] == 0, why
    assert report["consoleErrors"] == [], why
    assert report["failedRequests"] == [], why
    assert report["blockedRequests"] == [], why
    image = stats["info"]["image"]
    assert image["width"] == image["height"] == VIEWPORT, why

    # Loopback only: the page's server and the gateway's ImageServer, never with a token.
    requests = report["requests"]
    assert all(is_loopback(r["url"]) for r in requests), why
    to_gateway = [r for r in requests if r["url"].startswith(f"{gateway}/")]
    assert to_gateway, why
    others = [r["url"] for r in requests if r not in to_gateway]
    assert [url for url in others if not url.startswith(f"{page_origin}/")] == [], why
    for request in to_gateway:
        assert request["path"].startswith((f"{SERVICE}/", OUTPUTS)), why
        assert "token" not in {name.lower() for name in query_of(request["url"])}, why
        assert request["status"] == 200, f"{request}{why}"
        if MODES[mode]["jsonp"] == "0":
            # esri-leaflet's XHRs and its <img crossorigin> are CORS requests; with useCors
            # false it loads <script>s and a plain <img>, which are not.
            assert request["origin"] == page_origin, f"{request}{why}"
            assert request["allowOrigin"] in ("*", page_origin), f"{request}{why}"

    # The request flow of the mode: the service's metadata (esri-leaflet adds a slash to the
    # service URL), then the export, shown as asked.
    metadata = [r for r in to_gateway if r["path"] == f"{SERVICE}/"]
    exports = [r for r in to_gateway if r["path"] == f"{SERVICE}/exportImage"]
    assert metadata and exports, why
    assert all(query_of(r["url"])["f"] == "json" for r in metadata), why
    assert {query_of(r["url"])["f"] for r in exports} == {MODES[mode]["f"]}, why
    shown = next(r for r in to_gateway if r["url"] == image["src"])
    assert shown["contentType"].startswith("image/"), why
    if MODES[mode]["f"] == "image":
        export_url = image["src"]
    else:
        assert shown["path"].startswith(OUTPUTS), why
        export_url = exports[-1]["url"]
    if MODES[mode]["jsonp"] == "1":
        scripts = [r for r in to_gateway if r["resourceType"] == "script"]
        assert {r["path"] for r in scripts} == {f"{SERVICE}/", f"{SERVICE}/exportImage"}, why
        assert all(query_of(r["url"]).get("callback") for r in scripts), why

    # No header or body the browser received holds the key, nor a token in any document.
    assert all(r.get("body") for r in requests), f"a response was not recorded{why}"
    for request in requests:
        headers = "\n".join(f"{k}: {v}" for k, v in request["headers"].items())
        body = (record / request["body"]).read_bytes()
        assert API_KEY not in headers and API_KEY.encode() not in body, request["url"]
        if request in to_gateway and not request["contentType"].startswith("image/"):
            assert b"token" not in body.lower(), (request["url"], body[:2000])

    # The screenshot is the source warped to the export's bbox and size.
    export = query_of(export_url)
    assert export["bboxsr"] == export["imagesr"] == "3857", export
    width, height = (int(v) for v in export["size"].split(","))
    assert (width, height) == (VIEWPORT, VIEWPORT), export
    expected, valid = warped_source([float(v) for v in export["bbox"].split(",")], width, height)
    assert valid.mean() > 0.95, f"the view is not inside the scene's data ({valid.mean():.2f})"
    with Image.open(screenshot) as shot:
        assert shot.size == (VIEWPORT, VIEWPORT)
        seen = np.asarray(shot.convert("RGB")).transpose(2, 0, 1).astype(np.int16)
    error = np.abs(seen - expected)[:, valid].mean()
    shifted = np.abs(seen[:, :, SHIFT:] - expected[:, :, :-SHIFT])[:, valid[:, :-SHIFT]].mean()
    flipped = np.abs(seen - expected[:, ::-1, :])[:, valid & valid[::-1, :]].mean()
    assert error <= TOLERANCE, (error, shifted, flipped, screenshot)
    assert min(shifted, flipped) > CONTROL_FACTOR * max(error, 1.0), (error, shifted, flipped)


def test_the_same_page_against_the_secured_upstream_gets_no_image(
    secured_imageserver: SecuredImageServer, page_origin: str, tmp_path: Path
) -> None:
    """The control experiment: pointed at the upstream itself, the same page has no token to
    send and shows nothing, so the cases above see the scene because of the gateway's
    credential, not because the service is open."""
    upstream = secured_imageserver.root
    lon, lat = scene_centre()
    query = {
        "service": f"{secured_imageserver.services}/rgb/ImageServer",
        "lon": lon,
        "lat": lat,
        "z": ZOOM,
        **MODES["f-json"],
    }
    url = f"{page_origin}/esri-leaflet.html?{urlencode(query)}"
    report = run_driver(CHECK_PAGE, [url, str(tmp_path / "direct.png"), "--allow", upstream])
    why = describe(report)
    stats = report["stats"]
    assert report["timedOut"] is None and stats["done"], why
    assert stats["loaded"] == 0 and stats["errors"] > 0, why
    assert "499 Token Required" in stats["info"]["failure"], why
    assert report["blockedRequests"] == [], why
