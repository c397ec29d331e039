"""The viewer page in a real browser, against a real ``tile-gateway demo`` process.

``check_viewer.mjs`` drives Debian's Chromium through playwright-core and reports what the page
did; these tests judge the report and the screenshot. The browser reaches loopback only (see
driver.mjs): the viewer must work with the map libraries the gateway serves itself, and with
``viewer.libraries: cdn`` it must ask the CDN for the same files. Missing tools (node, npm,
chromium) make the tests fail, never skip (see harness.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from lxml import etree
from PIL import Image, ImageStat

from tests.browser.harness import NODE_MODULES, browser_tools, run_driver
from tests.conftest import free_port

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VIEWER_JS = REPO / "gateway" / "web" / "viewer.js"
VENDOR = REPO / "gateway" / "web" / "vendor"
# viewer.js's pins: ["<name>@<version>/<path>", "<algorithm>-<base64 digest>"].
PIN_RE = re.compile(r'\["([^"]+@[^"/]+/[^"]+)",\s*"(sha\d+-[^"]+)"\]')
# The viewer's clients and the npm package each loads.
PACKAGES = {"leaflet": "leaflet", "openlayers": "ol", "maplibre": "maplibre-gl"}
IMMUTABLE = "public, max-age=31536000, immutable"
LIBRARY_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
CHECK_VIEWER = HERE / "check_viewer.mjs"
STARTUP_TIMEOUT = 60.0
TILE_RE = re.compile(r"^/tiles/(?P<layer>[^/]+)/(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)(?P<r>@2x)?\.jpg$")
WMTS = "{http://www.opengis.net/wmts/1.0}"
OWS = "{http://www.opengis.net/ows/1.1}"


@dataclass
class DemoProcess:
    """A running ``tile-gateway demo``, its viewer URL and everything it printed so far."""

    process: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def output(self, last: int = 60) -> str:
        return "".join(self.lines[-last:])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    """``tile-gateway demo`` as a real process on free ports, until the module's tests end."""
    port, imageserver_port = free_port(), free_port()
    raster_store = tmp_path_factory.mktemp("raster-store")  # not a folder in the checkout
    command = [
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--imageserver-port",
        str(imageserver_port),
        "--raster-store",
        str(raster_store),
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    demo = DemoProcess(process)
    ready = threading.Event()

    # Keep draining the pipe for the process's whole life: its access log would otherwise fill
    # the pipe and block the server mid-test.
    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            demo.lines.append(line)
            if not demo.url and line.startswith("Viewer: "):
                demo.url = line.removeprefix("Viewer: ").strip()
                ready.set()
        ready.set()  # EOF: the process died before printing the URL

    reader = threading.Thread(target=pump, name="demo-output", daemon=True)
    reader.start()
    try:
        if not ready.wait(STARTUP_TIMEOUT) or not demo.url:
            status = process.poll()
            state = f"exited with {status}" if status is not None else "still starting"
            pytest.fail(
                f"`{' '.join(command)}` printed no 'Viewer:' line within {STARTUP_TIMEOUT:.0f} s "
                f"({state}). Its output:\n{demo.output()}"
            )
        yield demo
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)


def run_viewer(
    demo: DemoProcess, screenshot: Path, *args: str, url: str | None = None
) -> dict[str, Any]:
    """Run ``check_viewer.mjs`` on the demo's viewer (or the viewer at ``url``, in front of
    the demo) and return its JSON report."""
    return run_driver(
        CHECK_VIEWER,
        [url or demo.url, str(screenshot), *args],
        lambda: f"gateway output:\n{demo.output()}",
    )


def sri(body: bytes, algorithm: str) -> str:
    """The Subresource Integrity value of ``body``: ``<algorithm>-<base64 digest>``."""
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, body).digest()).decode()}"


