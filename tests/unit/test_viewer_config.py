"""The ``viewer`` section: where the viewer page loads its map libraries from."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.conftest import REPO

URL = "http://gis.example.org/arcgis/rest/services/a/ImageServer"


def viewer(section: dict[str, Any]) -> Any:
    return parse_config({"viewer": section, "layers": {"a": {"url": URL}}}).viewer


def test_defaults_serve_the_libraries_locally() -> None:
    config = parse_config({"layers": {"a": {"url": URL}}}).viewer
    assert config.libraries == "local"
    assert str(config.cdn_url) == "https://unpkg.com/"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://cdn.jsdelivr.net/npm/", "https://cdn.jsdelivr.net/npm/"),
        ("https://cdn.jsdelivr.net/npm", "https://cdn.jsdelivr.net/npm/"),
        ("http://mirror.internal:8080", "http://mirror.internal:8080/"),
    ],
)
def test_cdn_url_is_a_folder(given: str, expected: str) -> None:
    assert str(viewer({"libraries": "cdn", "cdn_url": given}).cdn_url) == expected


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"libraries": "remote"}, "viewer.libraries: Input should be 'local' or 'cdn'"),
        ({"cdn_url": "https://unpkg.com/?meta"}, "viewer.cdn_url: must be a folder URL"),
        ({"cdn_url": "https://unpkg.com/#x"}, "viewer.cdn_url: must be a folder URL"),
        ({"cdn_url": "ftp://unpkg.com/"}, "viewer.cdn_url: URL scheme should be"),
        ({"cdn_url": "unpkg.com"}, "viewer.cdn_url:"),
        ({"cdn": "https://unpkg.com/"}, "viewer.cdn: Extra inputs are not permitted"),
    ],
)
def test_invalid_viewer_sections_name_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        viewer(section)


def test_shipped_configs_keep_the_viewer_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost/0")
    monkeypatch.setenv("ARCGIS_URL", "https://gis.example.org/arcgis")
    for name in ("example.yaml", "demo.yaml"):
        config = load_config(REPO / "config" / name).viewer
        assert config.libraries == "local", name
        assert str(config.cdn_url) == "https://unpkg.com/", name
