"""OpenTelemetry traces (``server.tracing``): ``tile-gateway serve`` in front of the reference
ImageServer secured with a token and a real Redis, exporting over OTLP/HTTP to a receiver on a
socket here that decodes what it gets (opentelemetry-proto's ``ExportTraceServiceRequest``).
A tile miss is a SERVER span with a CLIENT child for the exportImage call and children for
the Redis round trips, all of one trace; no token is in any span. Without tracing, no
instrumentation is loaded and the requests pass through the gateway's middlewares alone."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import morecantile
import rasterio
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from rasterio.warp import transform_bounds

from tests.conftest import DATA, free_port
from tests.integration.test_credentials import API_KEY, PASSWORD, SecuredImageServer

WORKTREE = Path(__file__).resolve().parents[2]
# What a client puts in a tile URL by mistake: an ArcGIS token of its own.
CLIENT_TOKEN = "client-token-5d1f0a9e"


class Receiver:
    """An OTLP/HTTP traces endpoint: every span received (with its resource's
    ``service.name`` and its instrumentation scope's name), and every request body as sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, Span]] = []
        self.bodies: list[bytes] = []

    async def traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((service, scope_spans.scope.name, span))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


def _attributes(span: Span) -> dict[str, str]:
    return {a.key: a.value.string_value or str(a.value.int_value) for a in span.attributes}


def _tile_with_data() -> tuple[int, int, int]:
    """A WebMercatorQuad tile (z, x, y) at the middle of RGB.byte.tif."""
    with rasterio.open(DATA / "RGB.byte.tif") as dataset:
        west, south, east, north = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
    tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, 10)
    return tile.z, tile.x, tile.y


async def test_a_miss_is_a_request_span_with_upstream_and_cache_children(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.traces)
    collector = await aiohttp_server(app)
    upstream = SecuredImageServer(tmp_path, 120, "json", federated=False)
    upstream.start()
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "port": port,
                    "tracing": {
                        "enabled": True,
                        "endpoint": str(collector.make_url("/v1/traces")),
                        "service_name": "tiles-under-test",
                    },
                },
                "cache": {"redis_url": redis_url, "prefix": key_prefix},
                # The API key is sent as the token query parameter of every upstream call.
                "credentials": {"upstream": {"type": "static", "token_env": "TG_TEST_API_KEY"}},
                "layers": {
                    "secure": {
                        "url": upstream.service_url,
                        "credentials": "upstream",
                        "formats": ["png"],
                        "meta_size": [1, 1],
                    }
                },
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(WORKTREE),
        "TG_TEST_API_KEY": API_KEY,
        # Spans leave in batches every 50 ms instead of every 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    for name in ("OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=WORKTREE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    z, x, y = _tile_with_data()
    path = f"/tiles/secure/{z}/{x}/{y}.png"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                try:
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            async with session.get(f"{base}{path}", params={"token": CLIENT_TOKEN}) as response:
                assert response.status == 200, await response.text()
                assert response.headers["X-Cache"] == "MISS"
            async with session.get(f"{base}{path}") as response:
                assert response.headers["X-Cache"] == "HIT"

            def servers() -> list[Span]:
                return [
                    span
                    for _, _, span in receiver.spans
                    if span.kind == Span.SPAN_KIND_SERVER
                    and _attributes(span).get("http.target", "").startswith(path)
                ]

            for _ in range(200):
                if len(servers()) == 2:
                    break
                await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        upstream.stop()
    assert process.returncode == 0

    miss, hit = sorted(servers(), key=lambda span: span.start_time_unix_nano)
    assert {service for service, _, _ in receiver.spans} == {"tiles-under-test"}
    # Named by the route (RFC 6570-like template), never by the path with its values.
    assert miss.name == "GET /tiles/{layer}/{z}/{x}/{name}", miss.name
    attributes = _attributes(miss)
    assert attributes["http.target"] == f"{path}?token=[redacted]"
    assert attributes["http.status_code"] == "200"
    children = [
        (scope, span)
        for _, scope, span in receiver.spans
        if span.trace_id == miss.trace_id and span.parent_span_id == miss.span_id
    ]
    assert all(span.kind == Span.SPAN_KIND_CLIENT for _, span in children)
    calls = [
        span
        for scope, span in children
        if scope.endswith("aiohttp_client") and "/exportImage?" in _attributes(span)["http.url"]
    ]
    assert len(calls) == 1, [span.name for _, span in children]
    assert "token=[redacted]" in _attributes(calls[0])["http.url"]
    assert miss.start_time_unix_nano <= calls[0].start_time_unix_nano
    assert calls[0].end_time_unix_nano <= miss.end_time_unix_nano
    redis = [span for scope, span in children if scope.endswith("redis")]
    # The round trips of a miss: the tile (else the lock) before the call, the tiles stored
    # (and the lock released) after it; arguments are never recorded.
    assert any(span.end_time_unix_nano < calls[0].start_time_unix_nano for span in redis)
    assert any(span.start_time_unix_nano > calls[0].end_time_unix_nano for span in redis)
    assert "EVALSHA" in {span.name for span in redis}
    for span in redis:
        assert re.fullmatch(r"[A-Z]+( [A-Z]+)?( \?)*", _attributes(span)["db.statement"]), span
    # A hit from the in-process cache: a span of its own, and nothing under it.
    assert hit.trace_id != miss.trace_id
    assert not [span for _, _, span in receiver.spans if span.parent_span_id == hit.span_id]
    # No credential anywhere in what was sent: not the upstream's token, not the client's.
    assert receiver.bodies
    for body in receiver.bodies:
        for secret in (API_KEY, CLIENT_TOKEN, PASSWORD):
            assert secret.encode() not in body, secret


def test_without_tracing_no_instrumentation_is_loaded() -> None:
    # A gateway app made in a fresh interpreter. (redis-py imports the OpenTelemetry API
    # itself when it is installed, for its own opt-in metrics: only ours count here.)
    code = (
        "import json, sys\n"
        "from gateway.app import create_app\n"
        "from gateway.config import parse_config\n"
        "app = create_app(parse_config({'layers': {'a': {'url': "
        "'http://127.0.0.1:9/arcgis/rest/services/a/ImageServer'}}}))\n"
        "print(json.dumps({\n"
        "    'modules': sorted(m for m in sys.modules\n"
        "        if m == 'gateway.tracing' or m.startswith('opentelemetry.instrumentation')),\n"
        "    'middlewares': sorted({m.__module__ for m in app.middlewares}),\n"
        "}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=WORKTREE, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "modules": [],
        "middlewares": ["gateway.services.http.fronts"],
    }