def pins(client: str | None = None) -> list[tuple[str, str]]:
    """viewer.js's ``(file, integrity)`` pins in its order, all or those of one client."""
    found: list[tuple[str, str]] = PIN_RE.findall(VIEWER_JS.read_text())
    if client is None:
        return found
    return [pin for pin in found if pin[0].startswith(f"{PACKAGES[client]}@")]


def expected_libraries(base: str, client: str) -> list[dict[str, str]]:
    """The ``<link>``/``<script>`` elements the viewer must add for ``client``: each pinned
    file under ``base``, with its integrity and a CORS request."""
    return [
        {"url": base + file, "integrity": integrity, "crossOrigin": "anonymous"}
        for file, integrity in pins(client)
    ]


def describe(report: dict[str, Any], demo: DemoProcess) -> str:
    """What an assertion message needs to explain a broken page."""
    summary = {key: value for key, value in report.items() if key not in ("requests", "snippets")}
    return (
        f"\nreport: {json.dumps(summary, indent=1)}\n"
        f"screenshot: {report.get('screenshot')}\ngateway output:\n{demo.output(30)}"
    )


def gateway_requests(report: dict[str, Any], demo: DemoProcess) -> list[dict[str, Any]]:
    """The requests the page sent to the gateway."""
    origin = demo.url.rstrip("/")
    return [request for request in report["requests"] if request["url"].startswith(origin)]


def assert_page_healthy(
    report: dict[str, Any],
    demo: DemoProcess,
    client: str,
    page: str | None = None,
    layer: str = "bluemarble",
) -> None:
    """What every mode shares: the library finished, tiles of ``layer`` loaded, nothing failed
    anywhere, and every request, the library's files first, went to the viewer's own folder
    (``page``, the demo's by default): nothing was even tried off the machine."""
    why = describe(report, demo)
    page = page or demo.url
    stats = report["stats"]
    assert report["timedOut"] is None, why
    assert stats["layer"] == layer, why
    assert stats["client"] == client, why
    assert stats["loaded"] > 0, why
    assert stats["errors"] == 0, why
    assert report["consoleErrors"] == [], why
    assert report["failedRequests"] == [], why
    assert report["blockedRequests"] == [], why
    outside = [r["url"] for r in report["requests"] if not r["url"].startswith(page)]
    assert outside == [], f"requests outside {page}: {outside}{why}"
    assert report["libraries"] == expected_libraries(page + "vendor/", client), why
    answers = {request["url"]: request for request in report["requests"]}
    for library in report["libraries"]:
        answer = answers.get(library["url"])
        assert answer is not None, f"{library['url']} was not loaded{why}"
        assert answer["status"] == 200, f"{answer}{why}"
        assert answer["contentType"] == LIBRARY_TYPES[Path(answer["path"]).suffix], why
        assert answer["cacheControl"] == IMMUTABLE, f"{answer}{why}"


def assert_xyz_tiles(report: dict[str, Any], demo: DemoProcess, *, retina: bool) -> None:
    """Every tile request is a ``/tiles/bluemarble/z/x/y[@2x].jpg`` answered 200 from cache
    or upstream."""
    why = describe(report, demo)
    tiles = [r for r in gateway_requests(report, demo) if r["path"].startswith("/tiles/")]
    tiles = [r for r in tiles if not r["path"].endswith("/tilejson.json")]
    assert tiles, why
    for tile in tiles:
        match = TILE_RE.match(tile["path"])
        assert match, f"unexpected tile URL {tile['path']}{why}"
        assert match["layer"] == "bluemarble", why
        assert bool(match["r"]) is retina, f"{tile['path']} at dpr {report['dpr']}{why}"
        assert tile["status"] == 200, f"{tile}{why}"
        assert tile["contentType"] == "image/jpeg", f"{tile}{why}"
        assert tile["xCache"] in ("HIT", "MISS"), f"{tile}{why}"


