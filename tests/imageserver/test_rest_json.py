"""REST directory JSON: server info, catalog, ImageServer root resource, errors, JSONP."""

from __future__ import annotations

import json

import pytest
import rasterio
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler

from imageserver.app import create_app
from imageserver.config import ImageServerConfig
from tests.imageserver.conftest import AiohttpClient, data_path
from tests.imageserver.helpers import SERVICES


async def get_json(client: TestClient, path: str, **params: str) -> dict:
    response = await client.get(path, params=params)
    assert response.status == 200
    return json.loads(await response.text())


async def test_server_info(client: TestClient) -> None:
    info = await get_json(client, "/arcgis/rest/info", f="json")
    assert info["currentVersion"] == pytest.approx(11.1)
    assert info["authInfo"] == {"isTokenBasedSecurity": False}


async def test_catalog_lists_configured_and_builtin_services(client: TestClient) -> None:
    catalog = await get_json(client, SERVICES, f="json")
    assert catalog["folders"] == ["Hosted", "System"]  # collections, RasterAnalysisTools
    names = {s["name"] for s in catalog["services"]}
    assert names == {
        "bluemarble",
        "shadedrelief",
        "etopo",
        "naip_time",
        "rgb",
        "dtm",
        "naip",
        "earth",
        "landsat",
    }
    assert {s["type"] for s in catalog["services"]} == {"ImageServer"}


async def test_catalog_without_builtins(aiohttp_client: AiohttpClient) -> None:
    config = ImageServerConfig(services={}, builtin=False)
    client = await aiohttp_client(create_app(config))
    catalog = await get_json(client, f"{SERVICES}/", f="pjson")
    assert catalog["services"] == []


async def test_service_info_of_projected_raster(client: TestClient) -> None:
    info = await get_json(client, f"{SERVICES}/rgb/ImageServer", f="json")
    with rasterio.open(data_path("RGB.byte.tif")) as dataset:
        bounds, res = dataset.bounds, dataset.res
    sr = {"wkid": 32618, "latestWkid": 32618}
    expected_extent = {
        "xmin": bounds.left,
        "ymin": bounds.bottom,
        "xmax": bounds.right,
        "ymax": bounds.top,
        "spatialReference": sr,
    }
    assert info["name"] == "rgb"
    assert info["type"] == "ImageServer"
    assert info["description"] == "test rgb"
    assert info["serviceDataType"] == "esriImageServiceDataTypeGeneric"
    assert info["spatialReference"] == sr
    assert info["extent"] == info["initialExtent"] == info["fullExtent"] == expected_extent
    assert (info["pixelSizeX"], info["pixelSizeY"]) == pytest.approx(res)
    assert info["bandCount"] == 3
    assert info["pixelType"] == "U8"
    assert info["noDataValue"] == 0
    assert info["maxImageWidth"] == 15000
    assert info["maxImageHeight"] == 4100
    assert "Image" in info["capabilities"].split(",")
    assert info["defaultResamplingMethod"] == "Bilinear"
    assert info["singleFusedMapCache"] is False
    assert "copyrightText" in info
    assert info["currentVersion"] == pytest.approx(11.1)
    assert len(info["minValues"]) == len(info["maxValues"]) == 3
    assert all(
        0 <= lo < hi <= 255 for lo, hi in zip(info["minValues"], info["maxValues"], strict=True)
    )


async def test_service_info_statistics_of_float_raster(client: TestClient) -> None:
    info = await get_json(client, f"{SERVICES}/dtm/ImageServer", f="json")
    with rasterio.open(data_path("dtm.tif")) as dataset:
        values = dataset.read(1, masked=True)
    assert info["pixelType"] == "F32"
    assert info["noDataValue"] == -9999
    assert info["spatialReference"] == {"wkid": 26918, "latestWkid": 26918}
    # Estimated from a decimated read, so close to (not exactly) the full-resolution range.
    assert info["minValues"][0] == pytest.approx(float(values.min()), abs=0.5)
    assert info["maxValues"][0] == pytest.approx(float(values.max()), abs=0.5)


async def test_builtin_service_is_global_plate_carree(client: TestClient) -> None:
    info = await get_json(client, f"{SERVICES}/bluemarble/ImageServer", f="json")
    assert info["spatialReference"] == {"wkid": 4326, "latestWkid": 4326}
    assert [info["extent"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == [-180, -90, 180, 90]
    assert info["pixelSizeX"] == pytest.approx(360 / 5400)
    assert info["bandCount"] == 3
    assert info["copyrightText"]


async def test_paletted_service(client: TestClient) -> None:
    info = await get_json(client, f"{SERVICES}/earth/ImageServer", f="json")
    assert info["bandCount"] == 1
    assert info["hasColormap"] is True
    assert info["serviceDataType"] == "esriImageServiceDataTypeThematic"


async def test_trailing_slash_and_pjson(client: TestClient) -> None:
    plain = await client.get(f"{SERVICES}/naip/ImageServer", params={"f": "json"})
    pretty = await client.get(f"{SERVICES}/naip/ImageServer/", params={"f": "pjson"})
    plain_text, pretty_text = await plain.text(), await pretty.text()
    assert "\n" not in plain_text
    assert "\n  " in pretty_text
    assert json.loads(plain_text) == json.loads(pretty_text)
    assert json.loads(pretty_text)["bandCount"] == 4


async def test_post_and_case_insensitive_names(client: TestClient) -> None:
    response = await client.post(f"{SERVICES}/NAIP/imageserver", data={"F": "json"})
    info = json.loads(await response.text())
    assert info["name"] == "naip"


async def test_jsonp_callback(client: TestClient) -> None:
    response = await client.get(
        f"{SERVICES}/rgb/ImageServer", params={"f": "json", "callback": "dojo.io.cb1"}
    )
    text = await response.text()
    assert text.startswith("dojo.io.cb1(") and text.endswith(");")
    assert json.loads(text[len("dojo.io.cb1(") : -2])["name"] == "rgb"


async def test_unsafe_jsonp_callback_is_not_echoed(client: TestClient) -> None:
    response = await client.get(
        f"{SERVICES}/rgb/ImageServer", params={"f": "json", "callback": "alert(1)//"}
    )
    assert json.loads(await response.text())["name"] == "rgb"


@pytest.mark.parametrize(
    "path",
    [
        f"{SERVICES}/nosuch/ImageServer",
        f"{SERVICES}/nosuch/ImageServer/exportImage",
        f"{SERVICES}/rgb/MapServer",
        f"{SERVICES}/nosuch",
    ],
)
async def test_unknown_service_is_arcgis_404_under_http_200(client: TestClient, path: str) -> None:
    document = await get_json(client, path, f="json")
    assert document["error"]["code"] == 404
    assert document["error"]["message"]


async def test_unsupported_operation_is_error_400(client: TestClient) -> None:
    document = await get_json(client, f"{SERVICES}/rgb/ImageServer/measure", f="json")
    assert document["error"]["code"] == 400
    assert document["error"]["message"] == "Requested operation is not supported by this service."


async def test_middlewares_see_requests(aiohttp_client: AiohttpClient) -> None:
    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app = create_app(ImageServerConfig(services={}, builtin=False), middlewares=[record])
    client = await aiohttp_client(app)
    await get_json(client, SERVICES, f="json")
    assert seen == [SERVICES]
