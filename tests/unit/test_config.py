"""Configuration: validation messages name the bad field, environment substitution, the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config, substitute_env

REPO = Path(__file__).resolve().parents[2]
URL = "http://gis.example.org/arcgis/rest/services/a/ImageServer"


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config({"layers": {"a": {"url": URL}}})
    assert config.server.port == 8080
    assert config.cache.effective_backend == "memory"
    layer = config.layers["a"]
    assert (layer.formats, layer.minzoom, layer.maxzoom, layer.ttl) == (
        ["png", "jpg"],
        0,
        None,
        86400,
    )
    assert layer.web_mercator_wkid == 3857
    assert (
        parse_config(
            {"cache": {"redis_url": "redis://localhost/1"}, "layers": {"a": {"url": URL}}}
        ).cache.effective_backend
        == "redis"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layers": {"a": {"url": URL, "maxzoom": 40}}}, "layers.a.maxzoom:"),
        ({"layers": {"a": {"url": URL, "minzoom": 5, "maxzoom": 3}}}, "layers.a: minzoom"),
        ({"layers": {"a": {"url": "http://x/arcgis/rest/services/a/MapServer"}}}, "layers.a.url:"),
        ({"layers": {"a": {"url": URL, "formats": ["gif"]}}}, "layers.a.formats.0:"),
        ({"layers": {"a": {"url": URL, "export": {"bandIDs": [1]}}}}, "layers.a.export.bandIDs:"),
        ({"layers": {"a b": {"url": URL}}}, "layers: layer name 'a b'"),
        ({"layers": {}}, "layers:"),
        ({"cache": {"backend": "redis"}, "layers": {"a": {"url": URL}}}, "cache: backend 'redis'"),
        ({"cache": {"redis_url": "http://x"}, "layers": {"a": {"url": URL}}}, "cache.redis_url:"),
        ({"server": {"port": "eighty"}, "layers": {"a": {"url": URL}}}, "server.port:"),
        ({"layers": {"a": {"url": URL, "web_mercator_wkid": 4326}}}, "layers.a.web_mercator_wkid:"),
        ([], "the top level must be a mapping"),
    ],
)
def test_invalid_config_names_the_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "gw.yaml")
    assert str(caught.value).startswith(f"gw.yaml: {message}"), str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost:99999/0", "port '99999' is not a number from 1 to 65535"),
        ("redis://localhost:abc/0", "port 'abc' is not a number from 1 to 65535"),
        ("redis://localhost:0/0", "port '0' is not a number from 1 to 65535"),
        ("rediss://gw:secret@redis:65536/2", "port '65536' is not a number from 1 to 65535"),
        ("redis://[::1]:99999/0", "port '99999' is not a number from 1 to 65535"),
        ("redis+sentinel://s1:26379,s2:99999/mymaster", "port '99999' is not a number"),
        ("redis+sentinel://s1:abc/mymaster/0", "port 'abc' is not a number"),
        ("redis+cluster://n1:7000,n2:99999", "port '99999' is not a number"),
        ("rediss+cluster://n1:abc", "port 'abc' is not a number"),
        ("redis://localhost:6379/abc", "the database 'abc' (the URL's path) is not a whole number"),
        ("redis://localhost:6379/-1", "the database '-1' (the URL's path) is not a whole number"),
        ("redis://localhost:6379/1/2", "the database '1/2' (the URL's path) is not a whole number"),
        ("redis://localhost:6379?db=x", "Invalid value for 'db' in connection URL."),
        ("redis://localhost:6379?db=-1", "the database number must not be negative"),
        ("redis+sentinel://s1:26379/mymaster/x", "the database after the service must be a number"),
    ],
)
def test_redis_url_is_checked_as_the_cache_reads_it(url: str, message: str) -> None:
    data = {"cache": {"redis_url": url}, "layers": {"a": {"url": URL}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "gw.yaml")
    assert str(caught.value).startswith(f"gw.yaml: cache.redis_url: {message}")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379/15",
        "redis://[::1]:6379/0",
        "redis://[::1]/0",
        "rediss://gw:p%40ss@redis:6380/2?ssl_ca_certs=/etc/ssl/redis-ca.pem",
        "redis://localhost:65535?db=3",
        "redis+sentinel://s1:26379,s2:26380/mymaster/3",
        "rediss+cluster://:pw@n1:7000,n2:7001",
    ],
)
def test_good_redis_urls_pass(url: str) -> None:
    data = {"cache": {"redis_url": url}, "layers": {"a": {"url": URL}}}
    assert parse_config(data).cache.redis_url == url


def test_check_config_rejects_a_bad_redis_port(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"cache:\n  redis_url: redis://localhost:99999/0\nlayers:\n  a:\n    url: {URL}\n"
    )
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tile-gateway: invalid configuration: {config}: cache.redis_url: "
        "port '99999' is not a number from 1 to 65535"
    ]


def test_environment_substitution() -> None:
    env = {"HOST": "gis.internal", "EMPTY": ""}
    assert substitute_env({"a": ["${HOST}/x", "${NOPE:-dflt}", "${EMPTY:-e}"]}, env) == {
        "a": ["gis.internal/x", "dflt", "e"]
    }
    with pytest.raises(ConfigError) as caught:
        substitute_env("${NOPE}", env)
    assert str(caught.value) == (
        "environment variable NOPE is referenced but not set: set it (export NOPE=...) "
        "or give the reference a default in the file: ${NOPE:-default}"
    )


def test_shipped_configs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGESERVER_URL", raising=False)
    demo = load_config(REPO / "config" / "demo.yaml")
    assert set(demo.layers) == {"bluemarble", "shadedrelief", "etopo", "jacksboro", "naip"}
    monkeypatch.setenv("ARCGIS_URL", "https://gis.example.org/arcgis")
    monkeypatch.setenv("REDIS_URL", "rediss://gw:secret@redis.example.org:6380/2")
    example = load_config(REPO / "config" / "example.yaml")
    assert example.cache.effective_backend == "redis"
    assert str(example.layers["imagery"].url).startswith("https://gis.example.org/arcgis/")
    assert example.jobs is not None
    assert example.jobs.service.base_url == (
        "https://gis.example.org/arcgis/rest/services/System/RasterAnalysisTools/GPServer"
    )


@pytest.mark.parametrize(
    ("jobs", "wanted"),
    [
        ({"poll_min": 5, "poll_max": 1}, "poll_max must not be below poll_min"),
        (
            {"service": {"url": "https://gis.example/gp", "credentials": "nope"}},
            "unknown credentials",
        ),
        ({"service": {"url": "https://gis.example/gp?token=abc"}}, "query string"),
        ({"path": "a/../b"}, "'.' or '..'"),
    ],
)
def test_jobs_settings_are_checked(jobs: dict[str, Any], wanted: str) -> None:
    section = {"service": {"url": "https://gis.example/gp"}, **jobs}
    with pytest.raises(ConfigError, match=re.escape(wanted)):
        parse_config(
            {"layers": {"a": {"url": "https://gis.example/a/ImageServer"}}, "jobs": section}
        )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_example_validates_as_its_header_says() -> None:
    header = []
    for line in (REPO / "config" / "example.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.removeprefix("#").strip())
    # The command with the variable assignments before it, as a user would copy it.
    [command] = [
        match.group(0)
        for line in header
        if (match := re.search(r"([A-Z_][A-Z0-9_]*=\S+\s+)*tile-gateway check-config \S+", line))
    ]
    # Only what the header sets: none of the variables it uses may come from this environment.
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ARCGIS_URL")}
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        command,
        shell=True,
        cwd=REPO,
        env={**env, "PATH": f"{bin_dir}:{env['PATH']}", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    assert result.stdout.startswith("config/example.yaml: OK, 2 layer(s): imagery, false-colour")


def test_check_config_names_an_unset_variable_and_how_to_set_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ARCGIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "config/example.yaml"],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tile-gateway: invalid configuration: config/example.yaml: environment variable "
        "REDIS_URL is referenced but not set: set it (export REDIS_URL=...) or give the "
        "reference a default in the file: ${REDIS_URL:-default}"
    ]


def test_check_config_cli(tmp_path: Path) -> None:
    good = run_cli("check-config", str(REPO / "config" / "demo.yaml"))
    assert good.returncode == 0, good.stderr
    assert "5 layer(s)" in good.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"layers:\n  a:\n    url: {URL}\n    ttl: -5\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tile-gateway: invalid configuration: {bad}: layers.a.ttl: "
        "Input should be greater than or equal to 1"
    ]
    missing = run_cli("serve", "--config", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2
    assert "cannot read the file" in missing.stderr
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("layers: [\n")
    assert run_cli("check-config", str(not_yaml)).returncode == 2


def test_help_explains_each_command() -> None:
    for command in ("serve", "demo", "check-config"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "usage: tile-gateway" in result.stdout


def test_a_proxied_service_must_name_configured_credentials() -> None:
    tree = {
        "layers": {"a": {"url": "https://example.org/arcgis/rest/services/a/ImageServer"}},
        "proxy": {
            "services": [
                {
                    "path": "",
                    "url": "https://example.org/arcgis/rest/services",
                    "credentials": "enterprise",
                    "allow": ["a/ImageServer"],
                }
            ]
        },
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(tree)
    assert "proxy.services[path='']" in str(caught.value)
    assert "unknown credentials 'enterprise' (none are configured)" in str(caught.value)
    tree["credentials"] = {"enterprise": {"type": "static", "token_env": "ARCGIS_API_KEY"}}
    assert parse_config(tree).proxy is not None


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6x79/0",
        "redis://:s3cret@localhost:abc",
        "redis://localhost:-1/0",
        "redis://localhost:+80/0",
        "redis://localhost:²/0",
        "redis://localhost:\uff11\uff12/0",  # fullwidth digits: str.isdigit takes them
        "redis://localhost:/0",
        "redis://localhost:65536",
        "redis://localhost?port=abc",
        "redis://localhost?port=99999",
        "redis+sentinel://s1:²/mymaster",
        "redis+cluster://n1:7000,n2:",
    ],
)
def test_check_config_refuses_a_redis_port_that_is_no_port(tmp_path: Path, url: str) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(f"cache:\n  redis_url: '{url}'\nlayers:\n  a:\n    url: {URL}\n")
    result = run_cli("check-config", str(config))
    assert result.returncode == 2, result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"tile-gateway: invalid configuration: {config}: cache.redis_url: ")
    assert "s3cret" not in line


def test_a_sentinel_database_of_other_digits_is_refused() -> None:
    data = {"cache": {"redis_url": "redis+sentinel://s1:26379/m/²"}, "layers": {"a": {"url": URL}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "gw.yaml")
    assert str(caught.value) == (
        "gw.yaml: cache.redis_url: the database after the service must be a number"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # The offending line holds a password: the message says where, never what.
        (
            "cache:\n  redis_url: redis://:hunter2@redis:6379/0: x\nlayers: {}\n",
            "mapping values are not allowed here at line 2, column 43",
        ),
        (
            "layers:\n  a:\n    url: 'http://u:hunter2@gis/arcgis\n",
            "found unexpected end of stream at line 4, column 1",
        ),
        ("layers: [hunter2,\n", "expected the node content, but found '<stream end>' at line 2"),
        ("a: hunter2\n\tb: 1\n", "found character '\\t' that cannot start any token at line 2"),
        ("password: hunter2\x01\n", "character #x0001 is not allowed, at character 17"),
        ("[" * 5000 + "hunter2", "nested too deeply"),
    ],
)
def test_a_yaml_error_says_where_without_the_line(tmp_path: Path, text: str, where: str) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(text)
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"tile-gateway: invalid configuration: {config}: not valid YAML: ")
    assert where in line
    assert "hunter2" not in line


def test_a_config_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_bytes(b"layers:\n  a:\n    title: caf\xe9\n")
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tile-gateway: invalid configuration: {config}: not UTF-8 text (line 3)"
    ]


def test_tracing_is_off_by_default_and_needs_the_otel_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracing = parse_config({"layers": {"a": {"url": URL}}}).server.tracing
    assert (tracing.enabled, tracing.endpoint, tracing.service_name) == (
        False,
        None,
        "tile-gateway",
    )
    data = {"server": {"tracing": {"enabled": True}}, "layers": {"a": {"url": URL}}}
    assert parse_config(data).server.tracing.enabled
    # An environment without one of the extra's packages: a config error naming the extra.
    monkeypatch.setattr(
        "gateway.config._OTEL_MODULES", ("opentelemetry.sdk", "opentelemetry_not_installed.x")
    )
    with pytest.raises(ConfigError, match=r"server\.tracing\.enabled.*tile-gateway\[otel\]"):
        parse_config(data)
    # Off, the extra is not needed.
    assert not parse_config({"layers": {"a": {"url": URL}}}).server.tracing.enabled
