"""The gateway's answers, compared with answers recorded from an earlier version.

Refactoring the house must not change what clients get: this test asks a gateway process
(memory cache, the reference ImageServer, plus a layer whose upstream is down) for every
document (WMTS capabilities by KVP and RESTful, TileJSON, OGC API), one tile per front and
each front's answer to a set of bad requests, and compares status, the headers clients act on
and the body with the files in ``answers/``. Ports are normalised; tiles are compared by
their decoded pixels (a tile's bytes may change with its encoder, not its picture).

``RECORD_ANSWERS=1 pytest tests/integration/test_answers_unchanged.py`` rewrites the files:
do that only for a change of answer you mean, and say so in the commit.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

ANSWERS = Path(__file__).with_name("answers")
RECORD = os.environ.get("RECORD_ANSWERS") == "1"
# The headers a client acts on. Vary is compared without Accept-Encoding: compressing a
# document changes its transfer, not the answer.
HEADERS = (
    "Content-Type",
    "Cache-Control",
    "Vary",
    "X-Cache",
    "Allow",
    "WWW-Authenticate",
    "Access-Control-Allow-Origin",
    "Access-Control-Expose-Headers",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Max-Age",
)
# Mean absolute difference per channel, in 0-255 levels, that a re-encoded tile may show.
TILE_TOLERANCE = {"image/png": 1.0, "image/jpeg": 4.0}
WMTS_TILE = (
    "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER={layer}&STYLE=default"
    "&FORMAT={format}&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX={z}&TILEROW={y}&TILECOL={x}"
)
CAPS = "/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"
TILES_OGC = "/ogcapi/collections/{layer}/map/tiles/WebMercatorQuad"

# (name, method, path, request headers); names are file names under answers/.
REQUESTS: list[tuple[str, str, str, dict[str, str]]] = [
    # Documents.
    ("wmts-capabilities-kvp", "GET", CAPS, {}),
    ("wmts-capabilities-bare", "GET", "/wmts", {}),
    ("wmts-capabilities-rest", "GET", "/wmts/1.0.0/WMTSCapabilities.xml", {}),
    ("wmts-capabilities-sections", "GET", CAPS + "&Sections=Contents", {}),
    ("tilejson", "GET", "/tiles/bluemarble/tilejson.json", {}),
    ("tilejson-png-2x", "GET", "/tiles/bluemarble/tilejson.json?format=png&scale=2", {}),
    ("tilejson-rgb", "GET", "/tiles/rgb/tilejson.json", {}),
    ("ogcapi-landing", "GET", "/ogcapi", {}),
    ("ogcapi-landing-slash", "GET", "/ogcapi/", {}),
    ("ogcapi-conformance", "GET", "/ogcapi/conformance", {}),
    ("ogcapi-tilematrixsets", "GET", "/ogcapi/tileMatrixSets", {}),
    ("ogcapi-tilematrixset", "GET", "/ogcapi/tileMatrixSets/WGS1984Quad", {}),
    ("ogcapi-collections", "GET", "/ogcapi/collections", {}),
    ("ogcapi-collection", "GET", "/ogcapi/collections/rgb", {}),
    ("ogcapi-tilesets", "GET", "/ogcapi/collections/bluemarble/map/tiles", {}),
    ("ogcapi-tileset", "GET", TILES_OGC.format(layer="rgb"), {}),
    ("layers", "GET", "/layers.json", {}),
    ("healthz", "GET", "/healthz", {}),
    # One tile per front, asked twice: MISS then HIT (an ETag of the first comes back 304).
    ("xyz-tile", "GET", "/tiles/bluemarble/3/4/2.jpg", {}),
    ("xyz-tile-again", "GET", "/tiles/bluemarble/3/4/2.jpg", {}),
    ("xyz-tile-2x", "GET", "/tiles/bluemarble/2/2/1@2x.png", {}),
    ("xyz-tile-empty", "GET", "/tiles/rgb/5/0/0.png", {}),
    ("xyz-tile-wgs84", "GET", "/tiles/bluemarble/WGS1984Quad/2/3/1.png", {}),
    (
        "wmts-kvp-tile",
        "GET",
        WMTS_TILE.format(layer="rgb", format="image/png", z=8, y=110, x=72),
        {},
    ),
    ("wmts-rest-tile", "GET", "/wmts/1.0.0/bluemarble/default/WebMercatorQuad/4/5/8.jpg", {}),
    ("ogcapi-tile", "GET", TILES_OGC.format(layer="bluemarble") + "/3/3/4?f=png", {}),
    (
        "ogcapi-tile-accept",
        "GET",
        TILES_OGC.format(layer="bluemarble") + "/3/3/4",
        {"Accept": "image/jpeg"},
    ),
    # XYZ and TileJSON errors.
    ("xyz-unknown-layer", "GET", "/tiles/nope/1/0/0.png", {}),
    ("xyz-unknown-tms", "GET", "/tiles/bluemarble/Nope/1/0/0.png", {}),
    ("xyz-bad-extension", "GET", "/tiles/bluemarble/1/0/0.gif", {}),
    ("xyz-format-not-offered", "GET", "/tiles/rgb/1/0/0.jpg", {}),
    ("xyz-not-a-number", "GET", "/tiles/bluemarble/a/0/0.png", {}),
    ("xyz-zoom-out-of-range", "GET", "/tiles/bluemarble/12/0/0.png", {}),
    ("xyz-col-out-of-range", "GET", "/tiles/bluemarble/1/5/0.png", {}),
    ("xyz-2x-of-2x", "GET", "/tiles/bluemarble/WebMercatorQuad_2x/1/0/0@2x.png", {}),
    ("xyz-upstream-down", "GET", "/tiles/down/3/4/2.png", {}),
    ("tilejson-unknown-layer", "GET", "/tiles/nope/tilejson.json", {}),
    ("tilejson-bad-format", "GET", "/tiles/rgb/tilejson.json?format=jpg", {}),
    ("tilejson-bad-scale", "GET", "/tiles/rgb/tilejson.json?scale=3", {}),
    # WMTS errors.
    ("wmts-missing-parameters", "GET", "/wmts?SERVICE=WMTS&REQUEST=GetTile", {}),
    ("wmts-no-request", "GET", "/wmts?SERVICE=WMTS", {}),
    ("wmts-bad-service", "GET", "/wmts?SERVICE=WFS&REQUEST=GetTile", {}),
    ("wmts-bad-request", "GET", "/wmts?SERVICE=WMTS&REQUEST=GetMap", {}),
    ("wmts-feature-info", "GET", "/wmts?SERVICE=WMTS&REQUEST=GetFeatureInfo", {}),
    ("wmts-versions", "GET", CAPS + "&AcceptVersions=2.0.0", {}),
    ("wmts-bad-section", "GET", CAPS + "&Sections=Bogus", {}),
    (
        "wmts-unknown-layer",
        "GET",
        WMTS_TILE.format(layer="nope", format="image/png", z=1, y=0, x=0),
        {},
    ),
    (
        "wmts-bad-format",
        "GET",
        WMTS_TILE.format(layer="rgb", format="image/gif", z=1, y=0, x=0),
        {},
    ),
    (
        "wmts-tile-out-of-range",
        "GET",
        WMTS_TILE.format(layer="rgb", format="image/png", z=8, y=0, x=0),
        {},
    ),
    (
        "wmts-row-not-a-number",
        "GET",
        WMTS_TILE.format(layer="rgb", format="image/png", z=8, y="x", x=0),
        {},
    ),
    (
        "wmts-upstream-down",
        "GET",
        WMTS_TILE.format(layer="down", format="image/png", z=3, y=2, x=4),
        {},
    ),
    (
        "wmts-caps-not-acceptable",
        "GET",
        "/wmts/1.0.0/WMTSCapabilities.xml",
        {"Accept": "image/png"},
    ),
    ("wmts-rest-bad-name", "GET", "/wmts/1.0.0/rgb/default/WebMercatorQuad/8/110/x.png", {}),
    ("wmts-rest-unknown-style", "GET", "/wmts/1.0.0/rgb/fancy/WebMercatorQuad/8/110/72.png", {}),
    ("wmts-rest-out-of-range", "GET", "/wmts/1.0.0/rgb/default/WebMercatorQuad/8/0/0.png", {}),
    ("wmts-rest-upstream-down", "GET", "/wmts/1.0.0/down/default/WebMercatorQuad/3/2/4.png", {}),
    ("wmts-unknown-resource", "GET", "/wmts/1.0.0/WMTSCapabilities.xml/Bogus", {}),
    # OGC API errors.
    ("ogcapi-unknown-collection", "GET", "/ogcapi/collections/nope", {}),
    ("ogcapi-unknown-tms", "GET", "/ogcapi/tileMatrixSets/Nope", {}),
    ("ogcapi-f-html", "GET", "/ogcapi/conformance?f=html", {}),
    ("ogcapi-not-acceptable", "GET", "/ogcapi", {"Accept": "text/html"}),
    ("ogcapi-tile-bad-f", "GET", TILES_OGC.format(layer="rgb") + "/8/110/72?f=gif", {}),
    (
        "ogcapi-tile-not-acceptable",
        "GET",
        TILES_OGC.format(layer="rgb") + "/8/110/72",
        {"Accept": "image/webp"},
    ),
    ("ogcapi-tile-outside-limits", "GET", TILES_OGC.format(layer="rgb") + "/8/0/0?f=png", {}),
    ("ogcapi-tile-not-a-number", "GET", TILES_OGC.format(layer="rgb") + "/8/a/72", {}),
    ("ogcapi-tile-upstream-down", "GET", TILES_OGC.format(layer="down") + "/3/2/4?f=png", {}),
    ("ogcapi-unknown-resource", "GET", "/ogcapi/nothing/here", {}),
    # Admin and routing.
    ("purge-disabled", "POST", "/admin/purge", {}),
    ("root-unknown-path", "GET", "/nope", {}),
    ("tile-wrong-method", "POST", "/tiles/bluemarble/1/0/0.png", {}),
    (
        "tile-preflight",
        "OPTIONS",
        "/tiles/bluemarble/1/0/0.png",
        {"Origin": "https://example.org", "Access-Control-Request-Method": "GET"},
    ),
]


@pytest.fixture(scope="module")
def gateway(start_gateway: Callable[[dict[str, Any]], str]) -> str:
    """A gateway of its own (memory cache), so the cache states it shows are this test's."""
    return start_gateway(
        {
            "server": {"startup_timeout": 2},
            "layers": {
                "bluemarble": {
                    "url": "${IMAGESERVER}/bluemarble/ImageServer",
                    "formats": ["jpg", "png"],
                    "maxzoom": 9,
                    "attribution": "NASA <Blue Marble>",
                },
                "rgb": {"url": "${IMAGESERVER}/rgb/ImageServer", "formats": ["png"], "maxzoom": 12},
                # Nothing listens on port 9 of loopback: every upstream call fails.
                "down": {
                    "url": "http://127.0.0.1:9/arcgis/rest/services/x/ImageServer",
                    "formats": ["png"],
                    "maxzoom": 5,
                },
            },
        }
    )


