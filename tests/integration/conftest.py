"""A fixture upstream that records what the gateway asks and misbehaves on request.

It speaks just enough of an ImageServer (service info and exportImage) on a real socket; each
test sets ``behaviour`` to make exportImage answer the way a broken ArcGIS does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import MultiDict
from PIL import Image

SERVICE_PATH = "/arcgis/rest/services/fake/ImageServer"


def encode_image(fmt: str, size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """A solid ``colour`` image of ``size`` pixels as PNG (RGBA) or JPEG bytes."""
    buffer = io.BytesIO()
    if fmt.startswith("png"):
        Image.new("RGBA", size, (*colour, 255)).save(buffer, "PNG")
    else:
        Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _image_answer(query: MultiDict[str]) -> web.Response:
    width, height = (int(v) for v in query["size"].split(","))
    fmt = query["format"]
    body = encode_image(fmt, (width, height), (10, 120, 200))
    return web.Response(
        body=body, content_type="image/png" if fmt.startswith("png") else "image/jpeg"
    )


def gradient_png(width: int, height: int, fmt: str = "png") -> bytes:
    """An RGBA PNG (or with ``fmt`` ``jpg`` an RGB JPEG at quality 95) whose pixel (x, y) is
    (x % 256, y % 256, (x // 256) * 16 + y // 256, 255): every pixel of a metatile says where
    it is."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    rgba = np.stack([xs % 256, ys % 256, (xs // 256) * 16 + ys // 256, np.full_like(xs, 255)], -1)
    buffer = io.BytesIO()
    image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    if fmt == "jpg":
        image.convert("RGB").save(buffer, "JPEG", quality=95)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


async def _gradient(query: MultiDict[str]) -> web.Response:
    width, height = (int(v) for v in query["size"].split(","))
    if query["format"].startswith("jpg"):
        return web.Response(body=gradient_png(width, height, "jpg"), content_type="image/jpeg")
    return web.Response(body=gradient_png(width, height), content_type="image/png")


async def _by_bbox(query: MultiDict[str]) -> web.Response:
    # A colour of each bbox: tiles that must differ do, so a mix-up between keys shows.
    width, height = (int(v) for v in query["size"].split(","))
    colour = tuple(hashlib.blake2b(query["bbox"].encode(), digest_size=3).digest())
    return web.Response(body=encode_image("png", (width, height), colour), content_type="image/png")


async def _slow_ok(query: MultiDict[str]) -> web.Response:
    await asyncio.sleep(0.3)
    return _image_answer(query)


async def _slow500(query: MultiDict[str]) -> web.Response:
    await asyncio.sleep(0.3)
    return web.Response(status=500, text="Internal Server Error", content_type="text/plain")


async def _ok(query: MultiDict[str]) -> web.Response:
    return _image_answer(query)


async def _slow(query: MultiDict[str]) -> web.Response:
    await asyncio.sleep(3)
    return _image_answer(query)


async def _http500(query: MultiDict[str]) -> web.Response:
    return web.Response(status=500, text="Internal Server Error", content_type="text/plain")


async def _error200(query: MultiDict[str]) -> web.Response:
    body = {
        "error": {
            "code": 400,
            "message": "Unable to complete operation.",
            "details": ["Invalid bbox"],
        }
    }
    return web.Response(text=json.dumps(body), content_type="text/plain")


async def _token498(query: MultiDict[str]) -> web.Response:
    body = {"error": {"code": 498, "message": "Invalid Token", "details": []}}
    return web.Response(status=498, text=json.dumps(body), content_type="application/json")


async def _html_invalid_token(query: MultiDict[str]) -> web.Response:
    page = "<html><body><h1>Error</h1><p>Invalid Token</p></body></html>"
    return web.Response(text=page, content_type="text/html")


async def _html_page(query: MultiDict[str]) -> web.Response:
    return web.Response(
        text="<html><body>Service unavailable</body></html>", content_type="text/html"
    )


async def _wrong_magic(query: MultiDict[str]) -> web.Response:
    # Claims PNG but sends JPEG bytes: a tile that would not decode as what it says it is.
    width, height = (int(v) for v in query["size"].split(","))
    return web.Response(
        body=encode_image("jpg", (width, height), (1, 2, 3)), content_type="image/png"
    )


async def _truncated(query: MultiDict[str]) -> web.Response:
    return web.Response(body=b"GIF89a", content_type="image/png")


BEHAVIOURS: dict[str, Callable[[MultiDict[str]], Awaitable[web.Response]]] = {
    "ok": _ok,
    "slow": _slow,
    "http500": _http500,
    "error200": _error200,
    "token498": _token498,
    "html_invalid_token": _html_invalid_token,
    "html_page": _html_page,
    "wrong_magic": _wrong_magic,
    "truncated": _truncated,
    "gradient": _gradient,
    "by_bbox": _by_bbox,
    "slow_ok": _slow_ok,
    "slow500": _slow500,
}


@dataclass
class FakeUpstream:
    """The fixture upstream: ``url`` of its ImageServer, the exportImage queries it received,
    the ``behaviour`` its exportImage currently has (a key of ``BEHAVIOURS``) and the
    ``delay`` in seconds before each exportImage answer (a slow upstream)."""

    server: TestServer
    behaviour: str = "ok"
    delay: float = 0.0
    queries: list[MultiDict[str]] = field(default_factory=list)
    info: dict[str, object] = field(
        default_factory=lambda: {"name": "fake", "type": "ImageServer", "currentVersion": 11.1}
    )

    @property
    def url(self) -> str:
        return str(self.server.make_url(SERVICE_PATH))


@pytest.fixture
async def fake_upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeUpstream:
    app = web.Application()
    state: dict[str, FakeUpstream] = {}

    async def export_image(request: web.Request) -> web.Response:
        upstream = state["upstream"]
        upstream.queries.append(request.query.copy())
        await asyncio.sleep(upstream.delay)
        return await BEHAVIOURS[upstream.behaviour](request.query)

    async def service_info(request: web.Request) -> web.Response:
        return web.json_response(state["upstream"].info)

    app.router.add_get(SERVICE_PATH, service_info)
    app.router.add_get(f"{SERVICE_PATH}/exportImage", export_image)
    server = await aiohttp_server(app)
    state["upstream"] = FakeUpstream(server)
    return state["upstream"]
