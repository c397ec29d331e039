"""The viewer's style and date pickers in a real browser (issue 13, acceptance 1): a user picks a
style and a date for a layer, the map asks for (and shows) that variant's tiles, and the
snippets give the URLs to use. Against ``tile-gateway serve`` in front of the reference
ImageServer's time-enabled mosaic of the 2010 and 2020 NAIP scenes, whose bands the styles
combine."""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.browser.harness import run_driver

pytestmark = pytest.mark.browser

CHECK_VIEWER = Path(__file__).resolve().parent / "check_viewer.mjs"
LAYER = {
    "url": "${IMAGESERVER}/naip_time/ImageServer",
    "formats": ["png"],
    "maxzoom": 16,
    "styles": {
        "natural": {"title": "Natural colour", "bandIds": [0, 1, 2]},
        "falsecolor": {"title": "Colour infrared", "bandIds": [3, 0, 1]},
    },
    # start_gateway writes YAML with sorted keys: the default is named, not the first.
    "default_style": "natural",
    "time": {"values": ["2010-06-29", "2020-08-31"]},
}


# The style, then the date, a user picks in the panel.
PICKS = ("--style", "falsecolor", "--time", "2010-06-29")


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[[dict[str, Any]], str]) -> str:
    """The viewer's URL on a gateway serving the styled, time-enabled ``naip`` layer."""
    return start_gateway({"layers": {"naip": LAYER}}) + "/"


def pick(gateway: str, screenshot: Path, hash_: str) -> dict[str, Any]:
    """The viewer's report after picking the false-colour style and the 2010 date."""
    return run_driver(
        CHECK_VIEWER,
        [gateway, str(screenshot), "--hash", hash_, *PICKS],
    )


def healthy(report: dict[str, Any]) -> str:
    """Assert the page settled without errors; the report summary for messages."""
    why = json.dumps({k: v for k, v in report.items() if k not in ("requests",)}, indent=1)[:4000]
    assert report["timedOut"] is None, why
    assert report["consoleErrors"] == [] and report["failedRequests"] == [], why
    assert report["stats"]["loaded"] > 0 and report["stats"]["errors"] == 0, why
    return why


def fetch(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGBA"))


def test_leaflet_shows_the_style_and_date_picked(gateway: str, tmp_path: Path) -> None:
    report = pick(gateway, tmp_path / "leaflet.png", "naip/leaflet")
    why = healthy(report)
    before = report["before"]
    assert sorted(before["styles"]) == ["falsecolor", "natural"], why
    assert before["times"] == ["2010-06-29", "2020-08-31"], why
    assert (before["stats"]["style"], before["stats"]["time"]) == ("natural", "2020-08-31"), why
    assert (report["stats"]["style"], report["stats"]["time"]) == ("falsecolor", "2010-06-29")

    # Before the picks, plain tile URLs; after the style, its tiles; after the date, those of
    # the style at that date. Each a 200 image.
    tiles = [r for r in report["requests"] if r["path"].startswith("/tiles/naip/")]
    tiles = [r for r in tiles if not r["path"].endswith(".json")]
    queries = [r["query"] for r in tiles]
    steps = ["", "?style=falsecolor", "?style=falsecolor&time=2010-06-29"]
    assert [query for i, query in enumerate(queries) if query not in queries[:i]] == steps, why
    picked = [r for r in tiles if r["query"] == steps[-1]]
    assert all(r["status"] == 200 and r["contentType"] == "image/png" for r in tiles), why

    # The snippets give the URL to use, which answers that variant's tiles.
    origin = gateway.rstrip("/")
    url = f"{origin}/tiles/naip/{{z}}/{{x}}/{{y}}.png?style=falsecolor&time=2010-06-29"
    assert report["snippets"]["url"] == url, why
    assert before["snippets"]["url"] == f"{origin}/tiles/naip/{{z}}/{{x}}/{{y}}.png", why
    assert url.replace("{y}.png", "{y}{r}.png") in report["snippets"]["leaflet"], why
    assert "styles=falsecolor" in report["snippets"]["qgis"], why
    assert "Time%3D2010-06-29" in report["snippets"]["qgis"], why
    assert ",style=falsecolor" in report["snippets"]["gdal"], why
    assert "style=falsecolor&time=2010-06-29" in report["snippets"]["maplibre"], why

    # What the map showed changed: the tiles it loaded after the picks are the false-colour
    # picture (NIR, R, G of R, G, B, NIR) of the 2010 scene, not the natural-colour 2020 one.
    compared = 0
    for tile in picked:
        url = origin + tile["path"]
        natural_2010 = fetch(url + "?time=2010-06-29")
        inside = natural_2010[..., 3] == 255
        if not inside.any():
            continue  # a tile beyond the scenes' edge
        false_2010 = fetch(url + tile["query"])
        assert np.array_equal(false_2010[..., 1][inside], natural_2010[..., 0][inside]), why
        assert not np.array_equal(false_2010[..., 0][inside], natural_2010[..., 0][inside]), why
        natural_2020 = fetch(url)
        assert not np.array_equal(natural_2020[inside], natural_2010[inside]), why
        compared += 1
    assert compared, why


def test_openlayers_wmts_asks_the_style_and_time_dimension(gateway: str, tmp_path: Path) -> None:
    report = pick(gateway, tmp_path / "openlayers.png", "naip/openlayers/WebMercatorQuad")
    why = healthy(report)
    assert report["stats"]["client"] == "openlayers", why
    wmts = [r for r in report["requests"] if urlsplit(r["url"]).path == "/wmts"]
    queries = [{k.lower(): v for k, v in parse_qsl(r["query"].lstrip("?"))} for r in wmts]
    assert all(q["request"] == "GetTile" for q in queries), why
    # The default style at the Dimension's Default, then the style picked, then the date.
    seen = [(q.get("style"), q.get("time")) for q in queries]
    steps = [("natural", "2020-08-31"), ("falsecolor", "2020-08-31"), ("falsecolor", "2010-06-29")]
    assert [pair for i, pair in enumerate(seen) if pair not in seen[:i]] == steps, why
    assert all(r["status"] == 200 for r in wmts), why
    assert 'style: "falsecolor"' in report["snippets"]["openlayers"], why
    assert 'Time: "2010-06-29"' in report["snippets"]["openlayers"], why