def _normalise(text: str, gateway: str) -> str:
    text = text.replace(gateway, "http://GATEWAY")
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)


def _headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    found = {}
    for name in HEADERS:
        value = response.headers.get(name)
        if value is None:
            continue
        if name == "Vary":
            kept = [v.strip() for v in value.split(",") if v.strip().lower() != "accept-encoding"]
            if not kept:
                continue
            value = ", ".join(kept)
        found[name] = value
    return found


def _answer(
    name: str, response: aiohttp.ClientResponse, body: bytes, gateway: str
) -> tuple[dict[str, Any], bytes]:
    """The recorded form of an answer: status, headers, how its body compares, and the body
    as stored (text normalised, or the image bytes)."""
    content_type = response.headers.get("Content-Type", "").split(";")[0]
    answer: dict[str, Any] = {"status": response.status, "headers": _headers(response)}
    if "ETag" in response.headers:
        answer["etag"] = "strong" if response.headers["ETag"].startswith('"') else "weak"
    if "Last-Modified" in response.headers:
        answer["last_modified"] = True
    if content_type.startswith("image/") and body:
        with Image.open(io.BytesIO(body)) as image:
            answer["image"] = {"size": list(image.size), "mode": image.mode}
        answer["body"] = f"{name}.{content_type.split('/')[1]}"
        return answer, body
    answer["body"] = f"{name}.{'xml' if 'xml' in content_type else 'txt'}"
    return answer, _normalise(body.decode(), gateway).encode()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"), dtype=float)


