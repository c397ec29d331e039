"""The XYZ path end to end: what the upstream is asked, what the client gets, what Redis holds."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
import redis
from PIL import Image

from gateway.grids import GridRegistry
from tests.conftest import MakeGateway, RedisProcess
from tests.integration.conftest import FakeUpstream

R = 20037508.342789244


def tile_bbox(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """The WebMercatorQuad bbox by the formula of arcgis-rest.md section 2.2."""
    span = 2 * R / 2**z
    xmin, ymax = -R + x * span, R - y * span
    return xmin, ymax - span, xmin + span, ymax


def close(a: float, b: float, z: int, rel: float = 1e-9) -> bool:
    """``a`` equals ``b`` within ``rel`` of the larger value, or of the tile span near 0."""
    return abs(a - b) <= rel * max(abs(a), abs(b), 2 * R / 2**z)


def keys_under(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:*", count=1000))


def layer(url: str, **extra: object) -> dict[str, object]:
    """A layer with metatiles off: one tile, one exportImage call (test_metatiles.py has more)."""
    return {"url": url, "formats": ["png", "jpg"], "ttl": 600, "meta_size": [1, 1], **extra}


# -- what the upstream is asked -------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "x", "y", "scale", "ext"),
    [(0, 0, 0, 1, "png"), (3, 4, 2, 1, "png"), (7, 100, 50, 2, "jpg"), (12, 2047, 1362, 1, "jpg")],
)
async def test_one_export_image_call_with_the_tile_bbox(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    z: int,
    x: int,
    y: int,
    scale: int,
    ext: str,
) -> None:
    export = {
        "bandIds": [2, 0, 1],
        "renderingRule": {
            "rasterFunction": "Stretch",
            "rasterFunctionArguments": {"StretchType": 5},
        },
        "mosaicRule": {"mosaicMethod": "esriMosaicNorthwest"},
        "noData": 0,
        "interpolation": "RSP_CubicConvolution",
        "compressionQuality": 75,
        "pixelType": "U8",
    }
    client = await make_gateway({"fake": layer(fake_upstream.url, export=export)})
    suffix = "@2x" if scale == 2 else ""
    response = await client.get(f"/tiles/fake/{z}/{x}/{y}{suffix}.{ext}")
    assert response.status == 200, await response.text()
    assert len(fake_upstream.queries) == 1
    query = fake_upstream.queries[0]
    sent = [float(v) for v in query["bbox"].split(",")]
    for got, want in zip(sent, tile_bbox(z, x, y), strict=True):
        assert close(got, want, z), (sent, tile_bbox(z, x, y))
    assert query["bboxSR"] == query["imageSR"] == "3857"
    assert query["size"] == f"{256 * scale},{256 * scale}"
    assert query["format"] == ("png32" if ext == "png" else "jpg")
    assert query["f"] == "image"
    assert query["bandIds"] == "2,0,1"
    assert json.loads(query["renderingRule"]) == export["renderingRule"]
    assert json.loads(query["mosaicRule"]) == export["mosaicRule"]
    assert query["noData"] == "0"
    assert query["interpolation"] == "RSP_CubicConvolution"
    assert query["compressionQuality"] == "75"
    assert query["pixelType"] == "U8"
    assert "token" not in query
    image = Image.open(io.BytesIO(await response.read()))
    assert image.size == (256 * scale, 256 * scale)
    assert image.format == ("PNG" if ext == "png" else "JPEG")


async def test_web_mercator_wkid_is_configurable(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, web_mercator_wkid=102100)})
    assert (await client.get("/tiles/fake/2/1/1.png")).status == 200
    assert fake_upstream.queries[0]["bboxSR"] == fake_upstream.queries[0]["imageSR"] == "102100"


def test_grid_bbox_matches_the_formula() -> None:
    grid = GridRegistry()["WebMercatorQuad"]
    for z, x, y in [(0, 0, 0), (1, 1, 0), (5, 17, 11), (18, 131071, 87381), (22, 0, 4194303)]:
        for got, want in zip(grid.bbox(z, x, y), tile_bbox(z, x, y), strict=True):
            assert close(got, want, z, 1e-12), (z, x, y)


# -- cache: MISS, HIT, TTL, ETag ------------------------------------------------------------


async def test_miss_then_hit_from_redis_with_the_layer_ttl(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    cache = {"redis_url": redis_url, "prefix": key_prefix}
    client = await make_gateway({"fake": layer(fake_upstream.url, ttl=600)}, cache)
    first = await client.get("/tiles/fake/3/4/2.png")
    assert first.status == 200
    assert first.headers["X-Cache"] == "MISS"
    body = await first.read()
    keys = keys_under(redis_client, key_prefix)
    assert len(keys) == 1
    key = keys[0].decode()
    assert key.startswith(f"{key_prefix}:fake:") and key.endswith(":WebMercatorQuad:3:4:2:1.png")
    assert 590 <= redis_client.ttl(key) <= 600
    assert body in redis_client.get(key)  # the PNG bytes behind the entry header

    # A second gateway (another replica) sharing the Redis answers from it.
    replica = await make_gateway({"fake": layer(fake_upstream.url, ttl=600)}, cache)
    second = await replica.get("/tiles/fake/3/4/2.png")
    assert second.headers["X-Cache"] == "HIT"
    assert await second.read() == body
    assert second.headers["ETag"] == first.headers["ETag"]
    assert len(fake_upstream.queries) == 1


async def test_memory_cache_is_the_default(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    assert (await client.get("/tiles/fake/1/0/0.jpg")).headers["X-Cache"] == "MISS"
    assert (await client.get("/tiles/fake/1/0/0.jpg")).headers["X-Cache"] == "HIT"
    assert (await client.get("/tiles/fake/1/0/0.png")).headers["X-Cache"] == "MISS"
    assert len(fake_upstream.queries) == 2


async def test_response_headers_etag_and_304(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, ttl=1234)})
    response = await client.get("/tiles/fake/2/1/2.png")
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Cache-Control"] == "public, max-age=1234"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")

    not_modified = await client.get("/tiles/fake/2/1/2.png", headers={"If-None-Match": etag})
    assert not_modified.status == 304
    assert not_modified.headers["ETag"] == etag
    assert await not_modified.read() == b""

    listed = await client.get(
        "/tiles/fake/2/1/2.png", headers={"If-None-Match": f'"other", W/{etag}'}
    )
    assert listed.status == 304

    changed = await client.get("/tiles/fake/2/1/2.png", headers={"If-None-Match": '"stale"'})
    assert changed.status == 200
    assert len(await changed.read()) > 0
    assert len(fake_upstream.queries) == 1


async def test_cors_origin_is_configurable(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url)}, cors_allow_origin="https://maps.example.org"
    )
    for path in ("/tiles/fake/0/0/0.png", "/tiles/nope/0/0/0.png", "/nowhere"):
        response = await client.get(path)
        assert response.headers["Access-Control-Allow-Origin"] == "https://maps.example.org"


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/tiles/nope/0/0/0.png", 404),
        ("/tiles/fake/3/8/0.png", 404),  # TileCol outside 0..7
        ("/tiles/fake/3/0/8.png", 404),  # TileRow outside 0..7
        ("/tiles/fake/31/0/0.png", 404),  # beyond the layer's maxzoom
        ("/tiles/fake/1/0/0.gif", 400),
        ("/tiles/fake/1/0/0.webp", 400),
        ("/tiles/fake/1/0/0", 400),
        ("/tiles/fake/a/0/0.png", 400),
        ("/tiles/fake/1/-1/0.png", 400),
        ("/tiles/fake/1/0/0@3x.png", 400),
        ("/tiles/fake/1/0/0/extra.png", 404),
    ],
)
async def test_bad_tile_addresses_get_json_errors(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, path: str, status: int
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.get(path)
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    error = (await response.json())["error"]
    assert error["code"] == status and error["message"]
    assert fake_upstream.queries == []


async def test_zoom_limits_and_offered_formats(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, minzoom=2, maxzoom=4, formats=["jpg"])}
    )
    assert (await client.get("/tiles/fake/1/0/0.jpg")).status == 404
    assert (await client.get("/tiles/fake/5/0/0.jpg")).status == 404
    assert (await client.get("/tiles/fake/4/0/0.png")).status == 400
    assert (await client.get("/tiles/fake/4/0/0.jpeg")).status == 200
    assert len(fake_upstream.queries) == 1


# -- upstream failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "message"),
    [
        ("http500", 502, 500, "HTTP 500"),
        ("error200", 502, 400, "Unable to complete operation. (Invalid bbox)"),
        ("token498", 502, 498, "Invalid Token"),
        ("html_invalid_token", 502, 498, "Invalid Token"),
        ("html_page", 502, 200, "not an image (text/html)"),
        ("wrong_magic", 502, 200, "the image is not a valid PNG (image/png)"),
        ("truncated", 502, 200, "the image is not a valid PNG (image/png)"),
        ("slow", 504, None, "no answer within 0.5 s"),
    ],
)
async def test_upstream_failures_give_errors_and_store_nothing(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    behaviour: str,
    status: int,
    code: int | None,
    message: str,
) -> None:
    fake_upstream.behaviour = behaviour
    client = await make_gateway(
        {"fake": layer(fake_upstream.url)},
        {"redis_url": redis_url, "prefix": key_prefix},
        upstream_timeout=0.5,
    )
    for _ in range(2):  # the second try goes upstream again: the error was not cached
        response = await client.get("/tiles/fake/3/4/2.png")
        assert response.status == status
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        text = await response.text()
        error = json.loads(text)["error"]
        assert error["code"] == status
        assert error["layer"] == "fake"
        assert error["upstream"] == {"code": code, "message": message}
        assert "fake" in error["message"]
        assert "127.0.0.1" not in text and "exportImage" not in text and "bboxSR" not in text
    assert len(fake_upstream.queries) == 2
    assert keys_under(redis_client, key_prefix) == []
    fake_upstream.behaviour = "ok"
    recovered = await client.get("/tiles/fake/3/4/2.png")
    assert recovered.status == 200 and recovered.headers["X-Cache"] == "MISS"
    assert len(keys_under(redis_client, key_prefix)) == 1


async def test_unreachable_upstream_is_a_502_without_its_address(
    make_gateway: MakeGateway,
) -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/arcgis/rest/services/x/ImageServer"
    client = await make_gateway({"gone": layer(url)})
    response = await client.get("/tiles/gone/0/0/0.png")
    assert response.status == 502
    text = await response.text()
    assert "127.0.0.1" not in text
    assert json.loads(text)["error"]["upstream"]["message"].startswith("unreachable")


# -- Redis outages -----------------------------------------------------------------------------


async def test_tiles_are_served_through_a_redis_outage_and_cached_again_after(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_process: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # L1 off: what is tested here is the Redis tier going away and coming back.
    cache = {
        "redis_url": redis_process.url,
        "retry_interval": 0.2,
        "timeout": 0.5,
        "l1_max_bytes": 0,
    }
    client = await make_gateway({"fake": layer(fake_upstream.url)}, cache)
    assert (await client.get("/tiles/fake/2/0/0.png")).headers["X-Cache"] == "MISS"
    assert (await client.get("/tiles/fake/2/0/0.png")).headers["X-Cache"] == "HIT"

    redis_process.stop()
    for path in ("/tiles/fake/2/0/0.png", "/tiles/fake/2/1/0.png", "/tiles/fake/2/1/0.png"):
        response = await client.get(path)
        assert response.status == 200
        assert response.headers["X-Cache"] == "MISS"
        assert len(await response.read()) > 0
    ready = await client.get("/readyz")
    assert (await ready.json())["cache"] == {"backend": "redis", "state": "unavailable"}

    redis_process.start()
    # The fetches made during the outage went on as lock holders: each retries its store every
    # retry_interval within the lock's lease (gateway/cache/coalesce.py), so the tiles reach
    # the new, empty Redis once it is back, without a request.
    direct = redis.Redis.from_url(redis_process.url)
    deadline = time.monotonic() + 10
    while direct.dbsize() < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert direct.dbsize() == 2
    assert (await client.get("/tiles/fake/2/1/0.png")).headers["X-Cache"] == "HIT"
    # And a tile never asked before is cached again.
    assert (await client.get("/tiles/fake/2/2/1.png")).headers["X-Cache"] == "MISS"
    assert (await client.get("/tiles/fake/2/2/1.png")).headers["X-Cache"] == "HIT"
    assert direct.dbsize() == 3
    outage_logs = [r.getMessage() for r in caplog.records if r.name == "gateway.cache.backend"]
    assert len([m for m in outage_logs if "unavailable" in m]) == 1
    assert len([m for m in outage_logs if "available again" in m]) == 1


# -- health ------------------------------------------------------------------------------------


async def test_healthz_and_readyz(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> None:
    from tests.conftest import free_port

    client = await make_gateway({"fake": layer(fake_upstream.url)})
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "upstreams": {"fake": "ok"},
        "cache": {"backend": "memory", "state": "ok"},
    }
    gone = f"http://127.0.0.1:{free_port()}/arcgis/rest/services/x/ImageServer"
    broken = await make_gateway({"fake": layer(fake_upstream.url), "gone": layer(gone)})
    unready = await broken.get("/readyz")
    assert unready.status == 503
    body = await unready.json()
    assert body["upstreams"]["fake"] == "ok"
    assert body["upstreams"]["gone"].startswith("error: unreachable")
