"""Per-request variants (styles and time) of a layer, end to end: what the upstream is asked
for each, that each has its own cache entries and ETag, and the 400s for what a layer does not
offer (``tiles.variants``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from lxml import etree
from PIL import Image

from gateway.seed import SeedOptions, run_seed
from gateway.services.http import PIPELINE
from tests.conftest import MakeGateway, gateway_config
from tests.integration import test_wmts
from tests.integration.conftest import FakeUpstream
from tests.integration.test_wmts import NS, assert_exception, find, texts

# The WMTS tests' fixture: the schemas (offline, with the ETS's fix of MaxTileRow/MaxTileCol).
schemas = test_wmts.schemas

# Epoch milliseconds (UTC) of the two NAIP acquisitions in tests/data.
T2010 = 1277769600000  # 2010-06-29
T2020 = 1598832000000  # 2020-08-31
STYLES = {
    "natural": {"title": "Natural colour", "bandIds": [0, 1, 2]},
    "falsecolor": {"title": "Colour infrared", "bandIds": [3, 0, 1]},
    "hillshade": {"rasterFunction": "Hillshade"},
    "ndvi": {
        "renderingRule": {"rasterFunction": "NDVI", "rasterFunctionArguments": {"VisibleBandID": 0}}
    },
}
TIME = {"values": ["2010-06-29", "2020-08-31"]}


def varied(url: str, **extra: Any) -> dict[str, Any]:
    """A layer with styles and time, metatiles off (one exportImage call per tile)."""
    return {
        "url": url,
        "formats": ["png"],
        "meta_size": [1, 1],
        "styles": STYLES,
        "time": TIME,
        **extra,
    }


async def test_each_variant_asks_the_upstream_its_parameters(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"v": varied(fake_upstream.url, export={"noData": 0})})
    asked: dict[str, dict[str, str]] = {}
    for query in (
        "",
        "?style=falsecolor",
        "?style=hillshade",
        "?style=ndvi&time=2010-06-29",
    ):
        before = len(fake_upstream.queries)
        response = await client.get(f"/tiles/v/3/4/2.png{query}")
        assert response.status == 200, await response.text()
        assert len(fake_upstream.queries) == before + 1
        asked[query] = dict(fake_upstream.queries[-1])
    # The default: the first style, the last time value.
    assert asked[""]["bandIds"] == "0,1,2"
    assert asked[""]["time"] == str(T2020)
    assert asked[""]["noData"] == "0"
    assert "renderingRule" not in asked[""]
    assert asked["?style=falsecolor"]["bandIds"] == "3,0,1"
    assert json.loads(asked["?style=hillshade"]["renderingRule"]) == {"rasterFunction": "Hillshade"}
    assert "bandIds" not in asked["?style=hillshade"]
    ndvi = asked["?style=ndvi&time=2010-06-29"]
    assert json.loads(ndvi["renderingRule"]) == STYLES["ndvi"]["renderingRule"]
    assert ndvi["time"] == str(T2010)
    assert ndvi["noData"] == "0"


async def test_an_interval_is_sent_as_two_instants(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    time = {"values": ["2010-01-01/2010-12-31T23:59:59Z", "2020-08-31"], "default": "2020-08-31"}
    client = await make_gateway({"v": varied(fake_upstream.url, time=time)})
    response = await client.get("/tiles/v/3/4/2.png?time=2010-01-01T00:00:00Z/2010-12-31T23:59:59Z")
    assert response.status == 200, await response.text()
    assert fake_upstream.queries[-1]["time"] == "1262304000000,1293839999000"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("", "?style=natural"),
        ("", "?style=default"),
        ("", "?time=2020-08-31T00:00:00Z"),
        ("?style=natural&time=2020-08-31", "?time=2020-08-31T00:00:00.000%2B00:00"),
        ("?time=2010-06-29", "?time=2010-06-29T02:00:00%2B02:00"),
        ("?style=falsecolor&time=2010-06-29", "?time=2010-06-29&style=falsecolor&other=1"),
    ],
)
async def test_equal_variants_share_one_entry(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, first: str, second: str
) -> None:
    client = await make_gateway({"v": varied(fake_upstream.url)})
    one = await client.get(f"/tiles/v/3/4/2.png{first}")
    assert one.status == 200, await one.text()
    two = await client.get(f"/tiles/v/3/4/2.png{second}")
    assert two.status == 200, await two.text()
    assert two.headers["X-Cache"] == "HIT"
    assert one.headers["ETag"] == two.headers["ETag"]
    assert len(fake_upstream.queries) == 1


async def test_variants_have_their_own_keys_and_etags(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    # The fake upstream answers the same bytes whatever the variant: only the keys keep the
    # variants apart, and the ETags differ all the same.
    client = await make_gateway(
        {"v": varied(fake_upstream.url)}, cache={"redis_url": redis_url, "prefix": key_prefix}
    )
    queries = ["", "?style=falsecolor", "?time=2010-06-29", "?style=falsecolor&time=2010-06-29"]
    etags = []
    for query in queries:
        response = await client.get(f"/tiles/v/3/4/2.png{query}")
        assert response.status == 200
        assert response.headers["X-Cache"] == "MISS"
        etags.append(response.headers["ETag"])
    assert len(set(etags)) == len(queries)
    keys = sorted(key.decode() for key in redis_client.scan_iter(match=f"{key_prefix}:v:*"))
    assert len(keys) == len(queries)
    variants = sorted(key.split(":")[2].partition("+")[2] for key in keys)
    assert variants == sorted(["", "s=falsecolor", f"t={T2010}", f"s=falsecolor,t={T2010}"])
    # A conditional request with another variant's ETag is no 304.
    again = await client.get(
        "/tiles/v/3/4/2.png?style=falsecolor", headers={"If-None-Match": etags[0]}
    )
    assert again.status == 200


@pytest.mark.parametrize(
    ("query", "parameter", "words"),
    [
        ("?style=nope", "style", "style 'nope' is not one of natural, falsecolor"),
        ("?style=Natural", "style", "style 'Natural' is not one of"),
        ("?time=2015-01-01", "time", "is not one of 2010-06-29, 2020-08-31"),
        ("?time=yesterday", "time", "time 'yesterday' is not an ISO 8601"),
        ("?time=2020-08-31/2010-06-29", "time", "ends before it starts"),
        ("?time=" + "9" * 5000, "time", "not an ISO 8601"),
    ],
)
async def test_what_the_layer_does_not_offer_is_a_json_400(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, query: str, parameter: str, words: str
) -> None:
    client = await make_gateway({"v": varied(fake_upstream.url)})
    response = await client.get(f"/tiles/v/3/4/2.png{query}")
    assert response.status == 400
    body = await response.json()
    assert body["error"]["code"] == 400
    assert body["error"]["parameter"] == parameter
    assert words in body["error"]["message"]
    assert response.headers["Cache-Control"] == "no-store"
    assert fake_upstream.queries == []


async def test_a_layer_without_variants_refuses_a_time_and_other_styles(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"plain": {"url": fake_upstream.url, "meta_size": [1, 1]}})
    assert (await client.get("/tiles/plain/3/4/2.png?style=default")).status == 200
    refused = await client.get("/tiles/plain/3/4/2.png?time=2020-08-31")
    assert refused.status == 400
    assert "no time dimension" in (await refused.json())["error"]["message"]
    other = await client.get("/tiles/plain/3/4/2.png?style=falsecolor")
    assert other.status == 400
    assert (await other.json())["error"]["offered"] == ["default"]


async def test_max_variants_bounds_the_variants_served(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"v": varied(fake_upstream.url, max_variants=2)})
    for query in ("?style=falsecolor", "?time=2010-06-29", "", "?style=natural"):
        assert (await client.get(f"/tiles/v/3/4/2.png{query}")).status == 200
    refused = await client.get("/tiles/v/3/4/2.png?style=hillshade")
    assert refused.status == 400
    assert "max_variants" in (await refused.json())["error"]["message"]
    # Those already served still are.
    assert (await client.get("/tiles/v/3/5/2.png?style=falsecolor")).status == 200


async def test_a_style_naming_a_function_the_service_lacks_is_logged(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fake_upstream.info["rasterFunctionInfos"] = [{"name": "None"}, {"name": "Hillshade"}]
    with caplog.at_level("WARNING", logger="gateway.tiles.layer"):
        client = await make_gateway(
            {
                "v": varied(
                    fake_upstream.url, styles={**STYLES, "slope": {"rasterFunction": "Slope"}}
                )
            }
        )
        assert (await client.get("/tiles/v/3/4/2.png?style=slope")).status == 200
    warned = [r.getMessage() for r in caplog.records if r.name == "gateway.tiles.layer"]
    assert warned == [
        "layer v: style slope names the raster function 'Slope', which the service does not "
        "list (rasterFunctionInfos: Hillshade, None)"
    ]


async def test_a_request_outliving_its_layer_gets_the_new_layers_parameters(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    # A layer replaced (published again under its name) while a request of a variant it
    # served was under way: the new layer makes that variant's parameters from its token.
    client = await make_gateway({"v": varied(fake_upstream.url)})
    pipeline = client.app[PIPELINE]
    old = pipeline.layers["v"]
    tile = pipeline.resolve("v", "WebMercatorQuad", 3, 2, 4, "png", style="ndvi", time="2010-06-29")
    pipeline.add_layer(pipeline.build_layer("v", old.config))
    assert pipeline.layers["v"] is not old
    result = await pipeline.get_tile(tile)
    assert result.cache_status == "MISS"
    assert fake_upstream.queries[-1]["time"] == str(T2010)
    assert json.loads(fake_upstream.queries[-1]["renderingRule"])["rasterFunction"] == "NDVI"
    # One the new layer lacks falls back to its default's.
    other = pipeline.build_layer("v", old.config.model_copy(update={"styles": {}, "time": None}))
    assert other.variants.params(tile.variant) == other.variants.params("")


async def test_time_from_a_service_without_time_info_is_no_dimension(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="gateway.tiles.layer"):
        client = await make_gateway({"v": varied(fake_upstream.url, time={"from_service": True})})
        refused = await client.get("/tiles/v/3/4/2.png?time=2020-08-31")
    assert refused.status == 400
    assert "no time dimension" in (await refused.json())["error"]["message"]
    assert "time.from_service, but the service has no timeInfo" in caplog.text
    assert fake_upstream.queries == []


# -- WMTS: Styles, the Time Dimension, KVP and RESTful -----------------------------------------


async def test_capabilities_list_styles_and_the_time_dimension(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    client = await make_gateway(
        {
            "v": varied(fake_upstream.url, default_style="falsecolor", formats=["png", "jpg"]),
            "plain": {"url": fake_upstream.url},
        }
    )
    response = await client.get("/wmts?SERVICE=WMTS&REQUEST=GetCapabilities")
    root = etree.fromstring(await response.read())
    schemas["patched"].assertValid(root)
    layers = {texts(node, "ows:Identifier")[0]: node for node in root.iterfind(".//wmts:Layer", NS)}
    varied_layer = layers["v"]
    styles = varied_layer.findall("wmts:Style", NS)
    assert [texts(style, "ows:Identifier")[0] for style in styles] == list(STYLES)
    assert [style.get("isDefault") for style in styles] == [None, "true", None, None]
    # Title = Identifier (OpenLayers matches styles by title); the title is the abstract.
    assert texts(styles[1], "ows:Title") == ["falsecolor"]
    assert texts(styles[1], "ows:Abstract") == ["Colour infrared"]
    dimension = find(varied_layer, "wmts:Dimension")
    assert texts(dimension, "ows:Identifier") == ["Time"]
    assert texts(dimension, "ows:UOM") == ["ISO8601"]
    assert texts(dimension, "wmts:Default") == ["2020-08-31"]
    assert texts(dimension, "wmts:Value") == ["2010-06-29", "2020-08-31"]
    templates = [node.get("template") for node in varied_layer.iterfind("wmts:ResourceURL", NS)]
    assert templates and all(
        "/wmts/1.0.0/v/{Style}/{Time}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}." in t
        for t in templates
    )
    plain = layers["plain"]
    assert [texts(style, "ows:Identifier")[0] for style in plain.findall("wmts:Style", NS)] == [
        "default"
    ]
    assert plain.find("wmts:Dimension", NS) is None
    assert "{Time}" not in plain.find("wmts:ResourceURL", NS).get("template")


async def test_kvp_and_rest_tiles_of_a_style_and_time(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    plain = {"url": fake_upstream.url, "formats": ["png"], "meta_size": [1, 1]}
    client = await make_gateway({"v": varied(fake_upstream.url), "plain": plain})
    kvp = (
        "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=v&STYLE=falsecolor"
        "&FORMAT=image/png&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=3&TILEROW=2&TILECOL=4"
    )
    one = await client.get(kvp + "&TIME=2010-06-29")
    assert one.status == 200, await one.text()
    assert fake_upstream.queries[-1]["bandIds"] == "3,0,1"
    assert fake_upstream.queries[-1]["time"] == str(T2010)
    # The same tile by REST and by XYZ: one entry, one upstream call.
    rest = await client.get("/wmts/1.0.0/v/falsecolor/2010-06-29/WebMercatorQuad/3/2/4.png")
    xyz = await client.get("/tiles/v/3/4/2.png?style=falsecolor&time=2010-06-29")
    assert rest.status == xyz.status == 200
    assert rest.headers["X-Cache"] == xyz.headers["X-Cache"] == "HIT"
    assert one.headers["ETag"] == rest.headers["ETag"] == xyz.headers["ETag"]
    assert len(fake_upstream.queries) == 1
    # Without TIME (or with "default"), the Dimension's Default; STYLE=default, the default.
    for query in ("&TIME=default", ""):
        default = await client.get(kvp.replace("STYLE=falsecolor", "STYLE=default") + query)
        assert default.status == 200
    assert fake_upstream.queries[-1]["time"] == str(T2020)
    assert fake_upstream.queries[-1]["bandIds"] == "0,1,2"
    assert len(fake_upstream.queries) == 2
    # TIME on a layer without a Time Dimension is a parameter it does not know: ignored.
    other = kvp.replace("LAYER=v", "LAYER=plain").replace("STYLE=falsecolor", "STYLE=default")
    plain = await client.get(other + "&TIME=2010-06-29")
    assert plain.status == 200, await plain.text()
    assert "time" not in fake_upstream.queries[-1]
    assert len(fake_upstream.queries) == 3
    # The RESTful template without {Time} still answers the default time.
    assert (await client.get("/wmts/1.0.0/v/natural/WebMercatorQuad/3/2/4.png")).status == 200
    assert len(fake_upstream.queries) == 3


@pytest.mark.parametrize(
    ("query", "locator"),
    [("&STYLE=nope", "Style"), ("&STYLE=default&TIME=2015-01-01", "Time")],
)
async def test_kvp_refuses_unknown_styles_and_times(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    schemas: dict[str, etree.XMLSchema],
    query: str,
    locator: str,
) -> None:
    client = await make_gateway({"v": varied(fake_upstream.url)})
    kvp = (
        "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=v&FORMAT=image/png"
        "&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=3&TILEROW=2&TILECOL=4"
    )
    await assert_exception(
        await client.get(kvp + query), schemas, 400, "InvalidParameterValue", locator
    )
    rest = "/wmts/1.0.0/v/natural/2015-01-01/WebMercatorQuad/3/2/4.png"
    if locator == "Style":
        rest = "/wmts/1.0.0/v/nope/2010-06-29/WebMercatorQuad/3/2/4.png"
    await assert_exception(await client.get(rest), schemas, 404, "InvalidParameterValue", locator)
    assert fake_upstream.queries == []


# -- OGC API - Tiles and TileJSON -------------------------------------------------------------


async def test_ogcapi_styles_and_datetime(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    plain = {"url": fake_upstream.url, "formats": ["png"], "meta_size": [1, 1]}
    client = await make_gateway({"v": varied(fake_upstream.url), "plain": plain})
    collection = await (await client.get("/ogcapi/collections/v")).json()
    assert [style["id"] for style in collection["styles"]] == list(STYLES)
    assert collection["defaultStyle"] == "natural"
    assert collection["extent"]["temporal"]["interval"] == [
        ["2010-06-29", "2010-06-29"],
        ["2020-08-31", "2020-08-31"],
    ]
    tilesets = collection["styles"][1]["links"][0]["href"]
    assert tilesets.endswith("/ogcapi/collections/v/styles/falsecolor/map/tiles")
    listing = await (await client.get(tilesets.split(str(client.make_url("")))[-1])).json()
    tileset_href = listing["tilesets"][0]["links"][0]["href"]
    assert "/styles/falsecolor/map/tiles/WebMercatorQuad" in tileset_href
    conformance = await (await client.get("/ogcapi/conformance")).json()
    assert (
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/datetime" in conformance["conformsTo"]
    )
    tile = "/ogcapi/collections/v/styles/falsecolor/map/tiles/WebMercatorQuad/3/2/4?f=png"
    response = await client.get(tile + "&datetime=2010-06-29T00:00:00Z")
    assert response.status == 200, await response.text()
    assert fake_upstream.queries[-1]["bandIds"] == "3,0,1"
    assert fake_upstream.queries[-1]["time"] == str(T2010)
    # The same variant by XYZ: the same entry.
    xyz = await client.get("/tiles/v/3/4/2.png?style=falsecolor&time=2010-06-29")
    assert xyz.headers["X-Cache"] == "HIT"
    assert len(fake_upstream.queries) == 1
    missing = await client.get(tile.replace("falsecolor", "nope"))
    assert missing.status == 404
    assert (await client.get("/ogcapi/collections/v/styles/nope/map/tiles")).status == 404
    bad = await client.get(tile + "&datetime=2015-01-01")
    assert bad.status == 400
    assert "datetime" in (await bad.json())["error"]["message"]
    # A collection without a temporal extent ignores datetime.
    plain = "/ogcapi/collections/plain/map/tiles/WebMercatorQuad/3/2/4?f=png&datetime=2015-01-01"
    assert (await client.get(plain)).status == 200


async def test_tilejson_per_variant(make_gateway: MakeGateway, fake_upstream: FakeUpstream) -> None:
    client = await make_gateway({"v": varied(fake_upstream.url)})
    plain = await (await client.get("/tiles/v/tilejson.json")).json()
    assert plain["tiles"][0].endswith("/tiles/v/{z}/{x}/{y}.png")
    default = await (await client.get("/tiles/v/tilejson.json?style=natural")).json()
    assert default["tiles"] == plain["tiles"]
    styled = await (
        await client.get("/tiles/v/tilejson.json?style=falsecolor&time=2010-06-29T00:00:00Z")
    ).json()
    assert styled["tiles"][0].endswith("/tiles/v/{z}/{x}/{y}.png?style=falsecolor&time=2010-06-29")
    refused = await client.get("/tiles/v/tilejson.json?style=nope")
    assert refused.status == 400
    assert (await refused.json())["error"]["parameter"] == "style"


# -- seed and purge ------------------------------------------------------------------------------


def variant_keys(client: redis.Redis, prefix: str) -> dict[str, set[str]]:
    """The layer ``v``'s tile keys in Redis by variant token (``""`` for the default)."""
    found: dict[str, set[str]] = {}
    for raw in client.scan_iter(match=f"{prefix}:v:*"):
        key = raw.decode()
        found.setdefault(key.split(":")[2].partition("+")[2], set()).add(key)
    return found