@pytest.fixture(scope="module")
def recorded() -> Iterator[dict[str, Any]]:
    """The recorded answers; in record mode, the new ones, written when the module ends."""
    index = ANSWERS / "answers.json"
    if RECORD:
        fresh: dict[str, Any] = {}
        yield fresh
        index.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
        return
    if not index.is_file():
        pytest.fail(f"{index} is missing: record it with RECORD_ANSWERS=1")
    yield json.loads(index.read_text())


async def test_answers_are_unchanged(gateway: str, recorded: dict[str, Any]) -> None:
    ANSWERS.mkdir(exist_ok=True)
    etags: dict[str, str] = {}
    differences = []
    async with aiohttp.ClientSession() as session:
        for name, method, path, headers in REQUESTS:
            sent = dict(headers)
            if name.endswith("-again") and name.removesuffix("-again") in etags:
                # A conditional request of the first answer's ETag: the same bytes, 304.
                sent["If-None-Match"] = etags[name.removesuffix("-again")]
            async with session.request(method, gateway + path, headers=sent) as response:
                body = await response.read()
                if "ETag" in response.headers:
                    etags[name] = response.headers["ETag"]
                answer, stored = _answer(name, response, body, gateway)
            if RECORD:
                recorded[name] = answer
                (ANSWERS / answer["body"]).write_bytes(stored)
                continue
            expected = recorded.get(name)
            if expected is None:
                differences.append(f"{name}: no recorded answer")
                continue
            if answer != expected:
                differences.append(f"{name}: {answer} != recorded {expected}")
                continue
            reference = (ANSWERS / expected["body"]).read_bytes()
            if "image" not in expected:
                if stored != reference:
                    differences.append(f"{name}: body differs from answers/{expected['body']}")
                continue
            content_type = expected["headers"]["Content-Type"]
            error = float(np.abs(_pixels(stored) - _pixels(reference)).mean())
            if error > TILE_TOLERANCE[content_type]:
                differences.append(f"{name}: pixels differ by {error:.2f} levels on average")
    assert not differences, "\n".join(differences)
