"""exportImage parameter parsing: defaults, aliases, spatial references, validation."""

from __future__ import annotations

import json

import pytest
from rasterio.crs import CRS
from rasterio.enums import Resampling

from imageserver.params import (
    ImageFormat,
    NoDataRule,
    ParameterError,
    ResponseFormat,
    normalize_params,
    parse_export_params,
)
from imageserver.spatialref import crs_from_wkid, parse_spatial_reference, spatial_reference_json


def parse(band_count: int = 3, **params: str):
    return parse_export_params(normalize_params(params), band_count=band_count)


def test_defaults() -> None:
    export = parse()
    assert export.bbox is None and export.bbox_crs is None and export.image_crs is None
    assert (export.width, export.height) == (400, 400)
    assert export.image_format is ImageFormat.JPGPNG
    assert export.response_format is ResponseFormat.JSON
    assert export.pixel_type is None
    assert export.nodata is None
    assert export.resampling is None
    assert export.band_ids is None
    assert export.adjust_aspect_ratio is True
    assert export.quality == 75


def test_names_are_case_insensitive_and_empty_values_ignored() -> None:
    params = normalize_params({"BBOX": "1,2,3,4", "bboxSR": "", "Time": ""}, {"SIZE": "10,20"})
    assert params == {"bbox": "1,2,3,4", "size": "10,20"}
    export = parse_export_params(params, band_count=1)
    assert export.bbox == (1, 2, 3, 4)
    assert (export.width, export.height) == (10, 20)


def test_body_overrides_query() -> None:
    assert normalize_params({"f": "json"}, {"F": "image"}) == {"f": "image"}


def test_fractional_size_is_rounded() -> None:
    export = parse(size="256.4,255.6")
    assert (export.width, export.height) == (256, 256)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("RSP_BilinearInterpolation", Resampling.bilinear),
        ("+RSP_CubicConvolution", Resampling.cubic),
        (" RSP_Majority", Resampling.mode),
        ("rsp_nearestneighbor", Resampling.nearest),
    ],
)
def test_interpolation_names(value: str, expected: Resampling) -> None:
    assert parse(interpolation=value).resampling is expected


def test_nodata_interpretation_defaults() -> None:
    assert parse(noData="0").nodata == NoDataRule((0.0,), match_all=False)
    assert parse(noData="1,2,3").nodata == NoDataRule((1.0, 2.0, 3.0), match_all=True)
    assert parse(noData="0", noDataInterpretation="esriNoDataMatchAll").nodata == NoDataRule(
        (0.0,), match_all=True
    )
    # One value per *requested* band.
    assert parse(noData="1,2", bandIds="2,0").nodata == NoDataRule((1.0, 2.0), match_all=True)


def test_format_and_pixel_type_aliases() -> None:
    assert parse(format="JPEG").image_format is ImageFormat.JPG
    assert parse(format="PNG32").image_format is ImageFormat.PNG32
    assert parse(pixelType="f32").pixel_type is not None
    assert parse(pixelType="UNKNOWN").pixel_type is None
    assert parse(f="html").response_format is ResponseFormat.JSON


def test_bbox_as_envelope_json_carries_its_spatial_reference() -> None:
    export = parse(bbox='{"xmin":1,"ymin":2,"xmax":3,"ymax":4,"spatialReference":{"wkid":3857}}')
    assert export.bbox == (1, 2, 3, 4)
    assert export.bbox_crs == CRS.from_epsg(3857)
    # An explicit bboxSR wins over the envelope's.
    assert parse(bbox='{"xmin":1,"ymin":2,"xmax":3,"ymax":4}', bboxSR="4326").bbox_crs == (
        CRS.from_epsg(4326)
    )


def test_band_ids_keep_order_and_accept_brackets() -> None:
    assert parse(band_count=4, bandIds="3,0,1").band_ids == (3, 0, 1)
    assert parse(band_count=4, bandIds="[2,2]").band_ids == (2, 2)


def test_parameter_error_lists_each_problem() -> None:
    with pytest.raises(ParameterError) as caught:
        parse(size="0,0", format="bmp", bandIds="9", noData="1,2")
    details = caught.value.details
    assert len(details) == 4
    assert {d.split()[1] for d in details} == {"size", "format", "bandIds", "noData"}


@pytest.mark.parametrize(
    "value", ["3857", "102100", "102113", "900913", '{"wkid": 102100}', '{"latestWkid": 3857}']
)
def test_web_mercator_codes(value: str) -> None:
    assert parse_spatial_reference(value) == CRS.from_epsg(3857)


def test_latest_wkid_wins_over_wkid() -> None:
    assert parse_spatial_reference('{"wkid": 102100, "latestWkid": 4326}') == CRS.from_epsg(4326)


def test_esri_codes_and_wkt() -> None:
    assert crs_from_wkid(54030).to_authority() == ("ESRI", "54030")  # World Robinson
    assert crs_from_wkid(32633) == CRS.from_epsg(32633)
    wkt = json.dumps({"wkt": CRS.from_epsg(26918).to_wkt()})
    assert parse_spatial_reference(wkt) == CRS.from_epsg(26918)


@pytest.mark.parametrize("value", ["999999", "abc", "{", '{"foo": 1}', "[4326]", '{"wkid": true}'])
def test_invalid_spatial_references(value: str) -> None:
    with pytest.raises(ValueError):
        parse_spatial_reference(value)


def test_spatial_reference_json() -> None:
    assert spatial_reference_json(CRS.from_epsg(3857)) == {"wkid": 102100, "latestWkid": 3857}
    assert spatial_reference_json(CRS.from_epsg(4326)) == {"wkid": 4326, "latestWkid": 4326}
    assert spatial_reference_json(crs_from_wkid(54030)) == {"wkid": 54030}
    custom = CRS.from_proj4("+proj=ortho +lat_0=10 +lon_0=20 +ellps=WGS84")
    assert set(spatial_reference_json(custom)) == {"wkt"}
