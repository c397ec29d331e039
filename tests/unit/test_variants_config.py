"""The styles and time of a layer's configuration, and ISO 8601 time values as ArcGIS asks them
(``gateway.timevalues``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.timevalues import arcgis_time, iso_time, key_part, parse_time

URL = "https://gis.example.org/arcgis/rest/services/naip/ImageServer"


def layer(**extra: Any) -> dict[str, Any]:
    return {"layers": {"naip": {"url": URL, **extra}}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"styles": {"-bad": {"bandIds": [0]}}}, "style name '-bad' must be letters"),
        (
            {"styles": {"a": {"rasterFunction": "Hillshade", "renderingRule": {}}}},
            "give rasterFunction or renderingRule, not both",
        ),
        ({"styles": {"a": {"bandIds": []}}}, "layers.naip.styles.a.bandIds"),
        ({"styles": {"a": {}}, "default_style": "b"}, "default_style 'b' is not a style (a)"),
        ({"time": {"values": []}}, "layers.naip.time.values"),
        ({"time": {"values": ["2020-13-01"]}}, "is not an ISO 8601 date"),
        ({"time": {"values": ["2020-08-31", "2020-08-31T00:00:00Z"]}}, "listed twice"),
        ({"time": {"values": ["2020-08-31"], "default": "2010-06-29"}}, "is not one of"),
        ({"max_variants": 0}, "layers.naip.max_variants"),
        ({"time": {}}, "give values, or from_service: true (not both)"),
        (
            {"time": {"values": ["2020-08-31"], "from_service": True}},
            "give values, or from_service: true (not both)",
        ),
        ({"time": {"from_service": True, "default": "soon"}}, "is not an ISO 8601"),
    ],
)
def test_bad_variants_name_the_field(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(layer(**extra))


def test_unquoted_yaml_dates_are_time_values(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"layers:\n  naip:\n    url: {URL}\n"
        "    time: {values: [2010-06-29, 2020-08-31T10:00:00Z], default: 2010-06-29}\n"
    )
    time = load_config(path).layers["naip"].time
    assert time is not None
    assert time.values == ["2010-06-29", "2020-08-31T10:00:00+00:00"]
    assert time.default == "2010-06-29"


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("2020-08-31", (1598832000000, 1598832000000)),
        ("2020-08-31T00:00:00Z", (1598832000000, 1598832000000)),
        ("2020-08-31T02:00:00+02:00", (1598832000000, 1598832000000)),
        ("2020-08-31T00:00:00.250", (1598832000250, 1598832000250)),
        ("2010-01-01/2010-12-31T23:59:59Z", (1262304000000, 1293839999000)),
    ],
)
def test_time_values_in_epoch_milliseconds(text: str, span: tuple[int, int]) -> None:
    assert parse_time(text) == span


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (1598832000000, "2020-08-31"),
        (1598868000000, "2020-08-31T10:00:00Z"),
        (1598868000250, "2020-08-31T10:00:00.250Z"),
    ],
)
def test_iso_time_of_epoch_milliseconds(epoch: int, text: str) -> None:
    assert iso_time(epoch) == text
    assert parse_time(text) == (epoch, epoch)


def test_arcgis_time_and_key_part() -> None:
    assert arcgis_time((5, 5)) == "5" and key_part((5, 5)) == "5"
    assert arcgis_time((5, 9)) == "5,9" and key_part((5, 9)) == "5_9"


@pytest.mark.parametrize("text", ["", "yesterday", "2020-08-31/", "2020/2010", "9" * 100])
def test_what_is_not_a_time_value(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO 8601|ends before"):
        parse_time(text)
