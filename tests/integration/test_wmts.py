"""WMTS 1.0.0 end to end: the capabilities document against the official XSD and against
morecantile, the ETS's exception cases, tiles by KVP and RESTful, and one cache for every
protocol. Checklist A of ogc-interop.md section 6."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from pathlib import Path

import morecantile
import pytest
from lxml import etree
from PIL import Image
from pyproj import CRS, Transformer

from gateway.services.wmts import capabilities
from tests.conftest import REPO, MakeGateway
from tests.integration.conftest import FakeUpstream

# The repository's own copies of the OGC and W3C schemas (licence: tests/schemas/NOTICE.md).
SCHEMAS = REPO / "tests" / "schemas"
# libxml2 reads the catalog on its first schema import, so this must be set before any schema
# is loaded; the catalog maps schemas.opengis.net and w3.org onto the local copies (offline).
os.environ["XML_CATALOG_FILES"] = str(SCHEMAS / "catalog.xml")

NS = {
    "wmts": "http://www.opengis.net/wmts/1.0",
    "ows": "http://www.opengis.net/ows/1.1",
    "xlink": "http://www.w3.org/1999/xlink",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
ESSEN = [6.9, 51.4, 7.1, 51.5]  # west, south, east, north
PUBLIC = "https://maps.example.org/gw"
CAPS = "/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"
GET_TILE = {
    "SERVICE": "WMTS",
    "REQUEST": "GetTile",
    "VERSION": "1.0.0",
    "LAYER": "fake",
    "STYLE": "default",
    "FORMAT": "image/png",
    "TILEMATRIXSET": "WebMercatorQuad",
    "TILEMATRIX": "3",
    "TILEROW": "2",
    "TILECOL": "4",
}


def layer(url: str, **extra: object) -> dict[str, object]:
    """A layer with metatiles off, so each tile is one exportImage call of its own bbox."""
    return {"url": url, "formats": ["png", "jpg"], "meta_size": [1, 1], **extra}


def _parse_schema(path: Path) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(path), etree.XMLParser(no_network=True)))


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, etree.XMLSchema]:
    """``official`` and ``patched`` capabilities schemas and the OWS ``exception`` schema.

    The official wmtsGetCapabilities_response.xsd types MaxTileRow/MaxTileCol as
    positiveInteger, so TileMatrixLimits of a one-tile matrix (max 0) cannot validate: a bug,
    since the documentation next to it says "from minTileRow". The OGC ETS (ets-wmts10) ships a
    copy fixed to nonNegativeInteger; ``patched`` is the same fix, made in a temporary copy
    (the schemas of tests/schemas stay verbatim).
    """
    source = SCHEMAS / "opengis" / "wmts" / "1.0"
    if not source.is_dir():
        pytest.fail(f"the WMTS schemas are missing: {source}")
    copy = tmp_path_factory.mktemp("wmts-xsd")
    for xsd in source.glob("*.xsd"):
        shutil.copy(xsd, copy / xsd.name)
    response = copy / "wmtsGetCapabilities_response.xsd"
    text = response.read_text()
    for element in ("MaxTileRow", "MaxTileCol"):
        wrong = f'<element name="{element}" type="positiveInteger">'
        assert wrong in text
        text = text.replace(wrong, f'<element name="{element}" type="nonNegativeInteger">')
    response.write_text(text)
    return {
        "official": _parse_schema(source / "wmtsGetCapabilities_response.xsd"),
        "patched": _parse_schema(response),
        "exception": _parse_schema(
            SCHEMAS / "opengis" / "ows" / "1.1.0" / "owsExceptionReport.xsd"
        ),
    }


def texts(element: etree._Element, path: str) -> list[str]:
    return [node.text for node in element.iterfind(path, NS)]


def find(element: etree._Element, path: str) -> etree._Element:
    found = element.find(path, NS)
    assert found is not None, path
    return found


async def assert_exception(
    response: object,
    schemas: dict[str, etree.XMLSchema],
    status: int,
    code: str,
    locator: str | None,
) -> etree._Element:
    """The response is an ExceptionReport valid against owsExceptionReport.xsd with ``status``
    and, first, an exception ``code`` at ``locator``."""
    assert response.status == status, await response.text()  # type: ignore[attr-defined]
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["Content-Type"] == "application/xml"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Access-Control-Allow-Origin"] == "*"
    root = etree.fromstring(await response.read())  # type: ignore[attr-defined]
    schemas["exception"].assertValid(root)
    assert root.tag == f"{{{NS['ows']}}}ExceptionReport" and root.get("version") == "1.0.0"
    first = find(root, "ows:Exception")
    assert first.get("exceptionCode") == code
    assert first.get("locator") == locator
    assert find(first, "ows:ExceptionText").text
    return root


# -- the capabilities document ----------------------------------------------------------------


async def test_capabilities_are_one_valid_document_for_every_way_of_asking(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, bounds=ESSEN, maxzoom=6)})
    paths = [
        CAPS,
        "/wmts?service=WMTS&request=GetCapabilities&version=1.0.0",  # OWSLib
        "/wmts?Request=GetCapabilities&sErViCe=WMTS&AcceptVersions=1.0.0",
        "/wmts?SERVICE=WMTS&service=ignored&REQUEST=GetCapabilities",  # the first name wins
        "/wmts?SERVICE=WMS&REQUEST=GetCapabilities",  # QGIS given a bare URL
        "/wmts",
        "/wmts/1.0.0/WMTSCapabilities.xml",
        "/wmts/1.0.0/WMTSCapabilities.xml?service=WMTS&request=GetCapabilities&version=1.0.0",
        "/wmts?SERVICE=WMTS&REQUEST=GetCapabilities&Sections=All",
    ]
    bodies = set()
    for path in paths:
        response = await client.get(path)
        assert response.status == 200, (path, await response.text())
        assert response.headers["Content-Type"] == "application/xml"
        assert response.headers["Cache-Control"] == "public, max-age=300"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        bodies.add(await response.read())
    assert len(bodies) == 1
    body = bodies.pop()
    assert body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = etree.fromstring(body)
    schemas["patched"].assertValid(root)
    assert root.get("version") == "1.0.0"
    assert root.get(f"{{{NS['xsi']}}}schemaLocation") == (
        "http://www.opengis.net/wmts/1.0 "
        "http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"
    )
    # Against the official schema, the only complaints are the MaxTileRow/MaxTileCol = 0 of
    # one-tile matrices (the schema bug the patched copy fixes).
    assert not schemas["official"].validate(root)
    errors = list(schemas["official"].error_log)
    assert errors
    for error in errors:
        assert "MaxTileRow" in error.message or "MaxTileCol" in error.message, error.message
        assert "'0'" in error.message, error.message


async def test_capabilities_describe_the_layer_and_its_tile_matrix_sets(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    client = await make_gateway(
        {
            "fake": layer(fake_upstream.url, bounds=ESSEN, maxzoom=6, title="Essen"),
            "deep": layer(fake_upstream.url, minzoom=2, maxzoom=8, formats=["jpg"]),
        },
        public_url=PUBLIC + "/",
    )
    config_service = {
        "title": "tile-gateway",
        "provider": "tile-gateway",
    }
    root = etree.fromstring(await (await client.get(CAPS)).read())
    schemas["patched"].assertValid(root)

    identification = find(root, "ows:ServiceIdentification")
    assert texts(identification, "ows:Title") == [config_service["title"]]
    assert texts(identification, "ows:ServiceType") == ["OGC WMTS"]
    assert texts(identification, "ows:ServiceTypeVersion") == ["1.0.0"]
    assert texts(root, "ows:ServiceProvider/ows:ProviderName") == [config_service["provider"]]

    # Absolute URLs from server.public_url; the KVP endpoint ends with '?' (ETS).
    gets = root.findall("ows:OperationsMetadata/ows:Operation", NS)
    encodings = {
        operation.get("name"): [
            (get.get(f"{{{NS['xlink']}}}href"), get.findtext(".//ows:Value", namespaces=NS))
            for get in operation.iterfind("ows:DCP/ows:HTTP/ows:Get", NS)
        ]
        for operation in gets
    }
    assert encodings == {
        "GetCapabilities": [
            (f"{PUBLIC}/wmts?", "KVP"),
            (f"{PUBLIC}/wmts/1.0.0/WMTSCapabilities.xml", "RESTful"),
        ],
        "GetTile": [(f"{PUBLIC}/wmts?", "KVP")],
    }
    service_metadata = find(root, "wmts:ServiceMetadataURL")
    assert service_metadata.get(f"{{{NS['xlink']}}}href") == (
        f"{PUBLIC}/wmts/1.0.0/WMTSCapabilities.xml"
    )

    layers = {
        find(element, "ows:Identifier").text: element
        for element in root.iterfind("wmts:Contents/wmts:Layer", NS)
    }
    assert list(layers) == ["fake", "deep"]
    fake = layers["fake"]
    assert texts(fake, "ows:Title") == ["Essen"]
    assert texts(fake, "ows:WGS84BoundingBox/ows:LowerCorner") == ["6.9 51.4"]
    assert texts(fake, "ows:WGS84BoundingBox/ows:UpperCorner") == ["7.1 51.5"]
    # The extent in each linked set's CRS, in that CRS's axis order (GDAL reads these).
    boxes = {
        box.get("crs"): [
            [float(v) for v in find(box, f"ows:{corner}").text.split()]
            for corner in ("LowerCorner", "UpperCorner")
        ]
        for box in fake.iterfind("ows:BoundingBox", NS)
    }
    to_mercator = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    assert list(boxes) == [
        "urn:ogc:def:crs:EPSG::3857",
        "urn:ogc:def:crs:OGC:1.3:CRS84",
        "urn:ogc:def:crs:EPSG::4326",
    ]
    assert boxes["urn:ogc:def:crs:EPSG::3857"] == [
        pytest.approx(list(to_mercator.transform(6.9, 51.4)), rel=1e-9),
        pytest.approx(list(to_mercator.transform(7.1, 51.5)), rel=1e-9),
    ]
    assert boxes["urn:ogc:def:crs:OGC:1.3:CRS84"] == [[6.9, 51.4], [7.1, 51.5]]
    assert boxes["urn:ogc:def:crs:EPSG::4326"] == [[51.4, 6.9], [51.5, 7.1]]
    deep_box = layers["deep"].find("ows:BoundingBox", NS)
    assert texts(deep_box, "ows:LowerCorner") == ["-20037508.342789244 -20037508.342789244"]
    style = find(fake, "wmts:Style")
    assert style.get("isDefault") == "true"
    assert texts(style, "ows:Title") == texts(style, "ows:Identifier") == ["default"]
    assert texts(fake, "wmts:Format") == ["image/png", "image/jpeg"]
    assert [
        (url.get("format"), url.get("resourceType"), url.get("template"))
        for url in fake.iterfind("wmts:ResourceURL", NS)
    ] == [
        (
            fmt,
            "tile",
            f"{PUBLIC}/wmts/1.0.0/fake/{{Style}}/{{TileMatrixSet}}/{{TileMatrix}}"
            f"/{{TileRow}}/{{TileCol}}.{ext}",
        )
        for fmt, ext in (("image/png", "png"), ("image/jpeg", "jpg"))
    ]
    # The layer without configured bounds (the fake upstream has no extent) spans the sets.
    assert texts(layers["deep"], "ows:WGS84BoundingBox/ows:LowerCorner") == ["-180.0 -90.0"]
    assert texts(layers["deep"], "ows:WGS84BoundingBox/ows:UpperCorner") == ["180.0 90.0"]

    links = {
        find(link, "wmts:TileMatrixSet").text: link
        for link in fake.iterfind("wmts:TileMatrixSetLink", NS)
    }
    assert list(links) == [
        "WebMercatorQuad",
        "WorldCRS84Quad",
        "WGS1984Quad",
        "WebMercatorQuad_2x",
        "WorldCRS84Quad_2x",
        "WGS1984Quad_2x",
    ]
    # TileMatrixSetLimits: the tiles holding the corners of the extent, computed here with
    # morecantile's own point -> tile (lon/lat in, whatever the CRS's axis order).
    for identifier, link in links.items():
        tms = morecantile.tms.get(identifier.removesuffix("_2x"))
        limits = link.findall("wmts:TileMatrixSetLimits/wmts:TileMatrixLimits", NS)
        assert [find(limit, "wmts:TileMatrix").text for limit in limits] == [
            str(z) for z in range(7)
        ]
        for z, limit in enumerate(limits):
            north_west = tms.tile(ESSEN[0], ESSEN[3], z)
            south_east = tms.tile(ESSEN[2], ESSEN[1], z)
            got = [
                int(find(limit, f"wmts:{name}").text)
                for name in ("MinTileRow", "MaxTileRow", "MinTileCol", "MaxTileCol")
            ]
            assert got == [north_west.y, south_east.y, north_west.x, south_east.x], (identifier, z)
    deep_limits = layers["deep"].findall(
        "wmts:TileMatrixSetLink[wmts:TileMatrixSet='WGS1984Quad']"
        "/wmts:TileMatrixSetLimits/wmts:TileMatrixLimits",
        NS,
    )
    assert [
        (
            find(limit, "wmts:TileMatrix").text,
            find(limit, "wmts:MaxTileCol").text,
            find(limit, "wmts:MaxTileRow").text,
        )
        for limit in deep_limits
    ] == [(str(z), str(2 ** (z + 1) - 1), str(2**z - 1)) for z in range(2, 9)]

    sets = {
        find(element, "ows:Identifier").text: element
        for element in root.iterfind("wmts:Contents/wmts:TileMatrixSet", NS)
    }
    assert list(sets) == list(links)
    expected_crs = {
        "WebMercatorQuad": "urn:ogc:def:crs:EPSG::3857",
        "WorldCRS84Quad": "urn:ogc:def:crs:OGC:1.3:CRS84",
        "WGS1984Quad": "urn:ogc:def:crs:EPSG::4326",
    }
    for identifier, element in sets.items():
        base = identifier.removesuffix("_2x")
        scale = 2 if identifier.endswith("_2x") else 1
        tms = morecantile.tms.get(base)
        assert texts(element, "ows:SupportedCRS") == [expected_crs[base]]
        assert find(element, "ows:BoundingBox").get("crs") == expected_crs[base]
        # Only the matrices some layer serves: 0..6 for "fake" and 2..8 for "deep".
        matrices = element.findall("wmts:TileMatrix", NS)
        assert [find(m, "ows:Identifier").text for m in matrices] == [str(z) for z in range(9)]
        for z, matrix in enumerate(matrices):
            definition = tms.matrix(z)
            assert find(matrix, "wmts:ScaleDenominator").text == repr(
                definition.scaleDenominator / scale
            )
            assert find(matrix, "wmts:TileWidth").text == str(256 * scale)
            assert find(matrix, "wmts:MatrixWidth").text == str(definition.matrixWidth)
            assert find(matrix, "wmts:MatrixHeight").text == str(definition.matrixHeight)
        well_known = texts(element, "wmts:WellKnownScaleSet")
        assert well_known == (
            ["urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible"]
            if identifier == "WebMercatorQuad"
            else []
        )
    # Axis order: EPSG:4326 is lat, lon; CRS84 and EPSG:3857 are x, y.
    for identifier in ("WGS1984Quad", "WGS1984Quad_2x"):
        assert texts(sets[identifier], "wmts:TileMatrix/wmts:TopLeftCorner")[0] == "90.0 -180.0"
        assert texts(sets[identifier], "ows:BoundingBox/ows:LowerCorner") == ["-90.0 -180.0"]
        assert texts(sets[identifier], "ows:BoundingBox/ows:UpperCorner") == ["90.0 180.0"]
    assert texts(sets["WorldCRS84Quad"], "wmts:TileMatrix/wmts:TopLeftCorner")[0] == "-180.0 90.0"
    assert texts(sets["WebMercatorQuad"], "wmts:TileMatrix/wmts:TopLeftCorner")[0] == (
        "-20037508.342789244 20037508.342789244"
    )
    assert texts(sets["WebMercatorQuad"], "wmts:TileMatrix/wmts:ScaleDenominator")[0] == (
        "559082264.0287178"
    )


async def test_service_metadata_comes_from_the_config(
    aiohttp_client: object, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    from gateway.app import create_app
    from gateway.config import parse_config

    config = parse_config(
        {
            "service": {
                "title": "Ortho & Co <tiles>",
                "abstract": "Aerial imagery",
                "keywords": ["orthophoto", "WMTS"],
                "provider_name": "Example Agency",
                "provider_site": "https://agency.example.org/",
                "contact_name": "Jo Maps",
                "contact_email": "maps@agency.example.org",
                "fees": "free",
                "access_constraints": "CC-BY 4.0",
            },
            "layers": {"fake": layer(fake_upstream.url, bounds=ESSEN, maxzoom=3)},
        }
    )
    client = await aiohttp_client(create_app(config))  # type: ignore[operator]
    root = etree.fromstring(await (await client.get(CAPS)).read())
    schemas["patched"].assertValid(root)
    identification = find(root, "ows:ServiceIdentification")
    assert [child.text for child in identification.iter() if child.text and child.text.strip()] == [
        "Ortho & Co <tiles>",
        "Aerial imagery",
        "orthophoto",
        "WMTS",
        "OGC WMTS",
        "1.0.0",
        "free",
        "CC-BY 4.0",
    ]
    provider = find(root, "ows:ServiceProvider")
    assert texts(provider, "ows:ProviderName") == ["Example Agency"]
    assert find(provider, "ows:ProviderSite").get(f"{{{NS['xlink']}}}href") == (
        "https://agency.example.org/"
    )
    assert texts(provider, "ows:ServiceContact/ows:IndividualName") == ["Jo Maps"]
    assert texts(
        provider, "ows:ServiceContact/ows:ContactInfo/ows:Address/ows:ElectronicMailAddress"
    ) == ["maps@agency.example.org"]


async def test_urls_follow_a_trusted_proxy_and_each_base_has_its_own_document(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, maxzoom=2)}, trust_proxy=True)
    proxied = await client.get(
        CAPS,
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "tiles.example.com",
            "X-Forwarded-Prefix": "/gis",
        },
    )
    assert "X-Forwarded-Host" in proxied.headers["Vary"]
    root = etree.fromstring(await proxied.read())
    assert find(root, "wmts:ServiceMetadataURL").get(f"{{{NS['xlink']}}}href") == (
        "https://tiles.example.com/gis/wmts/1.0.0/WMTSCapabilities.xml"
    )
    direct = etree.fromstring(await (await client.get(CAPS)).read())
    template = find(direct, "wmts:Contents/wmts:Layer/wmts:ResourceURL").get("template")
    assert template.startswith(f"http://127.0.0.1:{client.port}/wmts/1.0.0/fake/")


async def test_the_document_is_built_once_per_base_url(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[bytes] = []
    serialise = capabilities.serialise

    def counting(root: etree._Element) -> bytes:
        built.append(serialise(root))
        return built[-1]

    monkeypatch.setattr(capabilities, "serialise", counting)
    client = await make_gateway({"fake": layer(fake_upstream.url, maxzoom=2)})
    for path in (
        CAPS,
        "/wmts?service=wmts&request=getcapabilities",
        "/wmts/1.0.0/WMTSCapabilities.xml",
    ):
        assert (await client.get(path)).status == 200
    assert len(built) == 1
    assert (await client.get(CAPS + "&Sections=Contents")).status == 200
    assert len(built) == 2


@pytest.mark.parametrize(
    ("sections", "present"),
    [
        ("ServiceIdentification", ["ServiceIdentification"]),
        ("ServiceProvider", ["ServiceProvider"]),
        ("OperationsMetadata", ["OperationsMetadata"]),
        ("Contents", ["Contents"]),
        ("Themes", []),
        ("Contents,Themes", ["Contents"]),
        (
            "OperationsMetadata,ServiceIdentification",
            ["ServiceIdentification", "OperationsMetadata"],
        ),
        ("All", ["ServiceIdentification", "ServiceProvider", "OperationsMetadata", "Contents"]),
    ],
)
async def test_sections_select_parts_of_the_document(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    schemas: dict[str, etree.XMLSchema],
    sections: str,
    present: list[str],
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, bounds=ESSEN, maxzoom=2)})
    response = await client.get(f"{CAPS}&Sections={sections}")
    assert response.status == 200
    root = etree.fromstring(await response.read())
    schemas["patched"].assertValid(root)
    names = [etree.QName(child).localname for child in root]
    assert names == [*present, "ServiceMetadataURL"]


@pytest.mark.parametrize("versions", ["1.0.0", "2.0.0,1.0.0", " 1.0.0 "])
async def test_accept_versions_with_1_0_0(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, versions: str
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, maxzoom=1)})
    response = await client.get(f"{CAPS}&AcceptVersions={versions}")
    assert response.status == 200
    assert etree.fromstring(await response.read()).get("version") == "1.0.0"


async def test_accept_header_negotiation_of_the_service_metadata(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, maxzoom=1)})
    path = "/wmts/1.0.0/WMTSCapabilities.xml"
    for accept in (
        "example/unknown",
        "application/xml;q=0, text/html",
        "image/png, */*;q=0",
    ):
        response = await client.get(path, headers={"Accept": accept})
        await assert_exception(response, schemas, 406, "NoApplicableCode", None)
    for accept in (
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # a browser
        "text/xml",
        "application/*",
        "*/*",
    ):
        assert (await client.get(path, headers={"Accept": accept})).status == 200, accept


# -- ETS exception cases ----------------------------------------------------------------------


def get_tile_query(**changes: str | None) -> str:
    """The GetTile query with ``changes`` (``None`` drops a parameter)."""
    params = {**GET_TILE, **changes}
    return "/wmts?" + "&".join(f"{k}={v}" for k, v in params.items() if v is not None)


@pytest.mark.parametrize(
    ("path", "status", "code", "locator"),
    [
        ("/wmts?service=BOGUS&request=GetCapabilities", 400, "InvalidParameterValue", "service"),
        ("/wmts?service=WMTS&request=GetBOGUS", 400, "InvalidParameterValue", "request"),
        ("/wmts?request=GetCapabilities", 400, "MissingParameterValue", "service"),
        ("/wmts?service=WMTS", 400, "MissingParameterValue", "request"),
        ("/wmts?SERVICE=&REQUEST=GetCapabilities", 400, "MissingParameterValue", "service"),
        # The ETS's malformed query: one parameter with a strange name.
        (
            "/wmts?request~GetCapabilities!service~!'WMTS'version~'1.0.0",
            400,
            "MissingParameterValue",
            "service",
        ),
        ("/wmts?service=WMS&request=GetTile", 400, "InvalidParameterValue", "service"),
        (f"{CAPS}&AcceptVersions=9.9.9", 400, "VersionNegotiationFailed", None),
        (f"{CAPS}&AcceptVersions=", 400, "MissingParameterValue", "AcceptVersions"),
        (f"{CAPS}&Sections=Bogus", 400, "InvalidParameterValue", "Sections"),
        (f"{CAPS}&Sections=Contents,Bogus", 400, "InvalidParameterValue", "Sections"),
        (f"{CAPS}&Sections=", 400, "MissingParameterValue", "Sections"),
        (
            "/wmts?SERVICE=WMTS&REQUEST=GetFeatureInfo&VERSION=1.0.0",
            501,
            "OperationNotSupported",
            "GetFeatureInfo",
        ),
        *(
            (get_tile_query(**{name: None}), 400, "MissingParameterValue", locator)
            for name, locator in (
                ("VERSION", "Version"),
                ("LAYER", "Layer"),
                ("STYLE", "Style"),
                ("FORMAT", "Format"),
                ("TILEMATRIXSET", "TileMatrixSet"),
                ("TILEMATRIX", "TileMatrix"),
                ("TILEROW", "TileRow"),
                ("TILECOL", "TileCol"),
            )
        ),
        (get_tile_query(VERSION="2.0.0"), 400, "InvalidParameterValue", "Version"),
        (get_tile_query(LAYER="bogus"), 400, "InvalidParameterValue", "Layer"),
        (get_tile_query(STYLE="bogus"), 400, "InvalidParameterValue", "Style"),
        (get_tile_query(FORMAT="image/gif"), 400, "InvalidParameterValue", "Format"),
        (get_tile_query(FORMAT="png"), 400, "InvalidParameterValue", "Format"),
        (get_tile_query(TILEMATRIXSET="bogus"), 400, "InvalidParameterValue", "TileMatrixSet"),
        (get_tile_query(TILEMATRIX="bogus"), 400, "InvalidParameterValue", "TileMatrix"),
        (get_tile_query(TILEMATRIX="9"), 400, "InvalidParameterValue", "TileMatrix"),  # > maxzoom
        (get_tile_query(TILEMATRIX="03"), 400, "InvalidParameterValue", "TileMatrix"),
        (get_tile_query(TILEROW="x"), 400, "InvalidParameterValue", "TileRow"),
        (get_tile_query(TILECOL="1.5"), 400, "InvalidParameterValue", "TileCol"),
        (get_tile_query(TILEROW="8"), 400, "TileOutOfRange", "TileRow"),  # = MatrixHeight
        (get_tile_query(TILECOL="8"), 400, "TileOutOfRange", "TileCol"),  # = MatrixWidth
        (get_tile_query(TILECOL="-1"), 400, "TileOutOfRange", "TileCol"),
        (
            get_tile_query(TILEMATRIXSET="WGS1984Quad", TILEROW="8"),
            400,
            "TileOutOfRange",
            "TileRow",
        ),
        (
            get_tile_query(TILEMATRIXSET="WGS1984Quad", TILECOL="16"),
            400,
            "TileOutOfRange",
            "TileCol",
        ),
    ],
)
async def test_kvp_errors_are_exception_reports(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    schemas: dict[str, etree.XMLSchema],
    path: str,
    status: int,
    code: str,
    locator: str | None,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, maxzoom=8)})
    await assert_exception(await client.get(path), schemas, status, code, locator)
    assert fake_upstream.queries == []


async def test_every_missing_get_tile_parameter_is_reported(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    response = await client.get("/wmts?SERVICE=WMTS&REQUEST=GetTile&LAYER=fake&TILEROW=1")
    root = await assert_exception(response, schemas, 400, "MissingParameterValue", "Version")
    assert [e.get("locator") for e in root.iterfind("ows:Exception", NS)] == [
        "Version",
        "Style",
        "Format",
        "TileMatrixSet",
        "TileMatrix",
        "TileCol",
    ]


async def test_tiles_outside_the_layer_limits_are_out_of_range_by_kvp(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    # Essen at TileMatrix 8 is TileCol 132..133, TileRow 85 in WebMercatorQuad. The tile next
    # to it is inside the matrix (XYZ answers it with a transparent tile) but outside the
    # advertised TileMatrixSetLimits, so WMTS says TileOutOfRange (07-057r7 Table 24).
    client = await make_gateway({"fake": layer(fake_upstream.url, bounds=ESSEN)})
    inside = await client.get(get_tile_query(TILEMATRIX="8", TILEROW="85", TILECOL="133"))
    assert inside.status == 200
    beside = get_tile_query(TILEMATRIX="8", TILEROW="85", TILECOL="134")
    root = await assert_exception(
        await client.get(beside), schemas, 400, "TileOutOfRange", "TileCol"
    )
    assert find(root, "ows:Exception/ows:ExceptionText").text == (
        "TileCol 134 is outside 132..133 for layer 'fake' at TileMatrix 8 of WebMercatorQuad"
    )
    above = get_tile_query(TILEMATRIX="8", TILEROW="84", TILECOL="133")
    await assert_exception(await client.get(above), schemas, 400, "TileOutOfRange", "TileRow")
    rest = await client.get("/wmts/1.0.0/fake/default/WebMercatorQuad/8/85/134.png")
    await assert_exception(rest, schemas, 404, "TileOutOfRange", "TileCol")
    xyz = await client.get("/tiles/fake/8/134/85.png")
    assert xyz.status == 200
    assert len(fake_upstream.queries) == 1


@pytest.mark.parametrize(
    ("path", "code", "locator"),
    [
        ("/wmts/1.0.0/bogus/default/WebMercatorQuad/3/2/4.png", "InvalidParameterValue", "Layer"),
        ("/wmts/1.0.0/fake/bogus/WebMercatorQuad/3/2/4.png", "InvalidParameterValue", "Style"),
        ("/wmts/1.0.0/fake/default/bogus/3/2/4.png", "InvalidParameterValue", "TileMatrixSet"),
        (
            "/wmts/1.0.0/fake/default/WebMercatorQuad/9/2/4.png",
            "InvalidParameterValue",
            "TileMatrix",
        ),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/3/8/4.png", "TileOutOfRange", "TileRow"),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/8.png", "TileOutOfRange", "TileCol"),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/4.gif", "InvalidParameterValue", "Format"),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/4.jpeg", "InvalidParameterValue", "Format"),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/3/a/4.png", "InvalidParameterValue", "TileRow"),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/4", "InvalidParameterValue", "TileCol"),
        ("/wmts/1.0.0/WMTSCapabilities.xml/Bogus", "NoApplicableCode", None),  # ETS
        ("/wmts/1.0.0/WMTSCapabilitiesBogus.xml", "NoApplicableCode", None),  # ETS
        ("/wmts/nonesuch", "NoApplicableCode", None),  # ETS
        ("/wmts/", "NoApplicableCode", None),
        ("/wmts/2.0.0/WMTSCapabilities.xml", "NoApplicableCode", None),
        ("/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/4/5.png", "NoApplicableCode", None),
    ],
)
async def test_restful_misses_are_404_exception_reports(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    schemas: dict[str, etree.XMLSchema],
    path: str,
    code: str,
    locator: str | None,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, maxzoom=8)})
    await assert_exception(await client.get(path), schemas, 404, code, locator)
    assert fake_upstream.queries == []


# -- tiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tms", "z", "col", "row", "fmt", "size"),
    [
        ("WebMercatorQuad", 3, 4, 2, "image/png", 256),
        ("WGS1984Quad", 2, 5, 1, "image/jpeg", 256),
        ("WorldCRS84Quad", 0, 1, 0, "image/png", 256),
        ("WGS1984Quad_2x", 3, 9, 2, "image/png", 512),
    ],
)
async def test_get_tile_by_kvp_and_rest_asks_the_upstream_for_the_tile_bbox(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    tms: str,
    z: int,
    col: int,
    row: int,
    fmt: str,
    size: int,
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    ext = "png" if fmt == "image/png" else "jpg"
    # Mixed-case names and an encoded Format, as OpenLayers sends them.
    kvp = await client.get(
        "/wmts",
        params={
            "layer": "fake",
            "style": "default",
            "tilematrixset": tms,
            "Service": "WMTS",
            "Request": "GetTile",
            "Version": "1.0.0",
            "Format": fmt,
            "TileMatrix": str(z),
            "TileCol": str(col),
            "TileRow": str(row),
        },
    )
    assert kvp.status == 200, await kvp.text()
    assert kvp.headers["Content-Type"] == fmt
    assert kvp.headers["X-Cache"] == "MISS"
    assert kvp.headers["Access-Control-Allow-Origin"] == "*"
    image = Image.open(io.BytesIO(await kvp.read()))
    assert image.size == (size, size)
    assert image.format == ("PNG" if ext == "png" else "JPEG")
    assert len(fake_upstream.queries) == 1
    query = fake_upstream.queries[0]
    bounds = morecantile.tms.get(tms.removesuffix("_2x")).xy_bounds(morecantile.Tile(col, row, z))
    sent = [float(v) for v in query["bbox"].split(",")]
    assert sent == pytest.approx([bounds.left, bounds.bottom, bounds.right, bounds.top], rel=1e-12)
    assert query["size"] == f"{size},{size}"

    rest = await client.get(f"/wmts/1.0.0/fake/default/{tms}/{z}/{row}/{col}.{ext}")
    assert rest.status == 200
    assert rest.headers["Content-Type"] == fmt
    assert rest.headers["X-Cache"] == "HIT"
    assert rest.headers["ETag"] == kvp.headers["ETag"]
    assert len(fake_upstream.queries) == 1


async def test_one_tile_one_upstream_call_whichever_protocol_asks(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)})
    answers = [
        await client.get("/tiles/fake/5/16/11.png"),
        await client.get(get_tile_query(TILEMATRIX="5", TILEROW="11", TILECOL="16")),
        await client.get("/wmts/1.0.0/fake/default/WebMercatorQuad/5/11/16.png"),
    ]
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert [answer.headers["X-Cache"] for answer in answers] == ["MISS", "HIT", "HIT"]
    assert len({await answer.read() for answer in answers}) == 1
    assert len({answer.headers["ETag"] for answer in answers}) == 1
    assert len(fake_upstream.queries) == 1
    # The 512-pixel set shares its base's entry too, at twice the pixels: a new call.
    retina = await client.get("/wmts/1.0.0/fake/default/WebMercatorQuad_2x/5/11/16.png")
    assert retina.headers["X-Cache"] == "MISS"
    assert (await client.get("/tiles/fake/5/16/11@2x.png")).headers["X-Cache"] == "HIT"
    assert len(fake_upstream.queries) == 2


async def test_tiles_answer_if_none_match_with_304(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url, ttl=1234)})
    path = "/wmts/1.0.0/fake/default/WebMercatorQuad/2/1/2.png"
    first = await client.get(path)
    assert first.headers["Cache-Control"] == "public, max-age=1234"
    etag = first.headers["ETag"]
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    kvp = await client.get(
        get_tile_query(TILEMATRIX="2", TILEROW="1", TILECOL="2"), headers={"If-None-Match": etag}
    )
    assert kvp.status == 304
    assert len(fake_upstream.queries) == 1


@pytest.mark.parametrize(
    ("behaviour", "status", "text"),
    [
        ("http500", 502, "failed (code 500): HTTP 500"),
        ("token498", 502, "failed (code 498): Invalid Token"),
        ("slow", 504, "failed: no answer within 0.5 s"),
    ],
)
async def test_upstream_failures_are_no_applicable_code_without_the_upstream_url(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    schemas: dict[str, etree.XMLSchema],
    behaviour: str,
    status: int,
    text: str,
) -> None:
    fake_upstream.behaviour = behaviour
    client = await make_gateway({"fake": layer(fake_upstream.url)}, upstream_timeout=0.5)
    for path in (
        get_tile_query(),
        "/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/4.png",
    ):
        response = await client.get(path)
        root = await assert_exception(response, schemas, status, "NoApplicableCode", None)
        message = find(root, "ows:Exception/ows:ExceptionText").text
        assert message == f"the upstream of layer 'fake' failed{text.removeprefix('failed')}"
        body = etree.tostring(root).decode()
        assert "127.0.0.1" not in body and "exportImage" not in body
    assert len(fake_upstream.queries) == 2  # errors are not cached


async def test_a_busy_upstream_is_no_applicable_code_503_with_retry_after(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    schemas: dict[str, etree.XMLSchema],
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url)}, max_concurrent_exports=1, max_queued_exports=0
    )
    fake_upstream.gate.clear()  # the first call holds the only slot
    holder = asyncio.create_task(client.get("/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/5.png"))
    for _ in range(1000):
        if fake_upstream.running:
            break
        await asyncio.sleep(0.01)
    for path in (get_tile_query(), "/wmts/1.0.0/fake/default/WebMercatorQuad/3/2/4.png"):
        response = await client.get(path)
        root = await assert_exception(response, schemas, 503, "NoApplicableCode", None)
        assert response.headers["Retry-After"] == "10"
        assert find(root, "ows:Exception/ows:ExceptionText").text == (
            "the upstream of layer 'fake' is busy: the limit of 1 exportImage calls in flight "
            "and 0 waiting is reached; retry in 10 s"
        )
    fake_upstream.gate.set()
    assert (await holder).status == 200
    assert len(fake_upstream.queries) == 1


async def test_a_custom_tile_matrix_set_from_the_config(
    aiohttp_client: object, fake_upstream: FakeUpstream, schemas: dict[str, etree.XMLSchema]
) -> None:
    from gateway.app import create_app
    from gateway.config import parse_config

    utm = {"crs": "EPSG:25832", "extent": [280000.0, 5200000.0, 920000.0, 6100000.0]}
    config = parse_config(
        {
            "tile_matrix_sets": {"UTM32N": {**utm, "maxzoom": 4}},
            "layers": {"fake": layer(fake_upstream.url, tile_matrix_sets=["UTM32N"])},
        }
    )
    client = await aiohttp_client(create_app(config))  # type: ignore[operator]
    root = etree.fromstring(await (await client.get(CAPS)).read())
    schemas["patched"].assertValid(root)
    tms = find(root, "wmts:Contents/wmts:TileMatrixSet")
    assert texts(tms, "ows:Identifier") == ["UTM32N"]
    assert texts(tms, "ows:SupportedCRS") == ["urn:ogc:def:crs:EPSG::25832"]
    assert texts(tms, "wmts:WellKnownScaleSet") == []
    # EPSG:25832 is easting, northing: the corner is (xmin, ymax) as the config gives it.
    assert texts(tms, "wmts:TileMatrix/wmts:TopLeftCorner")[0] == "280000.0 6100000.0"
    assert texts(tms, "wmts:TileMatrix/ows:Identifier") == ["0", "1", "2", "3", "4"]

    response = await client.get(
        get_tile_query(TILEMATRIXSET="UTM32N", TILEMATRIX="2", TILEROW="1", TILECOL="3")
    )
    assert response.status == 200, await response.text()
    custom = morecantile.TileMatrixSet.custom(
        utm["extent"], CRS.from_epsg(25832), minzoom=0, maxzoom=4, id="UTM32N"
    )
    bounds = custom.xy_bounds(morecantile.Tile(3, 1, 2))
    sent = [float(v) for v in fake_upstream.queries[-1]["bbox"].split(",")]
    assert sent == pytest.approx([bounds.left, bounds.bottom, bounds.right, bounds.top], rel=1e-12)
    assert fake_upstream.queries[-1]["bboxSR"] == "25832"
