"""OWSLib (a real WMTS client) against a gateway process: it reads the capabilities from the KVP
and the RESTful URL, finds what ogc-interop.md checklist B expects, and fetches tiles.

OWSLib blocks, so it talks to ``tile-gateway serve`` run as a process (``gateway_url``:
``bluemarble`` jpg+png up to TileMatrix 9, ``rgb`` png up to 12, over the reference
ImageServer).
"""

from __future__ import annotations

import io

import morecantile
import pytest
import rasterio
from owslib.util import ServiceException
from owslib.wmts import WebMapTileService
from PIL import Image
from rasterio.warp import transform_bounds

from tests.conftest import DATA

SETS = [
    "WebMercatorQuad",
    "WorldCRS84Quad",
    "WGS1984Quad",
    "WebMercatorQuad_2x",
    "WorldCRS84Quad_2x",
    "WGS1984Quad_2x",
]


@pytest.fixture(scope="module", params=["kvp", "rest"])
def service(request: pytest.FixtureRequest, gateway_url: str) -> WebMapTileService:
    """The service as OWSLib reads it from the bare KVP endpoint or the RESTful document."""
    url = {
        "kvp": f"{gateway_url}/wmts",
        "rest": f"{gateway_url}/wmts/1.0.0/WMTSCapabilities.xml",
    }[request.param]
    return WebMapTileService(url)


def test_service_identification_and_operations(
    service: WebMapTileService, gateway_url: str
) -> None:
    assert service.identification.type == "OGC WMTS"
    assert service.identification.version == "1.0.0"
    assert service.identification.title == "tile-gateway"
    assert service.provider.name == "tile-gateway"
    get_tile = service.getOperationByName("GetTile")
    assert [(method["type"], method["url"]) for method in get_tile.methods] == [
        ("Get", f"{gateway_url}/wmts?")
    ]


def test_layers_formats_styles_and_links(service: WebMapTileService, gateway_url: str) -> None:
    assert list(service.contents) == ["bluemarble", "rgb"]
    bluemarble = service.contents["bluemarble"]
    assert bluemarble.formats == ["image/jpeg", "image/png"]
    assert bluemarble.styles == {"default": {"isDefault": True, "title": "default"}}
    assert list(bluemarble.tilematrixsetlinks) == SETS
    assert bluemarble.boundingBoxWGS84 == (-180.0, -90.0, 180.0, 90.0)
    assert [url["template"] for url in bluemarble.resourceURLs] == [
        f"{gateway_url}/wmts/1.0.0/bluemarble/{{Style}}/{{TileMatrixSet}}/{{TileMatrix}}"
        f"/{{TileRow}}/{{TileCol}}.{ext}"
        for ext in ("jpg", "png")
    ]

    rgb = service.contents["rgb"]
    assert rgb.formats == ["image/png"]
    with rasterio.open(DATA / "RGB.byte.tif") as source:  # EPSG:32618, the Bahamas
        extent = transform_bounds(source.crs, "EPSG:4326", *source.bounds, densify_pts=21)
    assert rgb.boundingBoxWGS84 == pytest.approx(extent, abs=1e-9)
    # TileMatrixSetLimits: the tiles under the raster's corners, TileMatrix 0..12.
    tms = morecantile.tms.get("WebMercatorQuad")
    limits = rgb.tilematrixsetlinks["WebMercatorQuad"].tilematrixlimits
    assert list(limits) == [str(z) for z in range(13)]
    west, south, east, north = extent
    for z in (0, 7, 12):
        north_west, south_east = tms.tile(west, north, z), tms.tile(east, south, z)
        found = limits[str(z)]
        assert (found.mintilerow, found.maxtilerow, found.mintilecol, found.maxtilecol) == (
            north_west.y,
            south_east.y,
            north_west.x,
            south_east.x,
        )


def test_tile_matrix_sets(service: WebMapTileService) -> None:
    assert list(service.tilematrixsets) == SETS
    web_mercator = service.tilematrixsets["WebMercatorQuad"]
    assert web_mercator.crs == "urn:ogc:def:crs:EPSG::3857"
    assert list(web_mercator.tilematrix) == [str(z) for z in range(13)]  # rgb goes to 12
    level0 = web_mercator.tilematrix["0"]
    assert level0.scaledenominator == 559082264.0287178
    assert level0.topleftcorner == (-20037508.342789244, 20037508.342789244)
    assert (level0.tilewidth, level0.matrixwidth, level0.matrixheight) == (256, 1, 1)
    assert web_mercator.tilematrix["12"].matrixwidth == 4096

    # OWSLib keeps TopLeftCorner in document order: CRS axis order, lat/lon for EPSG:4326.
    wgs84 = service.tilematrixsets["WGS1984Quad"]
    assert wgs84.crs == "urn:ogc:def:crs:EPSG::4326"
    assert wgs84.tilematrix["0"].topleftcorner == (90.0, -180.0)
    assert (wgs84.tilematrix["0"].matrixwidth, wgs84.tilematrix["0"].matrixheight) == (2, 1)
    crs84 = service.tilematrixsets["WorldCRS84Quad"]
    assert crs84.crs == "urn:ogc:def:crs:OGC:1.3:CRS84"
    assert crs84.tilematrix["0"].topleftcorner == (-180.0, 90.0)

    retina = service.tilematrixsets["WebMercatorQuad_2x"].tilematrix["0"]
    assert retina.tilewidth == 512
    assert retina.scaledenominator == 559082264.0287178 / 2


@pytest.mark.parametrize(
    ("layer", "tms", "matrix", "fmt", "size"),
    [
        ("bluemarble", "WebMercatorQuad", "2", "image/png", 256),
        ("bluemarble", "WGS1984Quad_2x", "1", "image/jpeg", 512),
        ("rgb", "WorldCRS84Quad", "9", "image/png", 256),
        ("rgb", "WebMercatorQuad", "12", "image/png", 256),
    ],
)
def test_gettile(
    service: WebMapTileService, layer: str, tms: str, matrix: str, fmt: str, size: int
) -> None:
    # A tile inside the layer's limits: its first row and column there.
    limits = service.contents[layer].tilematrixsetlinks[tms].tilematrixlimits[matrix]
    response = service.gettile(
        layer=layer,
        tilematrixset=tms,
        tilematrix=matrix,
        row=limits.mintilerow,
        column=limits.mintilecol,
        format=fmt,
    )
    assert response.info()["Content-Type"] == fmt
    image = Image.open(io.BytesIO(response.read()))
    assert image.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[fmt]
    assert image.size == (size, size)


def test_tile_out_of_range_is_a_service_exception(service: WebMapTileService) -> None:
    # Inside TileMatrix 12 of WebMercatorQuad, far from the Bahamas: outside rgb's limits.
    with pytest.raises(ServiceException) as raised:
        service.gettile(
            layer="rgb",
            tilematrixset="WebMercatorQuad",
            tilematrix="12",
            row=0,
            column=0,
            format="image/png",
        )
    report = str(raised.value)
    assert 'exceptionCode="TileOutOfRange"' in report
    assert 'locator="TileRow"' in report
