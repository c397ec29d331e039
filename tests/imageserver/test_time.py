"""The built-in time-enabled mosaic ``naip_time``: ``time`` and ``mosaicRule`` on exportImage,
identify and getSamples, and its ``timeInfo``, checked against rasterio reads of the two NAIP
scenes (2010 and 2020), which differ at every pixel."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from rasterio.crs import CRS

from imageserver.app import create_app
from imageserver.config import ConfigError, ImageServerConfig, load_config
from tests.imageserver.conftest import AiohttpClient, data_path
from tests.imageserver.helpers import (
    SERVICES,
    decode_png,
    export,
    export_error,
    pixel_centres,
    read_tiff,
    sample_source,
)

SERVICE = "naip_time"
SCENE_2010 = "m_4709963_se_14_1_20100629.tif"
SCENE_2020 = "m_4709963_se_14_1_20200831.tif"
UTM14 = CRS.from_epsg(26914)
# 200 x 150 pixels of the 2010 scene's own 5 m grid, well inside both scenes (the 2020 grid
# is shifted 1 m west and north, so its pixels are sampled 1 m off their centres).
BBOX = (487400.0, 5207495.0, 488400.0, 5208245.0)
SIZE = (200, 150)
BANDS = [0, 1, 2, 3]


def ms(year: int, month: int, day: int) -> int:
    """Milliseconds since the epoch of a UTC midnight."""
    moment = datetime.datetime(year, month, day, tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1000


T2010, T2020 = ms(2010, 6, 29), ms(2020, 8, 31)


def expected(scene: str) -> np.ndarray:
    """``(4, 150, 200)`` pixels of ``scene`` under the centres of the output pixels."""
    xs, ys = pixel_centres(BBOX, *SIZE)
    return sample_source(data_path(scene), UTM14, xs, ys, BANDS)


async def export_tiff(client: TestClient, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """exportImage of ``BBOX`` as a nearest-neighbour GeoTIFF: pixels and mask."""
    _, body = await export(
        client,
        SERVICE,
        bbox=",".join(map(str, BBOX)),
        size=f"{SIZE[0]},{SIZE[1]}",
        interpolation="RSP_NearestNeighbor",
        format="tiff",
        **params,
    )
    data, mask, _ = read_tiff(body)
    return data, mask


def test_the_scenes_differ_everywhere() -> None:
    # What makes every comparison below decisive.
    assert (expected(SCENE_2010) != expected(SCENE_2020)).any(axis=0).all()


async def get_json(client: TestClient, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params={"f": "json", **params})
    assert response.status == 200
    return json.loads(await response.text())


async def test_service_info_has_time_info_and_catalog_fields(client: TestClient) -> None:
    info = await get_json(client, f"{SERVICES}/{SERVICE}/ImageServer")
    assert info["timeInfo"] == {
        "startTimeField": "AcquisitionDate",
        "endTimeField": None,
        "timeExtent": [T2010, T2020],
        "timeReference": None,
        "defaultTimeInterval": 1,
        "defaultTimeIntervalUnits": "esriTimeUnitsYears",
    }
    assert info["hasMultidimensions"] is False
    assert info["serviceSourceType"] == "esriImageServiceSourceTypeMosaicDataset"
    assert info["objectIdField"] == "OBJECTID"
    assert [(f["name"], f["type"]) for f in info["fields"]] == [
        ("OBJECTID", "esriFieldTypeOID"),
        ("Name", "esriFieldTypeString"),
        ("AcquisitionDate", "esriFieldTypeDate"),
    ]
    assert info["defaultMosaicMethod"] == "ByAttribute"
    assert set(info["allowedMosaicMethods"].split(",")) == {
        "ByAttribute",
        "LockRaster",
        "None",
        "NorthWest",
        "Center",
    }
    assert (info["sortField"], info["sortValue"], info["sortAscending"]) == (
        "AcquisitionDate",
        "2050/01/01",
        True,
    )
    assert info["mosaicOperator"] == "First"
    assert set(info["capabilities"].split(",")) == {"Image", "Metadata", "Catalog"}
    # The union of both scenes (the 2020 grid is shifted 1 m west and north).
    extent = info["extent"]
    assert (extent["xmin"], extent["ymin"], extent["xmax"], extent["ymax"]) == (
        485899.0,
        5205630.0,
        490570.0,
        5209246.0,
    )
    assert (info["bandCount"], info["pixelType"], info["pixelSizeX"]) == (4, "U8", 5.0)


@pytest.mark.parametrize(
    ("time", "scene"),
    [
        (str(T2010), SCENE_2010),
        (str(T2020), SCENE_2020),
        (f"null,{ms(2015, 1, 1)}", SCENE_2010),
        (f"{ms(2015, 1, 1)},null", SCENE_2020),
        (f"{ms(2010, 1, 1)},{ms(2010, 12, 31)}", SCENE_2010),
        (f"{T2020},{T2020}", SCENE_2020),  # an extent's ends are included
    ],
)
async def test_time_selects_the_scene(client: TestClient, time: str, scene: str) -> None:
    data, mask = await export_tiff(client, time=time)
    assert mask.all()
    np.testing.assert_array_equal(data, expected(scene))


@pytest.mark.parametrize(
    "params",
    [
        {},  # the service default: ByAttribute AcquisitionDate to 2050, newest on top
        {"time": f"{T2010},{T2020}"},
        {"time": "null,null"},
    ],
)
async def test_by_default_the_newest_scene_is_on_top(
    client: TestClient, params: dict[str, str]
) -> None:
    data, _ = await export_tiff(client, **params)
    np.testing.assert_array_equal(data, expected(SCENE_2020))


@pytest.mark.parametrize(
    ("rule", "scene"),
    [
        ({"mosaicMethod": "esriMosaicNone"}, SCENE_2010),  # ObjectID 1 first
        ({"mosaicMethod": "esriMosaicNone", "ascending": False}, SCENE_2020),
        ({"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [1]}, SCENE_2010),
        ({"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [2]}, SCENE_2020),
        (
            {"mosaicMethod": "esriMosaicAttribute", "sortField": "AcquisitionDate"},
            SCENE_2010,  # ascending by default: the oldest first
        ),
        (
            {
                "mosaicMethod": "esriMosaicAttribute",
                "sortField": "AcquisitionDate",
                "ascending": False,
            },
            SCENE_2020,
        ),
        (
            {
                "mosaicMethod": "esriMosaicAttribute",
                "sortField": "acquisitiondate",
                "sortValue": "2012/01/01",
            },
            SCENE_2010,  # closest to 2012
        ),
        (
            {
                "mosaicMethod": "esriMosaicAttribute",
                "sortField": "AcquisitionDate",
                "sortValue": ms(2019, 1, 1),
            },
            SCENE_2020,
        ),
        (
            {"mosaicMethod": "esriMosaicAttribute", "sortField": "OBJECTID", "ascending": False},
            SCENE_2020,
        ),
        # The 2020 scene's centre is 1.4 m nearer the north-west corner.
        ({"mosaicMethod": "esriMosaicNorthwest"}, SCENE_2020),
        ({"mosaicMethod": "esriMosaicNorthwest", "ascending": False}, SCENE_2010),
        ({"mosaicMethod": "esriMosaicNone", "mosaicOperation": "MT_LAST"}, SCENE_2020),
        ({"mosaicOperation": "MT_LAST"}, SCENE_2010),  # the default order, the last wins
        ({"mosaicMethod": "esriMosaicNone", "fids": [2]}, SCENE_2020),
        # Unset properties as clients serialise them: null, an empty list, an empty where.
        (
            {
                "mosaicMethod": "esriMosaicNone",
                "ascending": None,
                "fids": [],
                "where": "",
                "sortField": "",
                "sortValue": None,
                "lockRasterIds": [],
                "multidimensionalDefinition": [],
            },
            SCENE_2010,
        ),
    ],
)
async def test_mosaic_rule_orders_and_locks(
    client: TestClient, rule: dict[str, Any], scene: str
) -> None:
    data, mask = await export_tiff(client, mosaicRule=json.dumps(rule))
    assert mask.all()
    np.testing.assert_array_equal(data, expected(scene))


async def test_lock_raster_outside_the_time_is_empty(client: TestClient) -> None:
    rule = {"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [1]}
    _, mask = await export_tiff(client, mosaicRule=json.dumps(rule), time=str(T2020))
    assert not mask.any()


@pytest.mark.parametrize(
    ("operation", "combine"),
    [
        ("MT_MIN", lambda a, b: np.minimum(a, b)),
        ("MT_MAX", lambda a, b: np.maximum(a, b)),
        # Rounded half to even, the two values' mean is a whole or a half number.
        ("MT_MEAN", lambda a, b: np.round((a.astype(int) + b) / 2).astype(np.uint8)),
    ],
)
async def test_mosaic_operations_combine_both_scenes(
    client: TestClient, operation: str, combine: Any
) -> None:
    data, _ = await export_tiff(client, mosaicRule=json.dumps({"mosaicOperation": operation}))
    np.testing.assert_array_equal(data, combine(expected(SCENE_2010), expected(SCENE_2020)))


@pytest.mark.parametrize("time", [str(ms(2015, 1, 1)), "0", f"{ms(2011, 1, 1)},{ms(2019, 1, 1)}"])
async def test_time_without_a_scene_is_a_transparent_image(client: TestClient, time: str) -> None:
    content_type, body = await export(client, SERVICE, time=time, size="64,64", format="png")
    assert content_type == "image/png"
    assert (decode_png(body)[..., 3] == 0).all()


@pytest.mark.parametrize(
    ("param", "value", "says"),
    [
        ("mosaicRule", "{not json", "not valid JSON"),
        ("mosaicRule", "[1, 2]", "expected a JSON object"),
        ("mosaicRule", '{"mosaicMethod": "esriMosaicRandom"}', "unknown mosaicMethod"),
        ("mosaicRule", '{"mosaicMethod": "esriMosaicNadir"}', "not supported"),
        ("mosaicRule", '{"mosaicMethod": "esriMosaicLockRaster"}', "lockRasterIds"),
        ("mosaicRule", '{"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": "1"}', "list"),
        ("mosaicRule", '{"mosaicMethod": "esriMosaicAttribute"}', "sortField"),
        (
            "mosaicRule",
            '{"mosaicMethod": "esriMosaicAttribute", "sortField": "Cloud"}',
            "sortField",
        ),
        (
            "mosaicRule",
            '{"mosaicMethod": "esriMosaicAttribute", "sortField": "AcquisitionDate", '
            '"sortValue": "soon"}',
            "sortValue",
        ),
        ("mosaicRule", '{"mosaicOperation": "MT_BLEND"}', "not supported"),
        ("mosaicRule", '{"mosaicOperation": "MT_MEDIAN"}', "unknown mosaicOperation"),
        ("mosaicRule", '{"ascending": "yes"}', "ascending"),
        ("mosaicRule", '{"where": "OBJECTID = 1"}', "where"),
        ("time", "yesterday", "milliseconds"),
        ("time", "1,2,3", "<t1>,<t2>"),
        ("time", f"{T2020},{T2010}", "after the end"),
    ],
)
async def test_bad_time_or_mosaic_rule_is_an_arcgis_error(
    client: TestClient, param: str, value: str, says: str
) -> None:
    error = await export_error(client, SERVICE, **{param: value})
    assert error["code"] == 400
    (detail,) = error["details"]
    assert detail.startswith(f"Invalid {param} ")
    assert says in detail


async def test_raster_dataset_services_ignore_time_and_mosaic_rule(client: TestClient) -> None:
    # A raster-dataset service has one raster: ArcGIS draws it whatever the time.
    _, plain = await export(client, "naip", format="png", size="64,64")
    _, timed = await export(
        client, "naip", format="png", size="64,64", time="0", mosaicRule="{not json"
    )
    assert plain == timed


def identify_params(x: float, y: float, **params: Any) -> dict[str, Any]:
    geometry = json.dumps({"x": x, "y": y, "spatialReference": {"wkid": 26914}})
    return {"geometry": geometry, "geometryType": "esriGeometryPoint", **params}


def scene_value(scene: str, x: float, y: float) -> str:
    values = sample_source(data_path(scene), UTM14, np.array([x]), np.array([y]), BANDS)
    return ", ".join(str(int(v)) for v in values[:, 0])


POINT = (488012.3, 5207033.7)


@pytest.mark.parametrize(
    ("params", "scene", "on_top"),
    [
        ({}, SCENE_2020, [2, 1]),
        ({"time": str(T2010)}, SCENE_2010, [1]),
        ({"time": str(T2020)}, SCENE_2020, [2]),
        ({"mosaicRule": '{"mosaicMethod": "esriMosaicNone"}'}, SCENE_2010, [1, 2]),
        (
            {"mosaicRule": '{"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [1]}'},
            SCENE_2010,
            [1],
        ),
    ],
)
async def test_identify_reads_the_selected_scene(
    client: TestClient, params: dict[str, str], scene: str, on_top: list[int]
) -> None:
    answer = await get_json(
        client, f"{SERVICES}/{SERVICE}/ImageServer/identify", **identify_params(*POINT, **params)
    )
    assert answer["value"] == scene_value(scene, *POINT)
    items = answer["catalogItems"]["features"]
    assert [item["attributes"]["OBJECTID"] for item in items] == on_top
    assert answer["catalogItemVisibilities"] == [1] + [0] * (len(on_top) - 1)
    scenes = {1: SCENE_2010, 2: SCENE_2020}
    assert answer["properties"]["Values"] == [
        scene_value(scenes[oid], *POINT).replace(", ", " ") for oid in on_top
    ]
    dates = {1: T2010, 2: T2020}
    assert [item["attributes"]["AcquisitionDate"] for item in items] == [
        dates[oid] for oid in on_top
    ]


async def test_identify_outside_the_time_is_nodata(client: TestClient) -> None:
    answer = await get_json(
        client,
        f"{SERVICES}/{SERVICE}/ImageServer/identify",
        **identify_params(*POINT, time=str(ms(2015, 1, 1))),
    )
    assert answer["value"] == "NoData"
    assert answer["catalogItems"]["features"] == []


async def test_identify_bad_mosaic_rule_is_an_error(client: TestClient) -> None:
    answer = await get_json(
        client,
        f"{SERVICES}/{SERVICE}/ImageServer/identify",
        **identify_params(*POINT, mosaicRule='{"mosaicMethod": "esriMosaicSeamline"}'),
    )
    assert answer["error"]["code"] == 400
    assert "mosaicRule" in answer["error"]["details"][0]


async def test_get_samples_follow_the_mosaic_rule(client: TestClient) -> None:
    points = [POINT, (486000.0, 5209000.0)]
    geometry = {"points": [list(p) for p in points], "spatialReference": {"wkid": 26914}}
    for rule, scene, raster_id in (
        ({"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [1]}, SCENE_2010, 1),
        ({"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [2]}, SCENE_2020, 2),
    ):
        answer = await get_json(
            client,
            f"{SERVICES}/{SERVICE}/ImageServer/getSamples",
            geometry=json.dumps(geometry),
            geometryType="esriGeometryMultipoint",
            mosaicRule=json.dumps(rule),
        )
        assert [s["value"] for s in answer["samples"]] == [scene_value(scene, *p) for p in points]
        assert {s["rasterId"] for s in answer["samples"]} == {raster_id}


async def test_configured_mosaic_service(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    config_file = tmp_path / "imageserver.yaml"
    config_file.write_text(
        "builtin: false\n"
        "services:\n"
        "  years:\n"
        "    rasters:\n"
        f"      - {{path: {data_path(SCENE_2020)}, acquired: 2020-08-31, name: late}}\n"
        f"      - path: {data_path(SCENE_2010)}\n"
        "        acquired: 2010-06-29T12:00:00+02:00\n"
    )
    config = load_config(config_file)
    client = await aiohttp_client(create_app(config))
    info = await get_json(client, f"{SERVICES}/years/ImageServer")
    assert info["timeInfo"]["timeExtent"] == [T2010 + 10 * 3600 * 1000, T2020]
    # ObjectIDs follow the configuration: 1 is the 2020 scene here.
    rule = {"mosaicMethod": "esriMosaicNone"}
    answer = await get_json(
        client,
        f"{SERVICES}/years/ImageServer/identify",
        **identify_params(*POINT, mosaicRule=json.dumps(rule)),
    )
    assert answer["value"] == scene_value(SCENE_2020, *POINT)
    names = [f["attributes"]["Name"] for f in answer["catalogItems"]["features"]]
    assert names == ["late", Path(SCENE_2010).stem]


def test_a_service_has_a_path_or_rasters(tmp_path: Path) -> None:
    config_file = tmp_path / "imageserver.yaml"
    path = data_path(SCENE_2010)
    config_file.write_text(
        f"services:\n  both:\n    path: {path}\n"
        f"    rasters: [{{path: {path}, acquired: 2010-06-29}}]\n"
    )
    with pytest.raises(ConfigError, match="either 'path' or 'rasters'"):
        load_config(config_file)
    config_file.write_text(
        f"services:\n  gone:\n    rasters:\n"
        f"      - {{path: {tmp_path / 'no.tif'}, acquired: 2010-06-29}}\n"
    )
    with pytest.raises(ConfigError, match="no such file"):
        load_config(config_file)


async def test_rasters_of_different_crs_do_not_mosaic(aiohttp_client: AiohttpClient) -> None:
    config = ImageServerConfig.model_validate(
        {
            "builtin": False,
            "services": {
                "mixed": {
                    "name": "mixed",
                    "rasters": [
                        {"path": data_path(SCENE_2010), "acquired": "2010-06-29"},
                        {"path": data_path("RGB.byte.tif"), "acquired": "2011-01-01"},
                    ],
                }
            },
        }
    )
    with pytest.raises(ValueError, match="coordinate reference system, band count"):
        await aiohttp_client(create_app(config))


QUERY = f"{SERVICES}/{SERVICE}/ImageServer/query"


async def test_query_lists_the_catalog(client: TestClient) -> None:
    answer = await get_json(client, QUERY, where="1=1", outFields="*")
    assert answer["objectIdFieldName"] == "OBJECTID"
    assert [f["name"] for f in answer["fields"]] == ["OBJECTID", "Name", "AcquisitionDate"]
    assert answer["spatialReference"]["wkid"] == 26914
    assert [f["attributes"] for f in answer["features"]] == [
        {"OBJECTID": 1, "Name": "NAIP 2010", "AcquisitionDate": T2010},
        {"OBJECTID": 2, "Name": "NAIP 2020", "AcquisitionDate": T2020},
    ]
    # Each footprint is its scene's extent.
    ring = answer["features"][1]["geometry"]["rings"][0]
    assert (min(p[0] for p in ring), max(p[1] for p in ring)) == (485899.0, 5209246.0)


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"time": f"{ms(2015, 1, 1)},null", "returnIdsOnly": "true"}, {"objectIds": [2]}),
        ({"time": str(T2010), "returnCountOnly": "true"}, {"count": 1}),
        ({"objectIds": "2,7", "returnIdsOnly": "true"}, {"objectIds": [2]}),
    ],
)
async def test_query_filters(
    client: TestClient, params: dict[str, str], expect: dict[str, Any]
) -> None:
    answer = await get_json(client, QUERY, **params)
    assert {k: v for k, v in answer.items() if k != "objectIdFieldName"} == expect


async def test_query_out_fields_without_geometry(client: TestClient) -> None:
    answer = await get_json(
        client, QUERY, outFields="acquisitiondate", returnGeometry="false", time=str(T2020)
    )
    assert answer["features"] == [{"attributes": {"AcquisitionDate": T2020}}]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"where": "Name = 'NAIP 2010'"}, "Invalid where"),
        ({"outFields": "Cloud"}, "Invalid outFields"),
        ({"time": "soon"}, "Invalid time"),
        ({"geometry": '{"x": 488000, "y": 5207000}'}, "Invalid geometry"),
        ({"returnExtentOnly": "true"}, "Invalid returnExtentOnly"),
    ],
)
async def test_query_refuses_what_it_cannot_do(
    client: TestClient, params: dict[str, str], says: str
) -> None:
    answer = await get_json(client, QUERY, **params)
    assert answer["error"]["code"] == 400
    assert answer["error"]["details"][0].startswith(says)


async def test_raster_dataset_services_have_no_query(client: TestClient) -> None:
    answer = await get_json(client, f"{SERVICES}/naip/ImageServer/query")
    assert answer["error"]["code"] == 400
