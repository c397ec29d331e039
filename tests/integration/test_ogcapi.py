"""OGC API - Tiles (``/ogcapi``): documents, links, TileMatrixSets, tiles, errors, OWSLib."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import morecantile
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from owslib.ogcapi.maps import Maps
from owslib.util import http_get
from PIL import Image

from gateway.app import create_app
from gateway.config import parse_config
from gateway.services.http import negotiate
from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream

ESSEN = [6.9, 51.4, 7.1, 51.5]
JSON = "application/json"
TILES_CONF = "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/"
TILING_SCHEME = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"
UTM32 = {
    "crs": "EPSG:25832",
    "extent": [280000.0, 5200000.0, 920000.0, 6100000.0],
    "tile_size": 512,
    "minzoom": 0,
    "maxzoom": 8,
}
AiohttpClient = Callable[[web.Application], Awaitable[TestClient]]


def layer(url: str, **extra: object) -> dict[str, object]:
    """A layer with metatiles off, so each tile is one exportImage call of its own bbox."""
    return {"url": url, "formats": ["png", "jpg"], "meta_size": [1, 1], **extra}


def origin(client: TestClient) -> str:
    return f"http://{client.host}:{client.port}"


async def get_json(client: TestClient, path: str, **kwargs: Any) -> Any:
    response = await client.get(path, **kwargs)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == JSON
    assert response.headers["Cache-Control"] == "public, max-age=60"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    return await response.json()


def links(document: dict[str, Any], rel: str) -> list[dict[str, Any]]:
    return [item for item in document["links"] if item["rel"] == rel]


def href(document: dict[str, Any], rel: str) -> str:
    (found,) = links(document, rel)
    return str(found["href"])


async def custom_gateway(aiohttp_client: AiohttpClient, url: str) -> TestClient:
    """Layer ``fake`` (Essen bounds, png+jpg, a custom 512-pixel UTM set and its ``_2x``,
    WebMercatorQuad, WGS1984Quad) and layer ``world`` (png only, default sets)."""
    config = parse_config(
        {
            "tile_matrix_sets": {"UTM32N": UTM32},
            "layers": {
                "fake": layer(
                    url,
                    title="Essen",
                    attribution="Stadt Essen",
                    bounds=ESSEN,
                    minzoom=2,
                    maxzoom=10,
                    tile_matrix_sets=["WebMercatorQuad", "WGS1984Quad", "UTM32N", "UTM32N_2x"],
                ),
                "world": layer(url, formats=["png"]),
            },
        }
    )
    return await aiohttp_client(create_app(config))


# -- landing page, conformance, collections ----------------------------------------------------


async def test_landing_page_links_are_absolute_and_resolve(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    base = origin(client)
    landing = await get_json(client, "/ogcapi")
    assert landing["title"] == "tile-gateway"
    assert landing["description"]
    assert href(landing, "self") == f"{base}/ogcapi"
    assert href(landing, "conformance") == f"{base}/ogcapi/conformance"
    assert href(landing, "data") == f"{base}/ogcapi/collections"
    schemes = href(landing, "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes")
    assert schemes == f"{base}/ogcapi/tileMatrixSets"
    for item in landing["links"]:
        assert item["type"] == JSON
        await get_json(client, item["href"].removeprefix(base))
    # OWSLib asks for the landing page with a trailing slash.
    assert await get_json(client, "/ogcapi/") == landing
    assert await get_json(client, "/ogcapi?f=json") == landing


async def test_conformance_claims_only_the_formats_offered(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    png_only = await make_gateway({"a": layer(fake_upstream.url, formats=["png"])})
    claimed = (await get_json(png_only, "/ogcapi/conformance"))["conformsTo"]
    for name in ("core", "tileset", "tilesets-list", "geodata-tilesets", "png"):
        assert TILES_CONF + name in claimed
    assert TILES_CONF + "jpeg" not in claimed
    assert TILES_CONF + "oas30" not in claimed  # there is no OpenAPI document
    assert "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset" in claimed

    jpg_only = await make_gateway({"a": layer(fake_upstream.url, formats=["jpg"])})
    claimed = (await get_json(jpg_only, "/ogcapi/conformance"))["conformsTo"]
    assert TILES_CONF + "jpeg" in claimed and TILES_CONF + "png" not in claimed


async def test_collections_describe_each_layer(
    aiohttp_client: AiohttpClient, fake_upstream: FakeUpstream
) -> None:
    client = await custom_gateway(aiohttp_client, fake_upstream.url)
    base = origin(client)
    listing = await get_json(client, "/ogcapi/collections")
    assert href(listing, "self") == f"{base}/ogcapi/collections"
    assert [c["id"] for c in listing["collections"]] == ["fake", "world"]
    fake = await get_json(client, "/ogcapi/collections/fake")
    assert fake == listing["collections"][0]
    assert fake["title"] == "Essen" and fake["dataType"] == "map"
    assert fake["attribution"] == "Stadt Essen"
    assert fake["extent"]["spatial"] == {
        "bbox": [ESSEN],
        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
    }
    assert href(fake, "self") == f"{base}/ogcapi/collections/fake"
    tilesets = href(fake, "http://www.opengis.net/def/rel/ogc/1.0/tilesets-map")
    assert tilesets == f"{base}/ogcapi/collections/fake/map/tiles"
    world = await get_json(client, "/ogcapi/collections/world")
    assert "extent" not in world  # the fake upstream publishes no extent


# -- TileMatrixSets ---------------------------------------------------------------------------


async def test_tile_matrix_sets_are_those_some_layer_uses(
    aiohttp_client: AiohttpClient, fake_upstream: FakeUpstream
) -> None:
    client = await custom_gateway(aiohttp_client, fake_upstream.url)
    base = origin(client)
    listing = await get_json(client, "/ogcapi/tileMatrixSets")
    ids = [item["id"] for item in listing["tileMatrixSets"]]
    assert ids == [
        "WebMercatorQuad",
        "WGS1984Quad",
        "UTM32N",
        "UTM32N_2x",
        "WorldCRS84Quad",
        "WebMercatorQuad_2x",
        "WorldCRS84Quad_2x",
        "WGS1984Quad_2x",
    ]
    for item in listing["tileMatrixSets"]:
        assert href(item, "self") == f"{base}/ogcapi/tileMatrixSets/{item['id']}"
        definition = await get_json(client, href(item, "self").removeprefix(base))
        assert definition["id"] == item["id"]
    uris = {item["id"]: item.get("uri") for item in listing["tileMatrixSets"]}
    assert uris["WebMercatorQuad"] == (
        "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
    )
    assert uris["WGS1984Quad"] is None and uris["UTM32N"] is None
    assert uris["WebMercatorQuad_2x"] is None


async def test_wgs1984quad_definition_is_morecantiles_in_lat_lon_order(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    served = await get_json(client, "/ogcapi/tileMatrixSets/WGS1984Quad")
    expected = morecantile.tms.get("WGS1984Quad").model_dump(mode="json", exclude_none=True)
    # morecantile names WorldCRS84Quad's register URI for it; CRS84 is lon/lat, this set is not.
    assert expected.pop("uri").endswith("/WorldCRS84Quad")
    assert served == expected
    assert served["crs"] == "http://www.opengis.net/def/crs/EPSG/0/4326"
    assert served["orderedAxes"] == ["Lat", "Lon"]
    for matrix in served["tileMatrices"]:
        assert matrix["pointOfOrigin"] == [90, -180]
    assert served["tileMatrices"][0]["matrixWidth"] == 2
    assert served["tileMatrices"][0]["matrixHeight"] == 1

    mercator = await get_json(client, "/ogcapi/tileMatrixSets/WebMercatorQuad")
    assert mercator == morecantile.tms.get("WebMercatorQuad").model_dump(
        mode="json", exclude_none=True
    )


async def test_2x_definition_has_512_pixel_tiles_and_half_the_scale(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    base = await get_json(client, "/ogcapi/tileMatrixSets/WebMercatorQuad")
    retina = await get_json(client, "/ogcapi/tileMatrixSets/WebMercatorQuad_2x")
    assert retina["id"] == "WebMercatorQuad_2x" and "uri" not in retina
    assert retina["crs"] == base["crs"]
    assert len(retina["tileMatrices"]) == len(base["tileMatrices"]) == 25
    for big, small in zip(retina["tileMatrices"], base["tileMatrices"], strict=True):
        assert (big["tileWidth"], big["tileHeight"]) == (512, 512)
        assert big["scaleDenominator"] == pytest.approx(small["scaleDenominator"] / 2, rel=1e-12)
        assert big["cellSize"] == pytest.approx(small["cellSize"] / 2, rel=1e-12)
        for key in ("id", "pointOfOrigin", "matrixWidth", "matrixHeight"):
            assert big[key] == small[key]


@pytest.mark.parametrize("identifier", ["Nope", "UTM31WGS84Quad", "WorldCRS84Quad"])
async def test_unknown_or_unused_tile_matrix_set_is_404(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, identifier: str
) -> None:
    # WorldCRS84Quad is built in, but no layer here is served in it.
    client = await make_gateway(
        {"fake": layer(fake_upstream.url, tile_matrix_sets=["WebMercatorQuad"])}
    )
    response = await client.get(f"/ogcapi/tileMatrixSets/{identifier}")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == 404


# -- tilesets ------------------------------------------------------------------------------------


async def test_tilesets_list_one_map_tileset_per_tile_matrix_set(
    aiohttp_client: AiohttpClient, fake_upstream: FakeUpstream
) -> None:
    client = await custom_gateway(aiohttp_client, fake_upstream.url)
    base = origin(client)
    listing = await get_json(client, "/ogcapi/collections/fake/map/tiles")
    assert href(listing, "self") == f"{base}/ogcapi/collections/fake/map/tiles"
    ids = ["WebMercatorQuad", "WGS1984Quad", "UTM32N", "UTM32N_2x"]
    assert [href(t, "self").rsplit("/", 1)[1] for t in listing["tilesets"]] == ids
    crs = {
        "WebMercatorQuad": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "WGS1984Quad": "http://www.opengis.net/def/crs/EPSG/0/4326",
        "UTM32N": "http://www.opengis.net/def/crs/EPSG/0/25832",
        "UTM32N_2x": "http://www.opengis.net/def/crs/EPSG/0/25832",
    }
    for identifier, summary in zip(ids, listing["tilesets"], strict=True):
        assert summary["dataType"] == "map"
        assert summary["crs"] == crs[identifier]
        assert href(summary, TILING_SCHEME) == f"{base}/ogcapi/tileMatrixSets/{identifier}"
        full = await get_json(client, href(summary, "self").removeprefix(base))
        assert {k: v for k, v in full.items() if k in summary and k != "links"} == {
            k: v for k, v in summary.items() if k != "links"
        }
    # Only a set in the OGC register has a tileMatrixSetURI.
    uris = [t.get("tileMatrixSetURI") for t in listing["tilesets"]]
    assert uris == [
        "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad",
        None,
        None,
        None,
    ]


@pytest.mark.parametrize("identifier", ["WebMercatorQuad", "WGS1984Quad"])
async def test_tileset_limits_follow_the_data_extent(
    aiohttp_client: AiohttpClient, fake_upstream: FakeUpstream, identifier: str
) -> None:
    client = await custom_gateway(aiohttp_client, fake_upstream.url)
    doc = await get_json(client, f"/ogcapi/collections/fake/map/tiles/{identifier}")
    assert doc["boundingBox"] == {
        "lowerLeft": ESSEN[:2],
        "upperRight": ESSEN[2:],
        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
    }
    assert doc["mediaTypes"] == ["image/png", "image/jpeg"]
    assert doc["attribution"] == "Stadt Essen"
    limits = doc["tileMatrixSetLimits"]
    assert [entry["tileMatrix"] for entry in limits] == [str(z) for z in range(2, 11)]
    # Both sets are lon/lat-aligned: the corner tiles of the bounds are the limits.
    tms = morecantile.tms.get(identifier)
    west, south, east, north = ESSEN
    for entry in limits:
        z = int(entry["tileMatrix"])
        top_left, bottom_right = tms.tile(west, north, z), tms.tile(east, south, z)
        assert (entry["minTileCol"], entry["minTileRow"]) == (top_left.x, top_left.y), entry
        assert (entry["maxTileCol"], entry["maxTileRow"]) == (bottom_right.x, bottom_right.y)
    assert limits[-1]["maxTileCol"] > limits[-1]["minTileCol"]  # z=10 spans several columns


async def test_tileset_item_templates_give_tiles_of_the_sets_size(
    aiohttp_client: AiohttpClient, fake_upstream: FakeUpstream
) -> None:
    client = await custom_gateway(aiohttp_client, fake_upstream.url)
    base = origin(client)
    sizes = {"WebMercatorQuad": 256, "WGS1984Quad": 256, "UTM32N": 512, "UTM32N_2x": 1024}
    for identifier, size in sizes.items():
        doc = await get_json(client, f"/ogcapi/collections/fake/map/tiles/{identifier}")
        root = f"{base}/ogcapi/collections/fake/map/tiles/{identifier}"
        assert href(doc, "self") == root
        items = links(doc, "item")
        assert [(i["type"], i["templated"]) for i in items] == [
            ("image/png", True),
            ("image/jpeg", True),
        ]
        assert [i["href"] for i in items] == [
            f"{root}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}?f=png",
            f"{root}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}?f=jpg",
        ]
        limit = doc["tileMatrixSetLimits"][-1]  # the deepest TileMatrix, inside the data
        for item, fmt in zip(items, ("PNG", "JPEG"), strict=True):
            url = item["href"].format(
                tileMatrix=limit["tileMatrix"],
                tileRow=limit["maxTileRow"],
                tileCol=limit["minTileCol"],
            )
            response = await client.get(url.removeprefix(base))
            assert response.status == 200, (url, await response.text())
            assert response.headers["Content-Type"] == item["type"]
            assert "Vary" not in response.headers  # f= fixes the format
            image = Image.open(io.BytesIO(await response.read()))
            assert (image.format, image.size) == (fmt, (size, size)), identifier


# -- tiles -------------------------------------------------------------------------------------


async def test_tiles_share_cache_entries_with_xyz(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    tiles = "/ogcapi/collections/fake/map/tiles"
    # XYZ z/x/y = 3/4/2 is TileMatrix 3, TileRow 2, TileCol 4: row comes first in OGC API.
    xyz = await client.get("/tiles/fake/3/4/2.png")
    assert xyz.headers["X-Cache"] == "MISS"
    ogc = await client.get(f"{tiles}/WebMercatorQuad/3/2/4?f=png")
    assert ogc.status == 200 and ogc.headers["X-Cache"] == "HIT"
    assert await ogc.read() == await xyz.read()
    assert ogc.headers["ETag"] == xyz.headers["ETag"]
    bounds = morecantile.tms.get("WebMercatorQuad").xy_bounds(morecantile.Tile(4, 2, 3))
    sent = [float(v) for v in fake_upstream.queries[0]["bbox"].split(",")]
    assert sent == pytest.approx([bounds.left, bounds.bottom, bounds.right, bounds.top])

    # A _2x tile is the @2x tile of its base set: OGC API first, then XYZ, one upstream call.
    retina = await client.get(f"{tiles}/WebMercatorQuad_2x/2/1/3?f=jpg")
    assert retina.headers["X-Cache"] == "MISS"
    assert Image.open(io.BytesIO(await retina.read())).size == (512, 512)
    assert (await client.get("/tiles/fake/2/3/1@2x.jpg")).headers["X-Cache"] == "HIT"
    assert (await client.get("/tiles/fake/WebMercatorQuad_2x/2/3/1.jpg")).headers[
        "X-Cache"
    ] == "HIT"

    # Another set: the XYZ route with a TileMatrixSet shares it too.
    assert (await client.get(f"{tiles}/WGS1984Quad/2/1/5")).headers["X-Cache"] == "MISS"
    assert (await client.get("/tiles/fake/WGS1984Quad/2/5/1.png")).headers["X-Cache"] == "HIT"
    assert len(fake_upstream.queries) == 3
    assert [q["size"] for q in fake_upstream.queries] == ["256,256", "512,512", "256,256"]


@pytest.mark.parametrize(
    ("accept", "offered", "chosen"),
    [
        ("image/png", ("image/png", "image/jpeg"), "image/png"),
        ("image/jpeg", ("image/png", "image/jpeg"), "image/jpeg"),
        ("image/*", ("image/png", "image/jpeg"), "image/png"),
        ("*/*", ("image/jpeg", "image/png"), "image/jpeg"),
        ("image/png;q=0.5, image/jpeg", ("image/png", "image/jpeg"), "image/jpeg"),
        ("IMAGE/JPEG ; Q=0.9, image/*;q=0.1", ("image/png", "image/jpeg"), "image/jpeg"),
        ("image/*, image/png;q=0", ("image/png", "image/jpeg"), "image/jpeg"),
        ("image/webp,image/apng,image/*,*/*;q=0.8", ("image/png",), "image/png"),
        ("image/png;q=oops", ("image/png",), "image/png"),
        ("image/webp", ("image/png", "image/jpeg"), None),
        ("application/json", ("image/png",), None),
        ("*/*;q=0", ("image/png",), None),
        ("text/html,application/xhtml+xml,*/*;q=0.8", ("application/json",), "application/json"),
        ("text/html", ("application/json",), None),
    ],
)
def test_negotiate_follows_rfc_9110_weights(
    accept: str, offered: tuple[str, ...], chosen: str | None
) -> None:
    assert negotiate(accept, offered) == chosen


@pytest.mark.parametrize(
    ("query", "headers", "status", "content_type", "vary"),
    [
        ("", {}, 200, "image/png", True),
        ("", {"Accept": "image/jpeg"}, 200, "image/jpeg", True),
        ("", {"Accept": "image/png;q=0.2, image/jpeg;q=0.9"}, 200, "image/jpeg", True),
        ("", {"Accept": "image/webp"}, 406, "application/json", False),
        ("", {"Accept": "application/json"}, 406, "application/json", False),
        ("?f=jpg", {"Accept": "image/png"}, 200, "image/jpeg", False),
        ("?f=JPEG", {}, 200, "image/jpeg", False),
        ("?f=gif", {}, 400, "application/json", False),
        ("?f=json", {}, 400, "application/json", False),
    ],
)
async def test_tile_format_from_f_or_accept(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    query: str,
    headers: dict[str, str],
    status: int,
    content_type: str,
    vary: bool,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    path = f"/ogcapi/collections/fake/map/tiles/WebMercatorQuad/1/0/1{query}"
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].split(";")[0] == content_type
    assert (response.headers.get("Vary") == "Accept") is vary
    if status != 200:
        assert (await response.json())["error"]["code"] == status
        assert fake_upstream.queries == []


async def test_f_names_a_format_the_layer_must_offer(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"png": layer(fake_upstream.url, formats=["png"])})
    path = "/ogcapi/collections/png/map/tiles/WebMercatorQuad/0/0/0"
    assert (await client.get(f"{path}?f=jpg")).status == 400
    assert (await client.get(path, headers={"Accept": "image/jpeg"})).status == 406
    assert (await client.get(path, headers={"Accept": "image/jpeg, */*;q=0.1"})).status == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ogcapi/collections/nope", 404),
        ("/ogcapi/collections/nope/map/tiles", 404),
        ("/ogcapi/collections/nope/map/tiles/WebMercatorQuad", 404),
        ("/ogcapi/collections/nope/map/tiles/WebMercatorQuad/0/0/0", 404),
        ("/ogcapi/collections/fake/map/tiles/Nope", 404),
        ("/ogcapi/collections/fake/map/tiles/Nope/0/0/0", 404),
        ("/ogcapi/collections/fake/map/tiles/WorldCRS84Quad", 404),  # not served by the layer
        ("/ogcapi/collections/fake/map/tiles/WorldCRS84Quad/0/0/0", 404),
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/1/0/1", 404),  # below minzoom
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/11/0/0", 404),  # above maxzoom
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/25/0/0", 404),  # not in the set
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/8/4", 404),  # TileRow 8 of 8
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/2/8", 404),  # TileCol 8 of 8
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/0/0", 404),  # outside limits
        ("/ogcapi/collections/fake/map/tiles/WGS1984Quad/3/2/16", 404),  # TileCol 16 of 16
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/a/0/0", 400),
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/-1/0", 400),
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/2/4.png", 400),
        ("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/2/4/5", 404),
        ("/ogcapi/nowhere", 404),
    ],
)
async def test_unknown_and_out_of_range_get_json_errors(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, path: str, status: int
) -> None:
    client = await make_gateway(
        {
            "fake": layer(
                fake_upstream.url,
                bounds=ESSEN,
                minzoom=2,
                maxzoom=10,
                tile_matrix_sets=["WebMercatorQuad", "WGS1984Quad"],
            )
        }
    )
    response = await client.get(path)
    assert response.status == status
    assert response.headers["Content-Type"].startswith(JSON)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    error = (await response.json())["error"]
    assert error["code"] == status and error["message"]
    assert fake_upstream.queries == []
    # The tile inside the limits at that level is served: 3/0/0 failed for its place only.
    inside = await client.get("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/3/2/4")
    assert inside.status == 200


async def test_upstream_failure_is_a_json_502(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour = "http500"
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.get("/ogcapi/collections/fake/map/tiles/WebMercatorQuad/0/0/0")
    assert response.status == 502
    assert response.headers["Cache-Control"] == "no-store"
    text = await response.text()
    error = (await response.json())["error"]
    assert error["layer"] == "fake" and error["upstream"] == {"code": 500, "message": "HTTP 500"}
    assert "127.0.0.1" not in text and "exportImage" not in text


# -- documents: formats, public URLs, CORS -------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("?f=json", {}, 200),
        ("?f=JSON", {"Accept": "text/html"}, 200),  # f wins over Accept
        ("", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, 200),  # a browser
        ("", {"Accept": "application/geo+json, application/json"}, 200),  # GDAL
        ("?f=html", {}, 400),
        ("", {"Accept": "text/html"}, 406),
        ("", {"Accept": "application/json;q=0"}, 406),
    ],
)
async def test_documents_are_json_only(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    query: str,
    headers: dict[str, str],
    status: int,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    for path in ("/ogcapi", "/ogcapi/collections/fake/map/tiles/WebMercatorQuad"):
        response = await client.get(path + query, headers=headers)
        assert response.status == status, path
        assert response.headers["Content-Type"].startswith(JSON)


@pytest.mark.parametrize(
    ("server", "headers", "expected"),
    [
        ({"public_url": "https://maps.example.org/gw"}, {"X-Forwarded-Host": "evil"}, None),
        (
            {"trust_proxy": True},
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "t.example",
                "X-Forwarded-Prefix": "/p",
            },
            "https://t.example/p",
        ),
        ({}, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"}, "origin"),
    ],
)
async def test_every_link_uses_the_public_base(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    server: dict[str, Any],
    headers: dict[str, str],
    expected: str | None,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)}, **server)
    base = {None: "https://maps.example.org/gw", "origin": origin(client)}.get(expected, expected)
    paths = [
        "/ogcapi",
        "/ogcapi/tileMatrixSets",
        "/ogcapi/collections",
        "/ogcapi/collections/fake",
        "/ogcapi/collections/fake/map/tiles",
        "/ogcapi/collections/fake/map/tiles/WorldCRS84Quad_2x",
    ]
    hrefs = []
    for path in paths:
        document = await get_json(client, path, headers=headers)
        hrefs += [item["href"] for item in document.get("links", [])]
        for key in ("collections", "tilesets", "tileMatrixSets"):
            for entry in document.get(key, []):
                hrefs += [item["href"] for item in entry["links"]]
    assert len(hrefs) > 20
    for url in hrefs:
        assert url == f"{base}/ogcapi" or url.startswith(f"{base}/ogcapi/"), url


async def test_cors_header_on_every_answer(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url)}, cors_allow_origin="https://maps.example.org"
    )
    tiles = "/ogcapi/collections/fake/map/tiles"
    for path in (
        "/ogcapi",
        "/ogcapi/conformance",
        "/ogcapi/tileMatrixSets",
        "/ogcapi/tileMatrixSets/WGS1984Quad",
        "/ogcapi/collections",
        "/ogcapi/collections/fake",
        tiles,
        f"{tiles}/WebMercatorQuad",
        f"{tiles}/WebMercatorQuad/0/0/0",
        f"{tiles}/WebMercatorQuad/0/0/1",  # 404
        f"{tiles}/WebMercatorQuad/0/0/0?f=gif",  # 400
        "/tiles/fake/tilejson.json",
    ):
        response = await client.get(path)
        assert response.headers["Access-Control-Allow-Origin"] == "https://maps.example.org", path


# -- a real client -----------------------------------------------------------------------------


async def test_owslib_reads_the_api_of_a_gateway_process(gateway_url: str) -> None:
    """OWSLib 0.35 has no OGC API - Tiles class (no ``owslib.ogcapi.tiles``); its generic
    OGC API client and its Maps class (which lists collections with a ``map`` link) read the
    landing page, conformance and collections, and its HTTP helper follows the links."""

    def read() -> tuple[dict[str, Any], list[str], dict[str, Any], dict[str, Any], bytes]:
        api = Maps(f"{gateway_url}/ogcapi")
        collection = api.collection("rgb")
        tilesets_url = href(collection, "http://www.opengis.net/def/rel/ogc/1.0/tilesets-map")
        listing = http_get(tilesets_url).json()
        (mercator,) = [
            t for t in listing["tilesets"] if href(t, TILING_SCHEME).endswith("/WebMercatorQuad")
        ]
        tileset = http_get(href(mercator, "self")).json()
        # The tile under the middle of the data at TileMatrix 8 (the corners are no-data).
        west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
        middle = ((west + east) / 2, (south + north) / 2)
        tile = morecantile.tms.get("WebMercatorQuad").tile(*middle, 8)
        (limit,) = [t for t in tileset["tileMatrixSetLimits"] if t["tileMatrix"] == "8"]
        assert limit["minTileCol"] <= tile.x <= limit["maxTileCol"]
        assert limit["minTileRow"] <= tile.y <= limit["maxTileRow"]
        (item,) = links(tileset, "item")
        url = item["href"].format(tileMatrix=8, tileRow=tile.y, tileCol=tile.x)
        response = http_get(url)
        response.raise_for_status()
        return api.conformance(), api.maps(), collection, tileset, response.content

    conformance, maps, collection, tileset, tile = await asyncio.to_thread(read)
    assert TILES_CONF + "core" in conformance["conformsTo"]
    assert maps == ["bluemarble", "rgb"]
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    assert -79.0 < west < east < -76.5 and 23.5 < south < north < 25.6  # Bahamas
    assert tileset["tileMatrixSetURI"].endswith("/WebMercatorQuad")
    image = Image.open(io.BytesIO(tile)).convert("RGBA")
    assert image.size == (256, 256)
    assert image.getextrema()[3][1] == 255  # real imagery from the reference ImageServer
