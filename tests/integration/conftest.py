"""A fixture upstream that records what the gateway asks and misbehaves on request.

It speaks just enough of an ImageServer (service info and exportImage) on a real socket; each
test sets ``behaviour`` to make exportImage answer the way a broken ArcGIS does, may hold every
exportImage call at a ``gate``, and reads how many calls were in flight at once.
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

# The scripted GP upstream and the two replicas of the jobs tests.
from tests.integration.gp_upstream import gp, replicas  # noqa: F401

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


def _requested_image(query: MultiDict[str]) -> tuple[bytes, str]:
    """A gradient image of the requested size and format (PNG or JPEG), with its type."""
    width, height = (int(v) for v in query["size"].split(","))
    if query["format"].startswith("jpg"):
        return gradient_png(width, height, "jpg"), "image/jpeg"
    return gradient_png(width, height), "image/png"


async def _cut_short(query: MultiDict[str]) -> web.Response:
    # A whole image's signature and header, then only half of its bytes: a transfer cut
    # short behind a proxy, or a disk full on the server.
    body, content_type = _requested_image(query)
    return web.Response(body=body[: len(body) // 2], content_type=content_type)


async def _drop(request: web.Request) -> web.StreamResponse:
    """HTTP 200 headers announcing the whole image, half its bytes, then the connection
    closed: an upstream (or a proxy) that dies mid-answer."""
    body, content_type = _requested_image(request.query)
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.close()
    return response


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
    "cut_short": _cut_short,
}
# Behaviours that work on the connection itself, not only on the answer.
CONNECTION_BEHAVIOURS: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
    "drop": _drop,
}


@dataclass
class FakeUpstream:
    """The fixture upstream: ``url`` of its ImageServer, the exportImage queries it received,
    and the ``behaviour`` its exportImage currently has (a key of ``BEHAVIOURS`` or
    ``CONNECTION_BEHAVIOURS``), after ``delay`` seconds (a slow upstream). Every exportImage
    call waits until ``gate`` is set (it is, unless a test clears it); ``running`` counts the
    calls in flight, ``peak`` the most at once.
    """

    server: TestServer
    behaviour: str = "ok"
    delay: float = 0.0
    queries: list[MultiDict[str]] = field(default_factory=list)
    # The X-Request-Id of each exportImage call ("" without one).
    request_ids: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    peak: int = 0
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

    async def export_image(request: web.Request) -> web.StreamResponse:
        upstream = state["upstream"]
        upstream.queries.append(request.query.copy())
        upstream.request_ids.append(request.headers.get("X-Request-Id", ""))
        upstream.running += 1
        upstream.peak = max(upstream.peak, upstream.running)
        try:
            await upstream.gate.wait()
            await asyncio.sleep(upstream.delay)
            if upstream.behaviour in CONNECTION_BEHAVIOURS:
                return await CONNECTION_BEHAVIOURS[upstream.behaviour](request)
            return await BEHAVIOURS[upstream.behaviour](request.query)
        finally:
            upstream.running -= 1

    async def service_info(request: web.Request) -> web.Response:
        return web.json_response(state["upstream"].info)

    app.router.add_get(SERVICE_PATH, service_info)
    app.router.add_get(f"{SERVICE_PATH}/exportImage", export_image)
    server = await aiohttp_server(app)
    state["upstream"] = FakeUpstream(server)
    state["upstream"].gate.set()
    return state["upstream"]