def is_ocean(rgb: tuple[int, ...] | list[int]) -> bool:
    """Blue Marble's oceans: dark, and clearly bluer than they are red."""
    r, g, b = rgb[:3]
    return b >= r + 25 and b >= g and r < 90


def assert_places(report: dict[str, Any], demo: DemoProcess) -> None:
    """Oceans, deserts and ice where they belong: the imagery is georeferenced correctly."""
    why = describe(report, demo)
    samples = {sample["place"]: sample for sample in report["samples"]}
    size = 512 if report["dpr"] > 1 else 256
    for place, sample in samples.items():
        assert sample["rgb"] is not None, f"{place} is not on screen{why}"
        assert sample["tileSize"] == [size, size], f"{place}: {sample['tile']}{why}"
    for place in ("south-atlantic", "indian-ocean", "north-pacific"):
        assert is_ocean(samples[place]["rgb"]), f"{place} is not ocean blue{why}"
    for place in ("sahara", "arabia"):
        r, _, b = samples[place]["rgb"]
        assert r > 120 and r >= b + 30, f"{place} is not desert{why}"
    assert min(samples["greenland"]["rgb"]) > 170, f"greenland is not ice{why}"


def assert_screenshot(report: dict[str, Any], demo: DemoProcess, path: Path) -> None:
    """The screenshot shows real imagery (many colours, oceans and land), and the sampled
    tile pixels, if any, where the page put them."""
    why = describe(report, demo)
    dpr = report["dpr"]
    with Image.open(path) as shot:
        assert shot.size == (round(1024 * dpr), round(768 * dpr)), why
        image = shot.convert("RGB")
    left, top, width, height = (round(v * dpr) for v in report["mapRect"])
    # Leave out the zoom buttons and the attribution: they are not imagery.
    map_area = image.crop(
        (left, top + round(80 * dpr), left + width, top + height - round(20 * dpr))
    )
    small = map_area.resize((map_area.width // 4, map_area.height // 4))
    data = small.tobytes()
    pixels = [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]
    colours = small.getcolors(maxcolors=len(pixels)) or []
    assert len(colours) > 500, f"the map is (nearly) flat: {len(colours)} colours{why}"
    ocean = sum(map(is_ocean, pixels)) / len(pixels)
    land = sum(1 for r, _, b in pixels if r >= b + 30) / len(pixels)
    assert ocean > 0.3, f"only {ocean:.0%} of the map is ocean blue{why}"
    assert land > 0.05, f"only {land:.0%} of the map is land-coloured{why}"
    # The page read these colours from the decoded tiles; the screenshot must agree at the same
    # spots, or the tiles are drawn somewhere other than where Leaflet says.
    for sample in report["samples"]:
        x, y = (round(v * dpr) for v in sample["screen"])
        patch = image.crop((x - 2, y - 2, x + 3, y + 3))
        seen = [round(v) for v in ImageStat.Stat(patch).mean]
        assert all(abs(a - b) <= 40 for a, b in zip(seen, sample["rgb"], strict=True)), (
            f"{sample['place']}: screenshot {seen} != tile {sample['rgb']}{why}"
        )


def test_vendored_files_are_the_npm_packages_files() -> None:
    """gateway/web/vendor holds one folder per library, at the version of the lock file, and
    each of its files is the installed npm package's file byte for byte; its README names the
    package's licence and every file with its size and hash."""
    browser_tools()
    readme = (VENDOR / "README.md").read_text()
    folders = sorted(path for path in VENDOR.iterdir() if path.is_dir())
    versions = {}
    for name in PACKAGES.values():
        manifest = json.loads((NODE_MODULES / name / "package.json").read_text())
        versions[name] = manifest["version"]
        assert f"| {name} | {manifest['version']} | {manifest['license']} |" in readme
    assert [folder.name for folder in folders] == sorted(f"{n}@{v}" for n, v in versions.items())
    for folder in folders:
        name = folder.name.rsplit("@", 1)[0]
        files = sorted(path for path in folder.rglob("*") if path.is_file())
        assert any(path.name.startswith("LICENSE") for path in files), f"{folder}: no licence"
        for path in files:
            relative = path.relative_to(folder).as_posix()
            original = NODE_MODULES / name / relative
            body = path.read_bytes()
            assert original.is_file(), f"{path}: {name} has no {relative}"
            assert body == original.read_bytes(), f"{path} differs from {original}"
            row = f"| `{folder.name}/{relative}` | {len(body)} | `{sri(body, 'sha384')}` |"
            assert row in readme, f"vendor/README.md lacks {row}"


def test_viewer_pins_the_vendored_files_by_sri() -> None:
    """Every library file of viewer.js is vendored and its integrity attribute is that file's
    hash, so one pin checks the gateway's copy and a CDN's alike; and every vendored script
    and stylesheet is one the viewer loads."""
    found = pins()
    assert len(found) == 6, found  # a script and a stylesheet per library
    assert {file.split("@")[0] for file, _ in found} == set(PACKAGES.values()), found
    for file, integrity in found:
        path = VENDOR / file
        assert path.is_file(), f"viewer.js loads {file}, which is not in {VENDOR}"
        algorithm = integrity.split("-", 1)[0]
        assert sri(path.read_bytes(), algorithm) == integrity, f"{file}: pinned {integrity}"
    assets = {
        path.relative_to(VENDOR).as_posix()
        for path in VENDOR.rglob("*")
        if path.suffix in LIBRARY_TYPES
    }
    assert assets == {file for file, _ in found}


def test_tile_cache_miss_then_hit(demo: DemoProcess) -> None:
    """The issue's acceptance line, against the real demo: the second fetch comes from cache."""
    url = demo.url + "tiles/bluemarble/3/4/2.png"
    seen = []
    for _ in range(2):
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
            seen.append(response.headers.get("X-Cache"))
            assert response.status == 200
            assert response.headers.get_content_type() == "image/png"
        with Image.open(io.BytesIO(body)) as tile:
            assert tile.format == "PNG"
            assert tile.size == (256, 256)
    assert seen == ["MISS", "HIT"], f"X-Cache headers {seen}\n{demo.output(30)}"


def test_viewer_shows_blue_marble(demo: DemoProcess, tmp_path: Path) -> None:
    """Default layer and library (Leaflet) at DPR 1: Blue Marble tiles load cleanly and show
    the Earth, well placed."""
    screenshot = tmp_path / "viewer-dpr1.png"
    report = run_viewer(demo, screenshot)
    assert_page_healthy(report, demo, "leaflet")
    assert_xyz_tiles(report, demo, retina=False)
    assert_places(report, demo)
    assert_screenshot(report, demo, screenshot)


def test_viewer_uses_retina_tiles(demo: DemoProcess, tmp_path: Path) -> None:
    """Layer picked by the URL hash at DPR 2: the page asks for the 512 px ``@2x`` tiles."""
    screenshot = tmp_path / "viewer-dpr2.png"
    report = run_viewer(demo, screenshot, "--dpr", "2", "--hash", "bluemarble")
    assert_page_healthy(report, demo, "leaflet")
    assert_xyz_tiles(report, demo, retina=True)
    assert_places(report, demo)
    assert_screenshot(report, demo, screenshot)


@pytest.fixture(scope="module")
def openlayers_report(
    demo: DemoProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The viewer showing Blue Marble in OpenLayers, WMTS in WGS1984Quad (EPSG:4326)."""
    screenshot = tmp_path_factory.mktemp("viewer") / "viewer-openlayers-4326.png"
    return run_viewer(demo, screenshot, "--hash", "bluemarble/openlayers/WGS1984Quad")


def test_viewer_openlayers_wmts_in_epsg_4326(
    demo: DemoProcess, openlayers_report: dict[str, Any]
) -> None:
    """OpenLayers reads the capabilities, offers the layer's TileMatrixSets (the chooser lists
    exactly the capabilities' links) and draws the Earth from WMTS GetTile requests in
    WGS1984Quad."""
    report = openlayers_report
    why = describe(report, demo)
    assert_page_healthy(report, demo, "openlayers")
    assert report["stats"]["tileMatrixSet"] == "WGS1984Quad", why
    with urllib.request.urlopen(demo.url + "wmts/1.0.0/WMTSCapabilities.xml") as response:
        caps = etree.fromstring(response.read())
    layer = next(
        item
        for item in caps.iter(f"{WMTS}Layer")
        if item.findtext(f"{OWS}Identifier") == "bluemarble"
    )
    linked = [link.text for link in layer.iter(f"{WMTS}TileMatrixSet")]
    assert report["tileMatrixSets"] == linked, why
    for expected in ("WebMercatorQuad", "WorldCRS84Quad", "WGS1984Quad"):
        assert expected in linked and f"{expected}_2x" in linked, why
    tiles = [r for r in gateway_requests(report, demo) if r["path"] == "/wmts"]
    assert tiles, why
    for tile in tiles:
        query = {k.lower(): v for k, v in parse_qsl(tile["query"].lstrip("?"))}
        assert query["request"] == "GetTile", f"{tile}{why}"
        assert query["layer"] == "bluemarble", f"{tile}{why}"
        assert query["tilematrixset"] == "WGS1984Quad", f"{tile}{why}"
        assert query["format"] == "image/jpeg", f"{tile}{why}"
        assert tile["status"] == 200 and tile["contentType"] == "image/jpeg", f"{tile}{why}"
    assert_screenshot(report, demo, Path(report["screenshot"]))


def test_viewer_snippets_use_working_absolute_urls(
    demo: DemoProcess, openlayers_report: dict[str, Any]
) -> None:
    """The six snippets are there, name the chosen TileMatrixSet and its CRS, and every
    gateway URL in them is absolute and answers 200 (tile templates filled in)."""
    snippets = openlayers_report["snippets"]
    assert set(snippets) == {"url", "leaflet", "openlayers", "maplibre", "qgis", "gdal"}, snippets
    assert 'matrixSet: "WGS1984Quad"' in snippets["openlayers"]
    assert "tileMatrixSet=WGS1984Quad" in snippets["qgis"] and "crs=EPSG:4326" in snippets["qgis"]
    assert "tilematrixset=WGS1984Quad" in snippets["gdal"]
    origin = demo.url.rstrip("/")
    for client, text in snippets.items():
        urls = re.findall(r"https?://[^\s\"',]+", text)
        assert urls, f"{client} snippet has no URL:\n{text}"
        for url in urls:
            assert url.startswith(origin + "/"), f"{client}: {url} is not on {origin}"
            filled = url.replace("{z}", "2").replace("{x}", "2").replace("{y}", "1")
            with urllib.request.urlopen(filled.replace("{r}", ""), timeout=30) as response:
                assert response.status == 200, f"{client}: {filled}"


def test_viewer_shows_the_token_secured_layer_through_openlayers_wmts(
    demo: DemoProcess, tmp_path: Path
) -> None:
    """The demo's shadedrelief service needs ArcGIS Server tokens, which only the gateway
    holds: OpenLayers reads the capabilities and draws its WMTS tiles, every one a 200 image,
    and no answer the browser got carries a token."""
    screenshot = tmp_path / "viewer-secured.png"
    report = run_viewer(demo, screenshot, "--hash", "shadedrelief/openlayers/WebMercatorQuad")
    why = describe(report, demo)
    assert_page_healthy(report, demo, "openlayers", layer="shadedrelief")
    tiles = [r for r in gateway_requests(report, demo) if r["path"] == "/wmts"]
    assert tiles, why
    for tile in tiles:
        query = {k.lower(): v for k, v in parse_qsl(tile["query"].lstrip("?"))}
        assert (query["request"], query["layer"]) == ("GetTile", "shadedrelief"), f"{tile}{why}"
        assert tile["status"] == 200 and tile["contentType"].startswith("image/"), f"{tile}{why}"
        assert "token" not in tile["query"].lower(), f"{tile}{why}"
    # Relief, not an empty map: the screenshot has more than a handful of colours.
    with Image.open(screenshot) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 24)
        assert colours is not None and len(colours) > 1000, why


def test_viewer_maplibre_from_tilejson(demo: DemoProcess, tmp_path: Path) -> None:
    """MapLibre reads the layer's TileJSON and draws the Earth from its XYZ template."""
    screenshot = tmp_path / "viewer-maplibre.png"
    report = run_viewer(demo, screenshot, "--hash", "bluemarble/maplibre")
    why = describe(report, demo)
    assert_page_healthy(report, demo, "maplibre")
    paths = [r["path"] for r in gateway_requests(report, demo)]
    assert "/tiles/bluemarble/tilejson.json" in paths, why
    assert_xyz_tiles(report, demo, retina=False)
    assert_screenshot(report, demo, screenshot)


def test_viewer_maplibre_shows_the_elevation_layer_as_3d_terrain(
    demo: DemoProcess, tmp_path: Path
) -> None:
    """The demo's jacksboro layer (matplotlib's sample DEM): MapLibre reads its Terrarium
    TileJSON as a raster-dem source and raises the map with it; the snippet says how."""
    screenshot = tmp_path / "viewer-terrain.png"
    report = run_viewer(demo, screenshot, "--hash", "jacksboro/maplibre")
    why = describe(report, demo)
    assert_page_healthy(report, demo, "maplibre", layer="jacksboro")
    requests = gateway_requests(report, demo)
    paths = [r["path"] + r["query"] for r in requests]
    assert "/tiles/jacksboro/tilejson.json?format=terrarium" in paths, why
    heights = [r for r in requests if r["path"].startswith("/tiles/jacksboro/terrarium/")]
    assert heights, why
    assert all(r["status"] == 200 and r["contentType"] == "image/png" for r in heights), why
    snippet = report["snippets"]["maplibre"]
    assert 'type: "raster-dem"' in snippet and "terrain: {" in snippet, snippet
    assert "tilejson.json?format=terrarium" in snippet, snippet
    # A shaded relief, not a blank or flat map: many greys.
    with Image.open(screenshot) as shot:
        left, top, width, height = report["mapRect"]
        relief = shot.convert("L").crop((left, top + 80, left + width, top + height - 20))
    assert len(relief.getcolors(maxcolors=256) or []) > 100, why


# --- where the libraries come from -----------------------------------------------------------

PREFIX = "/maps/"
# Headers the proxy sets itself, or that describe only its hop.
HOP_BY_HOP = {"connection", "content-length", "date", "server", "transfer-encoding"}


@pytest.fixture(scope="module")
def prefixed_viewer(demo: DemoProcess) -> Iterator[str]:
    """The demo's viewer behind a reverse proxy that serves it under ``/maps/`` on a port of
    its own: what the page asks for resolves against its folder, or fails here."""
    upstream = demo.url

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.startswith(PREFIX):
                self.send_error(404, "outside the proxied prefix")
                return
            request = urllib.request.Request(upstream + self.path.removeprefix(PREFIX))
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, headers, body = answer.status, answer.headers, answer.read()
            except urllib.error.HTTPError as error:
                status, headers, body = error.code, error.headers, error.read()
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the driver's report lists every request."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, name="prefix-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_viewer_behind_a_path_prefix(
    demo: DemoProcess, prefixed_viewer: str, tmp_path: Path
) -> None:
    """Behind a proxy's path prefix the viewer loads its libraries, layer list and tiles
    through that prefix (the page's folder), never from the gateway's root."""
    screenshot = tmp_path / "viewer-prefixed.png"
    report = run_viewer(demo, screenshot, url=prefixed_viewer)
    assert_page_healthy(report, demo, "leaflet", page=prefixed_viewer)
    assert_screenshot(report, demo, screenshot)


@pytest.mark.parametrize(
    ("viewer", "client", "base"),
    [
        ({"libraries": "cdn"}, "leaflet", "https://unpkg.com/"),
        (
            {"libraries": "cdn", "cdn_url": "https://cdn.example.org/npm"},
            "maplibre",
            "https://cdn.example.org/npm/",
        ),
    ],
    ids=["default-cdn-leaflet", "custom-cdn-maplibre"],
)
def test_viewer_asks_the_cdn_when_configured(
    start_gateway: Callable[[dict[str, Any]], str],
    tmp_path: Path,
    viewer: dict[str, str],
    client: str,
    base: str,
) -> None:
    """With ``viewer.libraries: cdn`` the page asks ``viewer.cdn_url`` for the library files,
    with the same integrity attributes, and not the gateway. The browser is kept off the
    network, so those requests are blocked and the viewer says it cannot load the library."""
    gateway = start_gateway(
        {
            "viewer": viewer,
            "layers": {
                "bluemarble": {
                    "url": "${IMAGESERVER}/bluemarble/ImageServer",
                    "formats": ["jpg", "png"],
                    "maxzoom": 9,
                }
            },
        }
    )
    report = run_driver(
        CHECK_VIEWER, [f"{gateway}/", str(tmp_path / "cdn.png"), "--hash", f"bluemarble/{client}"]
    )
    summary = {key: value for key, value in report.items() if key != "snippets"}
    why = f"\nreport: {json.dumps(summary, indent=1)}"
    expected = expected_libraries(base, client)
    assert report["timedOut"] is None, why
    assert report["libraries"] == expected, why
    assert sorted(report["blockedRequests"]) == sorted(e["url"] for e in expected), why
    # Nothing else failed: only the blocked library files.
    failed = sorted(line.split(": ", 1) for line in report["failedRequests"])
    assert [url for url, _ in failed] == sorted(e["url"] for e in expected), why
    assert all(error.startswith("net::ERR_BLOCKED_BY_CLIENT") for _, error in failed), why
    assert [r["url"] for r in report["requests"] if not r["url"].startswith(gateway)] == [], why
    assert not any("/vendor/" in r["url"] for r in report["requests"]), why
    stats = report["stats"]
    assert (stats["client"], stats["loaded"], stats["errors"]) == (client, 0, 1), why
    assert "cannot load " + base in report["status"], why


def test_viewer_picks_a_style_and_a_date_of_the_demo_naip_layer(
    demo: DemoProcess, tmp_path: Path
) -> None:
    """Issue 13, acceptance 1, in the demo: on the NAIP layer a user picks the colour-infrared
    style and the 2010 date; the map loads that variant's tiles and the tile URL snippet is the
    URL to use."""
    screenshot = tmp_path / "viewer-naip.png"
    report = run_viewer(
        demo, screenshot, "--hash", "naip/leaflet", "--style", "infrared", "--time", "2010-06-29"
    )
    why = describe(report, demo)
    assert_page_healthy(report, demo, "leaflet", layer="naip")
    assert report["before"]["styles"] == ["natural", "infrared", "ndvi"], why
    assert report["before"]["times"] == ["2010-06-29", "2020-08-31"], why
    assert (report["stats"]["style"], report["stats"]["time"]) == ("infrared", "2010-06-29"), why
    query = "?style=infrared&time=2010-06-29"
    url = f"{demo.url}tiles/naip/{{z}}/{{x}}/{{y}}.png{query}"
    assert report["snippets"]["url"] == url, why
    picked = [r for r in gateway_requests(report, demo) if r["query"] == query]
    assert picked and all(r["status"] == 200 for r in picked), why
