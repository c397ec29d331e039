"""Variants against the reference ImageServer's own renderings: its time-enabled mosaic
``naip_time`` of the 2010 and 2020 scenes. Each variant's tile must be what the upstream
paints for that bbox with that variant's parameters, and no two variants may share their
pixels (a key that mixed variants up would serve one's bytes for another)."""

from __future__ import annotations

import io
import itertools
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from tests.conftest import MakeGateway

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
