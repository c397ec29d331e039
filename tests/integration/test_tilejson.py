"""TileJSON 3.0.0 (``/tiles/<layer>/tilejson.json``): field values, absolute URLs, errors."""

from __future__ import annotations

import io

import morecantile
import pytest
import rasterio
from aiohttp.test_utils import TestClient
from PIL import Image
from pyproj import Transformer
from rasterio.warp import transform_bounds

from gateway.services.http import DocumentCache
from tests.conftest import DATA, MakeGateway
from tests.integration.conftest import FakeUpstream

MERCATOR_LAT = 85.0511287798066
ESSEN = [6.9, 51.4, 7.1, 51.5]


def layer(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "formats": ["png", "jpg"], **extra}


def origin(client: TestClient) -> str:
    return f"http://{client.host}:{client.port}"


async def get_tilejson(client: TestClient, path: str, **kwargs: object) -> dict[str, object]:
    response = await client.get(path, **kwargs)  # type: ignore[arg-type]
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "public, max-age=60"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    return await response.json()


async def test_fields_of_a_layer_with_configured_bounds(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {
            "essen": layer(
                fake_upstream.url,
                title="Essen orthophotos",
                attribution='© Stadt Essen <a href="x">&</a>',
                bounds=ESSEN,
                minzoom=2,
                maxzoom=14,
            )
        }
    )
    doc = await get_tilejson(client, "/tiles/essen/tilejson.json")
    assert doc["tilejson"] == "3.0.0"
    assert doc["tiles"] == [f"{origin(client)}/tiles/essen/{{z}}/{{x}}/{{y}}.png"]
    assert doc["name"] == "Essen orthophotos"
    assert doc["description"] == "Tiles of ArcGIS Image Services through exportImage"
    assert doc["vector_layers"] == []
    assert doc["scheme"] == "xyz"
    assert (doc["minzoom"], doc["maxzoom"]) == (2, 14)
    assert doc["bounds"] == ESSEN
    assert doc["attribution"] == "© Stadt Essen &lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"

    # Center: the middle of the bounds in Web Mercator metres, back to lon/lat.
    to_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (x0, x1), (y0, y1) = to_3857.transform([6.9, 7.1], [51.4, 51.5])
    lon, lat = to_3857.transform((x0 + x1) / 2, (y0 + y1) / 2, direction="INVERSE")
    # Zoom: the deepest level where the larger span (x: 22 264 m) fits in one tile's width,
    # 40 075 017 m / 2**z: 2**10 * 22 264 m < 40 075 017 m < 2**11 * 22 264 m.
    assert doc["center"] == [pytest.approx(lon, abs=1e-6), pytest.approx(lat, abs=1e-6), 10]
    assert 51.4 < doc["center"][1] < 51.5 and doc["center"][1] != pytest.approx(51.45, abs=1e-5)

    # The template works: the tile under the center, at the center zoom, has data.
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, 10)
    url = doc["tiles"][0].format(z=10, x=tile.x, y=tile.y).removeprefix(origin(client))
    response = await client.get(url)
    assert response.status == 200 and response.headers["X-Cache"] == "MISS"
    assert Image.open(io.BytesIO(await response.read())).size == (256, 256)
    assert len(fake_upstream.queries) == 1  # the TileJSON itself cost no upstream call


async def test_format_and_scale_choose_the_template(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {"both": layer(fake_upstream.url, formats=["jpg", "png"]), "png": layer(fake_upstream.url)}
    )
    base = origin(client)
    cases = {
        "/tiles/both/tilejson.json": f"{base}/tiles/both/{{z}}/{{x}}/{{y}}.jpg",
        "/tiles/both/tilejson.json?format=png": f"{base}/tiles/both/{{z}}/{{x}}/{{y}}.png",
        "/tiles/both/tilejson.json?format=JPEG": f"{base}/tiles/both/{{z}}/{{x}}/{{y}}.jpg",
        "/tiles/both/tilejson.json?scale=2&format=png": (
            f"{base}/tiles/both/{{z}}/{{x}}/{{y}}@2x.png"
        ),
        "/tiles/png/tilejson.json?scale=1": f"{base}/tiles/png/{{z}}/{{x}}/{{y}}.png",
    }
    for path, template in cases.items():
        assert (await get_tilejson(client, path))["tiles"] == [template], path

    retina = (await get_tilejson(client, "/tiles/both/tilejson.json?scale=2"))["tiles"][0]
    response = await client.get(retina.format(z=2, x=1, y=1).removeprefix(base))
    assert response.status == 200
    image = Image.open(io.BytesIO(await response.read()))
    assert (image.format, image.size) == ("JPEG", (512, 512))


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/tiles/nope/tilejson.json", 404),
        ("/tiles/geographic/tilejson.json", 404),  # not served in WebMercatorQuad
        ("/tiles/png/tilejson.json?format=jpg", 400),  # not offered by the layer
        ("/tiles/png/tilejson.json?format=gif", 400),
        ("/tiles/png/tilejson.json?scale=3", 400),
        ("/tiles/png/tilejson.json?scale=", 400),
    ],
)
async def test_errors_are_json(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, path: str, status: int
) -> None:
    client = await make_gateway(
        {
            "png": layer(fake_upstream.url, formats=["png"]),
            "geographic": layer(fake_upstream.url, tile_matrix_sets=["WGS1984Quad"]),
        }
    )
    response = await client.get(path)
    assert response.status == status
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    error = (await response.json())["error"]
    assert error["code"] == status and error["message"]