async def test_seed_a_variant_then_purge_it_alone(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = {"redis_url": redis_url, "prefix": key_prefix, "purge_poll": 0.05}
    layers = {"v": varied(fake_upstream.url, maxzoom=6)}
    options = SeedOptions(
        "v", (0, 1), style="falsecolor", time="2010-06-29T00:00:00Z", state=tmp_path / "s.json"
    )
    assert await run_seed(gateway_config(layers, cache), options) == 0
    assert {q["bandIds"] for q in fake_upstream.queries} == {"3,0,1"}
    assert {q["time"] for q in fake_upstream.queries} == {str(T2010)}
    seeded = variant_keys(redis_client, key_prefix)
    assert set(seeded) == {f"s=falsecolor,t={T2010}"}
    assert len(seeded[f"s=falsecolor,t={T2010}"]) == 1 + 4

    # A gateway serves the seeded tiles as hits, and makes the default ones.
    client = await make_gateway(layers, cache)
    calls = len(fake_upstream.queries)
    hit = await client.get("/tiles/v/1/0/1.png?style=falsecolor&time=2010-06-29")
    assert hit.headers["X-Cache"] == "HIT"
    for x, y in ((0, 0), (0, 1), (1, 0), (1, 1)):
        assert (await client.get(f"/tiles/v/1/{x}/{y}.png")).status == 200
    assert len(fake_upstream.queries) == calls + 4

    # Purge the style alone (at every time): the default tiles stay.
    monkeypatch.setenv("TILE_GATEWAY_ADMIN_TOKEN", "t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    response = await client.post(
        "/admin/purge",
        json={"layer": "v", "tms": "WebMercatorQuad", "zoom": "0-1", "style": "falsecolor"},
        headers=auth,
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    # 5 tiles x 2 scales x 1 format x 2 time values of the style.
    assert body["keys"] == 20 and body["deleted"] == 5
    left = variant_keys(redis_client, key_prefix)
    assert set(left) == {""} and len(left[""]) == 4
    again = await client.get("/tiles/v/1/0/1.png?style=falsecolor&time=2010-06-29")
    assert again.headers["X-Cache"] == "MISS"

    # A partial purge naming no variant reaches every variant.
    response = await client.post(
        "/admin/purge", json={"layer": "v", "tms": "WebMercatorQuad", "zoom": "1"}, headers=auth
    )
    # 4 tiles x 2 scales x 4 styles x 2 time values; the 4 default tiles and 1 seeded again.
    assert await response.json() == {"layer": "v", "generation": None, "keys": 64, "deleted": 5}
    assert variant_keys(redis_client, key_prefix) == {}
    refused = await client.post(
        "/admin/purge", json={"layer": "v", "time": "1999-01-01"}, headers=auth
    )
    assert refused.status == 400
    assert "is not one of" in (await refused.json())["error"]["message"]

    # A seed of a style the layer does not offer is refused as bad arguments.
    capsys.readouterr()
    bad = SeedOptions("v", (0, 1), style="nope", state=tmp_path / "bad.json")
    assert await run_seed(gateway_config(layers, cache), bad) == 2
    assert "style 'nope' is not one of" in capsys.readouterr().err


# -- pixels from the reference ImageServer --------------------------------------------------


async def test_band_combinations_of_naip_differ_as_their_bands_do(
    make_gateway: MakeGateway, imageserver_url: str
) -> None:
    # NAIP holds R, G, B, NIR: the false-colour tile (NIR, R, G) has the natural tile's red
    # in its green channel and its green in its blue one, pixel for pixel.
    layer = {
        "url": f"{imageserver_url}/naip/ImageServer",
        "formats": ["png"],
        "styles": {"natural": STYLES["natural"], "falsecolor": STYLES["falsecolor"]},
    }
    client = await make_gateway({"naip": layer})
    z, x, y = 15, 7358, 11522  # inside the quarter-quad, near 47.02 N, 99.155 W

    async def rgba(query: str) -> np.ndarray:
        response = await client.get(f"/tiles/naip/{z}/{x}/{y}.png{query}")
        assert response.status == 200, await response.text()
        return np.asarray(Image.open(io.BytesIO(await response.read())).convert("RGBA"))

    natural, false = await rgba(""), await rgba("?style=falsecolor")
    assert natural.shape == false.shape == (256, 256, 4)
    inside = natural[..., 3] == 255
    assert inside.all()
    assert np.array_equal(false[..., 1][inside], natural[..., 0][inside])
    assert np.array_equal(false[..., 2][inside], natural[..., 1][inside])
    assert not np.array_equal(false[..., 0][inside], natural[..., 0][inside])
