"""The viewer page in a real browser, against a real ``tile-gateway demo`` process.

``check_viewer.mjs`` drives Debian's Chromium through playwright-core and reports what the page
did; these tests judge the report and the screenshot. Missing tools (node, npm, chromium) make
the tests fail, never skip: a skipped browser test looks the same as a passing one in CI.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from tests.conftest import free_port

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHECK_VIEWER = HERE / "check_viewer.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
MIN_NODE_MAJOR = 18  # playwright-core 1.61, pinned in package.json, runs on Debian 12's node 18
STARTUP_TIMEOUT = 60.0
BROWSER_TIMEOUT = 90.0
INSTALL_HINT = "On Debian/Ubuntu: sudo apt-get install -y nodejs npm chromium"
TILE_RE = re.compile(r"^/tiles/(?P<layer>[^/]+)/(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)(?P<r>@2x)?\.jpg$")


@pytest.fixture(scope="session")
def browser_tools() -> str:
    """The ``node`` binary, once node, the npm packages and Chromium are known to be there."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"the browser tests need Node.js >= {MIN_NODE_MAJOR}. {INSTALL_HINT}")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(f"the browser tests need Node.js >= {MIN_NODE_MAJOR}, found {version!r}")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"the browser tests drive the system Chromium at {CHROMIUM} (or $CHROMIUM_PATH), "
            f"which is missing. {INSTALL_HINT}"
        )
    modules = HERE / "node_modules"
    if not (modules / "playwright-core").is_dir() or not (modules / "leaflet").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                f"{modules} is missing and npm is not installed to create it. {INSTALL_HINT}"
            )
        # npm ci installs exactly the committed lock file; playwright-core downloads no browser.
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"`npm ci` in {HERE} failed (exit {result.returncode}); it needs the npm "
                f"registry:\n{result.stdout}\n{result.stderr}"
            )
    return node


@dataclass
class DemoProcess:
    """A running ``tile-gateway demo``, its viewer URL and everything it printed so far."""

    process: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def output(self, last: int = 60) -> str:
        return "".join(self.lines[-last:])


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoProcess]:
    """``tile-gateway demo`` as a real process on free ports, until the module's tests end."""
    port, imageserver_port = free_port(), free_port()
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


def run_viewer(node: str, demo: DemoProcess, screenshot: Path, *args: str) -> dict[str, Any]:
    """Run ``check_viewer.mjs`` and return its JSON report."""
    command = [node, str(CHECK_VIEWER), demo.url, str(screenshot), *args]
    try:
        result = subprocess.run(
            command,
            cwd=HERE,
            env={**os.environ, "CHROMIUM_PATH": str(CHROMIUM)},
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} hung for {BROWSER_TIMEOUT:.0f} s:\n{exc.stdout}\n{exc.stderr}")
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        pytest.fail(
            f"{command} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}\n"
            f"gateway output:\n{demo.output()}"
        )
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def describe(report: dict[str, Any], demo: DemoProcess) -> str:
    """What an assertion message needs to explain a broken page."""
    summary = {key: value for key, value in report.items() if key != "tiles"}
    return (
        f"\nreport: {json.dumps(summary, indent=1)}\n"
        f"screenshot: {report.get('screenshot')}\ngateway output:\n{demo.output(30)}"
    )


def assert_page_healthy(report: dict[str, Any], demo: DemoProcess, *, retina: bool) -> None:
    """The checks shared by every DPR: the layer, clean loading and the tile URLs used."""
    why = describe(report, demo)
    assert report["timedOut"] is None, why
    assert report["layer"] == "bluemarble", why
    assert report["loaded"] > 0, why
    assert report["errors"] == 0, why
    assert report["consoleErrors"] == [], why
    assert report["failedRequests"] == [], why
    assert report["blockedRequests"] == [], why
    assert report["tileRequests"] > 0, why
    assert len(report["tiles"]) == report["tileRequests"], why
    for tile in report["tiles"]:
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
    """The screenshot shows real imagery, with the sampled tile pixels where the page put them."""
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


def test_viewer_shows_blue_marble(browser_tools: str, demo: DemoProcess, tmp_path: Path) -> None:
    """Default layer at DPR 1: Blue Marble tiles load cleanly and show the Earth, well placed."""
    screenshot = tmp_path / "viewer-dpr1.png"
    report = run_viewer(browser_tools, demo, screenshot)
    assert_page_healthy(report, demo, retina=False)
    assert_places(report, demo)
    assert_screenshot(report, demo, screenshot)


def test_viewer_uses_retina_tiles(browser_tools: str, demo: DemoProcess, tmp_path: Path) -> None:
    """Layer picked by the URL hash at DPR 2: the page asks for the 512 px ``@2x`` tiles."""
    screenshot = tmp_path / "viewer-dpr2.png"
    report = run_viewer(browser_tools, demo, screenshot, "--dpr", "2", "--layer", "bluemarble")
    assert_page_healthy(report, demo, retina=True)
    assert_places(report, demo)
    assert_screenshot(report, demo, screenshot)