async def test_unknown_extent_gives_the_web_mercator_defaults(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    # The fake upstream's service info has no extent: every tile may hold data.
    client = await make_gateway(
        {
            "world": layer(fake_upstream.url, minzoom=3),
            "polar": layer(fake_upstream.url, bounds=[-10.0, -89.0, 10.0, 89.5]),
        }
    )
    world = await get_tilejson(client, "/tiles/world/tilejson.json")
    assert world["bounds"] == pytest.approx([-180, -MERCATOR_LAT, 180, MERCATOR_LAT], abs=1e-12)
    assert world["center"] == [0.0, 0.0, 3]  # zoom: the world fits one tile at 0, minzoom is 3
    polar = await get_tilejson(client, "/tiles/polar/tilejson.json")
    assert polar["bounds"] == pytest.approx([-10, -MERCATOR_LAT, 10, MERCATOR_LAT], abs=1e-12)
    assert polar["center"] == [0.0, 0.0, 0]


async def test_bounds_of_the_real_rgb_service(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    client = await make_gateway(
        {"rgb": {"url": f"{imageserver_url}/rgb/ImageServer", "formats": ["png"], "maxzoom": 12}}
    )
    doc = await get_tilejson(client, "/tiles/rgb/tilejson.json")
    with rasterio.open(DATA / "RGB.byte.tif") as source:
        expected = transform_bounds(source.crs, "EPSG:4326", *source.bounds, densify_pts=21)
    assert doc["bounds"] == pytest.approx(list(expected), abs=1e-3)
    west, south, east, north = doc["bounds"]
    lon, lat, zoom = doc["center"]
    assert west < lon < east and south < lat < north
    # ~2.4 degrees of longitude: one tile spans 360 / 2**z degrees, 2.81 at z=7, 1.41 at z=8.
    assert (zoom, doc["minzoom"], doc["maxzoom"]) == (7, 0, 12)


@pytest.mark.parametrize(
    ("server", "headers", "expected"),
    [
        (
            {"public_url": "https://maps.example.org/gw/"},
            {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"},
            "https://maps.example.org/gw",
        ),
        (
            {"trust_proxy": True},
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "tiles.example.com, inner.example",
                "X-Forwarded-Prefix": "base/",
            },
            "https://tiles.example.com/base",
        ),
        ({}, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}, None),
    ],
)
async def test_tiles_url_uses_the_public_base(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    server: dict[str, object],
    headers: dict[str, str],
    expected: str | None,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)}, **server)
    doc = await get_tilejson(client, "/tiles/fake/tilejson.json", headers=headers)
    base = expected or origin(client)  # untrusted X-Forwarded-* headers are ignored
    assert doc["tiles"] == [f"{base}/tiles/fake/{{z}}/{{x}}/{{y}}.png"]


async def test_documents_are_cached_per_public_base(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)}, trust_proxy=True)
    for host in ("a.example", "b.example", "a.example"):
        doc = await get_tilejson(
            client, "/tiles/fake/tilejson.json", headers={"X-Forwarded-Host": host}
        )
        assert doc["tiles"][0].startswith(f"http://{host}/tiles/fake/")


def test_document_cache_keeps_the_most_recently_used() -> None:
    cache = DocumentCache(size=2)
    built: list[str] = []

    def build(name: str) -> bytes:
        built.append(name)
        return name.encode()

    for key in ("a", "b", "a", "c", "a", "b"):
        assert cache.get(key, lambda key=key: build(key)).body == key.encode()
    # "b" was the least recently used when "c" came in, so only it was built twice.
    assert built == ["a", "b", "c", "b"]
