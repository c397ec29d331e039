"""Variants against the reference ImageServer's own renderings: its raster functions
(``renderingRule``) on the NAIP scene and its time-enabled mosaic ``naip_time`` of the 2010 and
2020 scenes. Each variant's tile must be what the upstream
paints for that bbox with that variant's parameters, and no two variants may share their
pixels (a key that mixed variants up would serve one's bytes for another)."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from lxml import etree
from PIL import Image

from gateway.seed import SeedOptions, run_seed
from tests.conftest import MakeGateway, gateway_config
from tests.integration.test_wmts import NS

# A WebMercatorQuad tile inside the NAIP quarter-quad (47.02 N, 99.155 W), and its bbox.
Z, X, Y = 15, 7358, 11522
_R = 20037508.342789244
_SPAN = 2 * _R / 2**Z
BBOX = (-_R + X * _SPAN, _R - (Y + 1) * _SPAN, -_R + (X + 1) * _SPAN, _R - Y * _SPAN)
T2010, T2020 = 1277769600000, 1598832000000  # 2010-06-29 and 2020-08-31, 00:00 UTC


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))


async def upstream_tile(service: str, **params: str) -> np.ndarray:
    """The upstream's own exportImage of the tile's bbox, 256 x 256 PNG, with ``params``."""
    query = {
        "f": "image",
        "format": "png32",
        "bbox": ",".join(repr(v) for v in BBOX),
        "bboxSR": "3857",
        "imageSR": "3857",
        "size": "256,256",
        **params,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service}/exportImage", params=query) as response,
    ):
        assert response.status == 200
        assert response.content_type == "image/png", await response.text()
        return pixels(await response.read())


async def gateway_tile(client: Any, layer: str, query: str) -> np.ndarray:
    response = await client.get(f"/tiles/{layer}/{Z}/{X}/{Y}.png{query}")
    assert response.status == 200, await response.text()
    return pixels(await response.read())


def all_different(tiles: dict[str, np.ndarray]) -> None:
    for (one, a), (two, b) in itertools.combinations(tiles.items(), 2):
        assert not np.array_equal(a[..., :3], b[..., :3]), f"{one} and {two} share their pixels"


async def test_time_variants_are_the_upstreams_scenes(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    service = f"{imageserver_url}/naip_time/ImageServer"
    layer = {
        "url": service,
        "formats": ["png"],
        "meta_size": [1, 1],
        "time": {"values": ["2010-06-29", "2020-08-31"]},
    }
    client = await make_gateway({"naip": layer})
    tiles = {
        "2010": await gateway_tile(client, "naip", "?time=2010-06-29"),
        "2020": await gateway_tile(client, "naip", "?time=2020-08-31T00:00:00Z"),
    }
    assert np.array_equal(tiles["2010"], await upstream_tile(service, time=str(T2010)))
    assert np.array_equal(tiles["2020"], await upstream_tile(service, time=str(T2020)))
    all_different(tiles)
    # Without time: the default, the last value.
    assert np.array_equal(await gateway_tile(client, "naip", ""), tiles["2020"])


async def test_time_variants_through_metatiles(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    # 4 x 4 metatiles, cut per tile: each time value its own metatile, so its own pixels.
    layer = {
        "url": f"{imageserver_url}/naip_time/ImageServer",
        "formats": ["png"],
        "time": {"values": ["2010-06-29", "2020-08-31"]},
    }
    client = await make_gateway({"naip": layer})
    tiles = {t: await gateway_tile(client, "naip", f"?time={t}") for t in ("2010-06-29", "")}
    all_different(tiles)


async def test_time_values_read_from_the_service(
    make_gateway: MakeGateway,
    imageserver_url: str,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    # time.from_service: the catalog's acquisition dates, as the WMTS Dimension lists them.
    service = f"{imageserver_url}/naip_time/ImageServer"
    layer = {
        "url": service,
        "formats": ["png"],
        "meta_size": [1, 1],
        "time": {"from_service": True},
    }
    client = await make_gateway({"naip": layer})
    caps = etree.fromstring(await (await client.get("/wmts/1.0.0/WMTSCapabilities.xml")).read())
    dimension = caps.find(".//wmts:Layer/wmts:Dimension", NS)
    assert dimension is not None
    assert [v.text for v in dimension.iterfind("wmts:Value", NS)] == ["2010-06-29", "2020-08-31"]
    assert dimension.findtext("wmts:Default", namespaces=NS) == "2020-08-31"
    tile = await gateway_tile(client, "naip", "?time=2010-06-29T00:00:00Z")
    assert np.array_equal(tile, await upstream_tile(service, time=str(T2010)))
    refused = await client.get(f"/tiles/naip/{Z}/{X}/{Y}.png?time=2015-01-01")
    assert refused.status == 400
    # A seed checks --time against the service's values too.
    config = gateway_config({"naip": layer}, {"redis_url": redis_url, "prefix": key_prefix})
    options = SeedOptions(
        "naip",
        (15, 15),
        bbox=(-99.16, 47.015, -99.15, 47.02),
        time="2010-06-29",
        state=tmp_path / "seed.json",
    )
    assert await run_seed(config, options) == 0


def test_purge_of_a_date_read_from_the_service(
    imageserver_url: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    # The purge command reads the service's time values before it checks --time.
    config = {
        "cache": {"redis_url": redis_url, "prefix": key_prefix},
        "layers": {
            "naip": {
                "url": f"{imageserver_url}/naip_time/ImageServer",
                "time": {"from_service": True},
            }
        },
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    base = [sys.executable, "-m", "gateway", "purge", "--config", str(path), "--layer", "naip"]
    scope = ["--tms", "WebMercatorQuad", "--zoom", "15", "--bbox=-99.16,47.015,-99.15,47.02"]
    done = subprocess.run(
        [*base, *scope, "--time", "2010-06-29"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "keys computed for layer naip" in done.stdout
    refused = subprocess.run(
        [*base, *scope, "--time", "2015-01-01"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "is not one of 2010-06-29, 2020-08-31" in refused.stderr


STYLES = {
    "natural": {"bandIds": [0, 1, 2]},
    "falsecolor": {"rasterFunction": "False_Color"},
    "ndvi": {"rasterFunction": "NDVI"},
    "stretched": {
        "renderingRule": {
            "rasterFunction": "Stretch",
            "rasterFunctionArguments": {"StretchType": 5, "Min": 0, "Max": 255, "DRA": True},
        },
        "bandIds": [0, 1, 2],
    },
}


async def test_raster_function_styles_are_the_upstreams_renderings(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    service = f"{imageserver_url}/naip/ImageServer"
    layer = {"url": service, "formats": ["png"], "meta_size": [1, 1], "styles": STYLES}
    client = await make_gateway({"naip": layer})
    tiles = {name: await gateway_tile(client, "naip", f"?style={name}") for name in STYLES}
    for name, style in STYLES.items():
        params: dict[str, str] = {}
        if "rasterFunction" in style:
            params["renderingRule"] = json.dumps({"rasterFunction": style["rasterFunction"]})
        if "renderingRule" in style:
            params["renderingRule"] = json.dumps(style["renderingRule"])
        if "bandIds" in style:
            params["bandIds"] = ",".join(str(band) for band in style["bandIds"])
        assert np.array_equal(tiles[name], await upstream_tile(service, **params)), name
    all_different(tiles)


async def test_a_raster_function_at_a_date_of_the_mosaic(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    # Style and time together: the four variants of two styles at two dates, each the
    # upstream's rendering of that function over that scene.
    service = f"{imageserver_url}/naip_time/ImageServer"
    layer = {
        "url": service,
        "formats": ["png"],
        "meta_size": [1, 1],
        "styles": {"natural": {}, "ndvi": {"rasterFunction": "NDVI"}},
        "time": {"values": ["2010-06-29", "2020-08-31"]},
    }
    client = await make_gateway({"naip": layer})
    tiles = {
        f"{style} {date}": await gateway_tile(client, "naip", f"?style={style}&time={date}")
        for style, date in itertools.product(("natural", "ndvi"), ("2010-06-29", "2020-08-31"))
    }
    ndvi = json.dumps({"rasterFunction": "NDVI"})
    assert np.array_equal(
        tiles["ndvi 2010-06-29"], await upstream_tile(service, renderingRule=ndvi, time=str(T2010))
    )
    assert np.array_equal(
        tiles["natural 2020-08-31"], await upstream_tile(service, time=str(T2020))
    )
    all_different(tiles)


async def test_an_unknown_raster_function_is_an_upstream_error_never_cached(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    layer = {
        "url": f"{imageserver_url}/naip/ImageServer",
        "formats": ["png"],
        "meta_size": [1, 1],
        "styles": {"natural": {}, "nope": {"rasterFunction": "Nope"}},
    }
    client = await make_gateway({"naip": layer})
    for _ in range(2):
        response = await client.get(f"/tiles/naip/{Z}/{X}/{Y}.png?style=nope")
        assert response.status == 502
        body = await response.json()
        assert body["error"]["upstream"]["code"] == 400
        assert response.headers["Cache-Control"] == "no-store"
    assert (await client.get(f"/tiles/naip/{Z}/{X}/{Y}.png")).status == 200
