"""The viewer's own routes on a real socket: the page names where its map libraries come from
(``viewer.libraries``), and ``/vendor/...`` serves the vendored files and nothing else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from tests.conftest import REPO
from tests.integration.conftest import FakeUpstream

VENDOR = REPO / "gateway" / "web" / "vendor"
VENDORED = sorted(
    path.relative_to(VENDOR).as_posix() for path in VENDOR.glob("*@*/**/*") if path.is_file()
)
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",
}
IMMUTABLE = "public, max-age=31536000, immutable"
MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    fake_upstream: FakeUpstream,
) -> MakeClient:
    """``await make_client(viewer=None)``: a gateway with one layer and that viewer section."""

    async def make(viewer: dict[str, Any] | None = None) -> TestClient:
        data: dict[str, Any] = {"layers": {"a": {"url": fake_upstream.url}}}
        if viewer is not None:
            data["viewer"] = viewer
        return await aiohttp_client(create_app(parse_config(data)))

    return make


async def raw_get(client: TestClient, target: str) -> tuple[int, dict[str, str], bytes]:
    """``GET target`` sent byte for byte, as no HTTP client library would normalise it;
    returns the status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, value in (line.split(":", 1) for line in lines)
    }
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("viewer", "base"),
    [
        (None, "vendor/"),
        ({"libraries": "local", "cdn_url": "https://cdn.example.org/npm/"}, "vendor/"),
        ({"libraries": "cdn"}, "https://unpkg.com/"),
        (
            {"libraries": "cdn", "cdn_url": "https://cdn.example.org/npm"},
            "https://cdn.example.org/npm/",
        ),
    ],
)
async def test_page_names_the_library_base(
    make_client: MakeClient, viewer: dict[str, Any] | None, base: str
) -> None:
    client = await make_client(viewer)
    response = await client.get("/")
    assert response.status == 200
    page = await response.text()
    assert f'<meta name="tile-gateway-libraries" content="{base}">' in page
    assert "{{" not in page


@pytest.mark.parametrize("path", VENDORED)
async def test_vendored_file_is_served_immutable(make_client: MakeClient, path: str) -> None:
    client = await make_client()
    response = await client.get(f"/vendor/{path}")
    assert response.status == 200
    assert await response.read() == (VENDOR / path).read_bytes()
    assert response.headers["Content-Type"] == CONTENT_TYPES[PurePosixPath(path).suffix]
    assert response.headers["Cache-Control"] == IMMUTABLE
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_vendor_folder_has_the_three_libraries() -> None:
    """The parametrised test above covers something: the scripts and stylesheets are there."""
    assets = {path for path in VENDORED if path.endswith((".js", ".css"))}
    assert {path.split("@")[0] for path in assets} == {"leaflet", "ol", "maplibre-gl"}
    assert len(assets) == 6


@pytest.mark.parametrize(
    "path",
    [
        "/vendor/README.md",  # the folder's notice, not a library file
        "/vendor/leaflet@1.9.4/dist/leaflet.js.map",
        "/vendor/leaflet@1.9.3/dist/leaflet.js",
        "/vendor/leaflet@1.9.4/dist/",
        "/vendor/leaflet@1.9.4/dist/images/layers.png",
        "/vendor/leaflet@1.9.4/dist/LEAFLET.JS",
    ],
)
async def test_unknown_vendor_paths_are_json_404(make_client: MakeClient, path: str) -> None:
    client = await make_client()
    response = await client.get(path)
    assert response.status == 404
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = await response.json()
    assert body["error"]["code"] == 404
    assert "no vendored file" in body["error"]["message"]


@pytest.mark.parametrize(
    "target",
    [
        "/vendor/../../config.py",
        "/vendor/leaflet@1.9.4/../../../services/viewer.py",
        "/vendor/leaflet@1.9.4/dist/../../../../config.py",
        "/vendor/..%2F..%2Fconfig.py",
        "/vendor/leaflet@1.9.4%2F..%2F..%2F..%2Fconfig.py",
        "/vendor/%2e%2e/%2e%2e/config.py",
        "/vendor/leaflet@1.9.4/%2E%2E/%2E%2E/%2E%2E/services/viewer.py",
        "/vendor/..%5C..%5Cconfig.py",
        "/vendor//etc/passwd",
        "/vendor/%2Fetc%2Fpasswd",
        "/vendor/leaflet@1.9.4/dist/leaflet.js%00.py",
    ],
)
async def test_path_traversal_is_refused(make_client: MakeClient, target: str) -> None:
    """Paths that would leave the vendor folder, sent as written (``..``, encoded slashes and
    dots, backslashes, absolute paths, NUL): a JSON 404, never a file's content."""
    client = await make_client()
    status, headers, body = await raw_get(client, target)
    assert status == 404, body[:200]
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == 404
    for secret in (b"def ", b"import ", b"root:"):
        assert secret not in body


async def test_raw_requests_reach_vendored_files(make_client: MakeClient) -> None:
    """The control for the traversal test: the same raw request, to a vendored file, gets it."""
    client = await make_client()
    status, headers, body = await raw_get(client, "/vendor/leaflet@1.9.4/dist/leaflet.js")
    assert status == 200
    assert headers["cache-control"] == IMMUTABLE
    assert body == (VENDOR / "leaflet@1.9.4" / "dist" / "leaflet.js").read_bytes()
