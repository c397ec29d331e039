"""The hosts a gateway answers for (``server.allowed_hosts``) and the ``Vary`` of documents
whose absolute URLs come from the request's host."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from gateway.config import ConfigError, config_warnings
from tests.conftest import REPO, MakeGateway, gateway_config
from tests.integration.conftest import FakeUpstream

OWS = "{http://www.opengis.net/ows/1.1}"
CAPS = "/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"
# Every document whose URLs are built from the public base, per front.
DOCUMENTS = (
    "/tiles/fake/tilejson.json",
    CAPS,
    "/wmts/1.0.0/WMTSCapabilities.xml",
    "/ogcapi",
    "/ogcapi/collections",
    "/ogcapi/collections/fake",
    "/ogcapi/collections/fake/map/tiles",
    "/ogcapi/collections/fake/map/tiles/WebMercatorQuad",
    "/ogcapi/tileMatrixSets",
)


def layer(url: str) -> dict[str, object]:
    return {"url": url, "formats": ["png"], "meta_size": [1, 1]}


def vary(headers: object) -> set[str]:
    value = headers.get("Vary", "")  # type: ignore[attr-defined]
    return {part.strip() for part in value.split(",") if part.strip()}


ALLOWED = ["tiles.example.org", "*.maps.example.com", "127.0.0.1:8443"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("tiles.example.org", True),
        ("TILES.example.org.:8080", True),  # any port, any case, the root dot
        ("a.maps.example.com", True),
        ("b.a.maps.example.com:81", True),
        ("maps.example.com", False),  # *.domain is the subdomains only
        ("127.0.0.1:8443", True),
        ("127.0.0.1:8444", False),  # host:port is that port only
        ("evil.example/abc?x=", False),
        ("tiles.example.org.evil.example", False),
    ],
)
async def test_only_allowed_hosts_are_answered(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream, host: str, allowed: bool
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)}, allowed_hosts=ALLOWED)
    response = await client.get("/tiles/fake/tilejson.json", headers={"Host": host})
    if allowed:
        assert response.status == 200
        assert (await response.json())["tiles"][0].startswith(f"http://{host}/tiles/fake/")
    else:
        assert response.status == 400
        body = await response.json()
        assert body["error"]["code"] == 400
        assert "allowed_hosts" in body["error"]["message"]
        assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_a_refused_host_is_answered_in_each_fronts_own_format(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)}, allowed_hosts=ALLOWED)
    evil = {"Host": "evil.example"}
    for path in ("/", "/layers.json", "/no/such/path", "/ogcapi", "/tiles/fake/0/0/0.png"):
        response = await client.get(path, headers=evil)
        assert response.status == 400, path
        assert (await response.json())["error"]["code"] == 400, path
    for path in (CAPS, "/wmts/1.0.0/WMTSCapabilities.xml", "/wmts/bogus"):
        response = await client.get(path, headers=evil)
        assert response.status == 400, path
        report = etree.fromstring(await response.read())
        assert report.tag == f"{OWS}ExceptionReport", path
        assert report.find(f"{OWS}Exception").get("exceptionCode") == "NoApplicableCode"
    preflight = await client.options(
        "/tiles/fake/0/0/0.png", headers={**evil, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status == 400
    # Kubernetes probes name the pod's address: they are answered whatever the host.
    assert (await client.get("/healthz", headers=evil)).status == 200


async def test_a_cached_tile_is_not_answered_to_a_refused_host(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)}, allowed_hosts=ALLOWED)
    good = {"Host": "tiles.example.org"}
    for expected in ("MISS", "HIT", "HIT"):  # the last from the ready answers
        response = await client.get("/tiles/fake/1/0/0.png", headers=good)
        assert response.headers["X-Cache"] == expected
    response = await client.get("/tiles/fake/1/0/0.png", headers={"Host": "evil.example"})
    assert response.status == 400
    assert response.headers["Content-Type"].startswith("application/json")


async def test_behind_a_trusted_proxy_the_forwarded_host_is_checked(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway(
        {"fake": layer(fake_upstream.url)}, allowed_hosts=ALLOWED, trust_proxy=True
    )
    inner = {"Host": "gateway.internal:8080"}
    forwarded = {**inner, "X-Forwarded-Host": "tiles.example.org, gateway.internal"}
    assert (await client.get("/ogcapi", headers=forwarded)).status == 200
    evil = {"Host": "tiles.example.org", "X-Forwarded-Host": "evil.example"}
    assert (await client.get("/ogcapi", headers=evil)).status == 400
    # Without the header the proxy would have set, the Host itself is checked.
    assert (await client.get("/ogcapi", headers=inner)).status == 400


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({}, {"Host"}),
        (
            {"trust_proxy": True},
            {"Host", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Prefix"},
        ),
        ({"public_url": "https://tiles.example.org/gw", "trust_proxy": True}, set()),
    ],
)
async def test_documents_vary_with_the_headers_their_urls_come_from(
    make_gateway: MakeGateway,
    fake_upstream: FakeUpstream,
    server: dict[str, object],
    expected: set[str],
) -> None:
    client = await make_gateway({"fake": layer(fake_upstream.url)}, **server)
    for path in DOCUMENTS:
        response = await client.get(path, headers={"Accept-Encoding": "identity"})
        assert response.status == 200, path
        assert vary(response.headers) - {"Accept-Encoding"} == expected, path
    # Documents without a URL of the gateway are one document whatever the host.
    for path in ("/ogcapi/conformance", "/ogcapi/tileMatrixSets/WebMercatorQuad"):
        response = await client.get(path)
        assert response.status == 200, path
        assert not vary(response.headers) & {"Host", "X-Forwarded-Host"}, path


def test_a_config_without_public_url_or_allowed_hosts_is_warned_about() -> None:
    layers = {"fake": {"url": "http://upstream.example/arcgis/rest/services/x/ImageServer"}}
    (warning,) = config_warnings(gateway_config(layers))
    assert "server.allowed_hosts" in warning and "server.public_url" in warning
    assert "X-Forwarded-Host" in config_warnings(gateway_config(layers, trust_proxy=True))[0]
    assert config_warnings(gateway_config(layers, public_url="https://t.example.org/")) == []
    assert config_warnings(gateway_config(layers, allowed_hosts=["t.example.org"])) == []


def test_check_config_warns_without_public_url_or_allowed_hosts(tmp_path: Path) -> None:
    url = "http://upstream.example/arcgis/rest/services/x/ImageServer"
    results = {}
    for name, server in (("open", ""), ("fixed", "server:\n  allowed_hosts: [t.example.org]\n")):
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"{server}layers:\n  x:\n    url: {url}\n")
        results[name] = subprocess.run(
            [sys.executable, "-m", "gateway", "check-config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert results["open"].returncode == results["fixed"].returncode == 0
    assert "warning: server.public_url and server.allowed_hosts" in results["open"].stderr
    assert "warning" not in results["fixed"].stderr


@pytest.mark.parametrize("pattern", ["evil.example/abc", "*", "a.*.example", "", "host:port"])
def test_allowed_hosts_must_be_host_patterns(pattern: str) -> None:
    layers = {"fake": {"url": "http://upstream.example/arcgis/rest/services/x/ImageServer"}}
    with pytest.raises(ConfigError, match=r"server\.allowed_hosts"):
        gateway_config(layers, allowed_hosts=[pattern])
