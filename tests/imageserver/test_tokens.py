"""Token security of the reference ImageServer, flow by flow, over a real socket: discovery,
the three token services, the ways to send a token, expiry, bindings, API keys, and the
498/499 answers in each configured style (docs/arcgis-rest.md §3-§4)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from imageserver.app import create_app
from imageserver.config import ImageServerConfig, SecurityConfig, ServiceSpec, TokenErrorStyle
from tests.imageserver.conftest import AiohttpClient, data_path
from tests.imageserver.helpers import SERVICES, export_path

PASSWORD = "test-password-alice"
APP_ID, APP_SECRET = "test-app-id", "test-app-secret"
API_KEY = "test-api-key-0123456789"
EXPORT = {
    "bbox": "200000,2700000,210000,2710000",
    "size": "32,32",
    "format": "png",
    "f": "image",
}
SERVER_TOKENS = "/arcgis/tokens/generateToken"
PORTAL_TOKENS = "/arcgis/sharing/rest/generateToken"
OAUTH2 = "/arcgis/sharing/rest/oauth2/token"


def secured(**security: Any) -> ImageServerConfig:
    """``rgb`` secured, ``dtm`` public; one user, one OAuth app, one API key."""
    settings: dict[str, Any] = {
        "enabled": True,
        "users": {"alice": PASSWORD},
        "apps": {APP_ID: APP_SECRET},
        "api_keys": (API_KEY,),
        "token_lifetime": 60,
        "secured_services": ("rgb",),
        "stats_endpoint": True,
        **security,
    }
    services = {
        name: ServiceSpec(name=name, path=data_path(file))
        for name, file in (("rgb", "RGB.byte.tif"), ("dtm", "dtm.tif"))
    }
    return ImageServerConfig(
        services=services, builtin=False, security=SecurityConfig.model_validate(settings)
    )


@pytest.fixture
async def secure(aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(create_app(secured()))


async def post_json(http: TestClient, path: str, **fields: str) -> dict[str, Any]:
    response = await http.post(path, data={"f": "json", **fields})
    assert response.status == 200
    return json.loads(await response.text())


async def server_token(http: TestClient, **fields: str) -> str:
    answer = await post_json(http, SERVER_TOKENS, username="alice", password=PASSWORD, **fields)
    return answer["token"]


async def export_status(
    client: TestClient, service: str = "rgb", headers: dict[str, str] | None = None, **params: str
) -> tuple[int, str, bytes]:
    """exportImage; returns (HTTP status, content type, body)."""
    response = await client.get(export_path(service), params={**EXPORT, **params}, headers=headers)
    return response.status, response.content_type, await response.read()


async def assert_image(client: TestClient, service: str = "rgb", **kwargs: Any) -> None:
    status, content_type, body = await export_status(client, service, **kwargs)
    assert (status, content_type) == (200, "image/png"), body[:300]


async def arcgis_error(client: TestClient, service: str = "rgb", **kwargs: Any) -> dict[str, Any]:
    status, content_type, body = await export_status(client, service, **kwargs)
    assert (status, content_type) == (200, "application/json"), body[:300]
    return json.loads(body)["error"]


async def stats(client: TestClient) -> dict[str, Any]:
    response = await client.get("/_test/stats")
    assert response.status == 200
    return await response.json()


async def test_discovery_then_token_then_image(secure: TestClient) -> None:
    info = await (await secure.get("/arcgis/rest/info", params={"f": "json"})).json()
    auth = info["authInfo"]
    assert auth["isTokenBasedSecurity"] is True
    assert auth["shortLivedTokenValidity"] == 1
    assert "owningSystemUrl" not in info
    # A stand-alone server advertises its tokens root; resource-proxy posts request=getToken.
    url = auth["tokenServicesUrl"]
    assert url == str(secure.make_url("/arcgis/tokens/"))
    response = await secure.session.post(
        url,
        data={"request": "getToken", "username": "alice", "password": PASSWORD, "f": "json"},
    )
    answer = await response.json()
    assert set(answer) == {"token", "expires", "ssl"}
    assert answer["expires"] == pytest.approx((time.time() + 60) * 1000, abs=5000)
    await assert_image(secure, token=answer["token"])


async def test_federated_server_points_at_its_portal(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(secured(federated=True)))
    info = await (await client.get("/arcgis/rest/info", params={"f": "json"})).json()
    assert info["owningSystemUrl"] == str(client.make_url("/arcgis"))
    assert info["authInfo"]["tokenServicesUrl"] == str(client.make_url(PORTAL_TOKENS))
    portal = await (await client.get("/arcgis/sharing/rest/info", params={"f": "json"})).json()
    assert portal["authInfo"]["tokenServicesUrl"] == str(client.make_url(PORTAL_TOKENS))


async def test_token_in_each_channel(secure: TestClient) -> None:
    token = await server_token(secure)
    await assert_image(secure, token=token)
    await assert_image(secure, headers={"X-Esri-Authorization": f"Bearer {token}"})
    await assert_image(secure, headers={"Authorization": f"Bearer {token}"})
    form = await secure.post(export_path("rgb"), data={**EXPORT, "token": token})
    assert form.content_type == "image/png"
    assert (await stats(secure))["tokensIssued"]["tokens/generateToken"] == 1


async def test_missing_and_invalid_tokens_are_499_and_498_under_http_200(
    secure: TestClient,
) -> None:
    required = await arcgis_error(secure)
    assert required == {
        "code": 499,
        "message": "Token Required",
        "messageCode": "GWM_0003",
        "details": ["Token Required"],
    }
    invalid = await arcgis_error(secure, token="not-a-token")
    assert (invalid["code"], invalid["message"]) == (498, "Invalid Token")
    for path in (f"{SERVICES}/rgb/ImageServer", f"{SERVICES}/rgb/ImageServer/identify"):
        document = await (await secure.get(path, params={"f": "json"})).json()
        assert document["error"]["code"] == 499, path
    # A public service works without a token but refuses an invalid one, as ArcGIS does.
    await assert_image(secure, "dtm", bbox="321600,4297600,321800,4297800")
    public = await arcgis_error(secure, "dtm", token="not-a-token")
    assert public["code"] == 498
    assert (await stats(secure))["refused"] == {"498": 2, "499": 3}


@pytest.mark.parametrize(
    ("style", "status", "content_type"),
    [
        (TokenErrorStyle.STATUS, {499: 499, 498: 498}, "application/json"),
        (TokenErrorStyle.HTML, {499: 200, 498: 200}, "text/html"),
        (TokenErrorStyle.JSON, {499: 200, 498: 200}, "application/json"),
    ],
)
async def test_error_styles(
    aiohttp_client: AiohttpClient, style: TokenErrorStyle, status: dict[int, int], content_type: str
) -> None:
    client = await aiohttp_client(create_app(secured(token_errors=style)))
    for code, params, text in ((499, {}, "Token Required"), (498, {"token": "x"}, "Invalid Token")):
        got_status, got_type, body = await export_status(client, **params)
        assert (got_status, got_type) == (status[code], content_type)
        if content_type == "text/html":
            assert f"<title>{text}</title>" in body.decode()
        else:
            assert json.loads(body)["error"]["code"] == code


async def test_tokens_expire(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(secured(token_lifetime=1)))
    # A longer expiration (minutes) is clamped to the maximum, not refused.
    answer = await post_json(
        client, SERVER_TOKENS, username="alice", password=PASSWORD, expiration="60"
    )
    assert answer["expires"] == pytest.approx((time.time() + 1) * 1000, abs=500)
    await assert_image(client, token=answer["token"])
    await asyncio.sleep(max(0.0, answer["expires"] / 1000 - time.time()) + 0.1)
    assert (await arcgis_error(client, token=answer["token"]))["code"] == 498
    await assert_image(client, token=await server_token(client))
    await assert_image(client, token=API_KEY)


async def test_expiry_in_the_middle_of_a_load(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(secured(token_lifetime=1)))

    async def token_expiring() -> tuple[str, float]:
        answer = await post_json(client, SERVER_TOKENS, username="alice", password=PASSWORD)
        return answer["token"], answer["expires"] / 1000

    token, expires = await token_expiring()
    first_expiry = expires
    codes: list[int] = []
    # Keep loading images across the expiry; renew on 498, as rest-js and resource-proxy do.
    while time.time() < first_expiry + 0.5:
        sent = time.time()
        _, content_type, body = await export_status(client, token=token)
        if content_type == "image/png":
            assert sent < expires + 0.001, "an expired token was accepted"
            codes.append(200)
            continue
        assert json.loads(body)["error"]["code"] == 498
        assert time.time() >= expires, "a live token was refused"
        codes.append(498)
        token, expires = await token_expiring()
    assert codes.count(498) == 1, codes
    assert codes[0] == codes[-1] == 200
    assert (await stats(client))["tokensIssued"]["tokens/generateToken"] == 2


async def test_referer_bound_token(secure: TestClient) -> None:
    token = await server_token(secure, client="referer", referer="https://app.example.org")
    await assert_image(secure, token=token, headers={"Referer": "https://app.example.org"})
    await assert_image(
        secure, token=token, headers={"Referer": "https://app.example.org/map.html?x=1"}
    )
    for referer in ("https://other.example.org/", "https://app.example.org.evil.example/", None):
        headers = {"Referer": referer} if referer else None
        assert (await arcgis_error(secure, token=token, headers=headers))["code"] == 498, referer
    # client omitted with a referer: bound to it (Python API 1.8 and resource-proxy send this).
    implicit = await server_token(secure, referer="http")
    await assert_image(secure, token=implicit, headers={"Referer": "http"})
    assert (await arcgis_error(secure, token=implicit))["code"] == 498


async def test_referer_binding_needs_a_referer(secure: TestClient) -> None:
    answer = await post_json(
        secure, SERVER_TOKENS, username="alice", password=PASSWORD, client="referer"
    )
    assert answer["error"]["code"] == 400
    assert "'referer' must be specified." in answer["error"]["details"]


async def test_request_ip_and_ip_bound_tokens(secure: TestClient) -> None:
    bound_here = await server_token(secure, client="requestip")
    bound_there = await server_token(secure, client="ip", ip="127.0.0.2")
    await assert_image(secure, token=bound_here)
    assert (await arcgis_error(secure, token=bound_there))["code"] == 498
    # The whole of 127.0.0.0/8 is loopback: a second client connects from 127.0.0.2.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        for token, expected in ((bound_here, 498), (bound_there, None)):
            async with other.get(
                secure.make_url(export_path("rgb")), params={**EXPORT, "token": token}
            ) as response:
                body = await response.read()
                if expected is None:
                    assert response.content_type == "image/png"
                else:
                    assert json.loads(body)["error"]["code"] == expected


async def test_portal_token_and_server_url_exchange(secure: TestClient) -> None:
    portal = await post_json(
        secure, PORTAL_TOKENS, username="alice", password=PASSWORD, client="requestip"
    )
    await assert_image(secure, token=portal["token"])
    # arcgis-rest-js and resource-proxy exchange a portal token for a federated server's.
    server_url = str(secure.make_url("/arcgis/rest/services"))
    exchanged = await post_json(secure, PORTAL_TOKENS, token=portal["token"], serverUrl=server_url)
    assert exchanged["token"] != portal["token"]
    await assert_image(secure, token=exchanged["token"])
    refused = await post_json(secure, PORTAL_TOKENS, token="forged", serverUrl=server_url)
    assert refused["error"]["code"] == 498
    other_server = await post_json(
        secure, PORTAL_TOKENS, token=portal["token"], serverUrl="https://elsewhere/server/rest"
    )
    assert other_server["error"]["code"] == 400
    assert (await stats(secure))["tokensIssued"]["sharing/rest/generateToken"] == 2


async def test_oauth2_client_credentials(secure: TestClient) -> None:
    answer = await post_json(
        secure,
        OAUTH2,
        client_id=APP_ID,
        client_secret=APP_SECRET,
        grant_type="client_credentials",
        expiration="1",
    )
    assert set(answer) == {"access_token", "expires_in"}
    assert answer["expires_in"] == 60
    await assert_image(secure, headers={"X-Esri-Authorization": f"Bearer {answer['access_token']}"})
    wrong = await post_json(
        secure, OAUTH2, client_id=APP_ID, client_secret="nope", grant_type="client_credentials"
    )
    assert (wrong["error"]["code"], wrong["error"]["error"]) == (400, "invalid_client")
    grant = await post_json(
        secure, OAUTH2, client_id=APP_ID, client_secret=APP_SECRET, grant_type="password"
    )
    assert grant["error"]["error"] == "unsupported_grant_type"
    assert (await stats(secure))["tokensIssued"]["sharing/rest/oauth2/token"] == 1


async def test_api_key(secure: TestClient) -> None:
    await assert_image(secure, token=API_KEY)
    await assert_image(secure, headers={"X-Esri-Authorization": f"Bearer {API_KEY}"})


async def test_credentials_are_refused_in_the_query_string(secure: TestClient) -> None:
    for method in ("GET", "POST"):
        response = await secure.request(
            method,
            SERVER_TOKENS,
            params={"username": "alice", "password": PASSWORD, "f": "json"},
        )
        error = (await response.json())["error"]
        assert (error["code"], error["message"]) == (405, "Method not supported"), method
    bad = await post_json(secure, SERVER_TOKENS, username="alice", password="wrong")
    assert bad["error"] == {
        "code": 400,
        "message": "Unable to generate token.",
        "details": ["Invalid username or password."],
    }
    assert (await stats(secure))["tokensIssued"]["tokens/generateToken"] == 0


async def test_catalog_lists_secured_services_to_token_holders(secure: TestClient) -> None:
    async def names(**params: str) -> list[str]:
        response = await secure.get(SERVICES, params={"f": "json", **params})
        return [s["name"] for s in (await response.json())["services"]]

    assert await names() == ["dtm"]
    assert await names(token=await server_token(secure)) == ["dtm", "rgb"]


async def test_output_files_of_a_secured_service_need_the_token(secure: TestClient) -> None:
    token = await server_token(secure)
    response = await secure.get(export_path("rgb"), params={**EXPORT, "f": "json", "token": token})
    href = (await response.json())["href"]
    anonymous = await (await secure.session.get(href)).json()
    assert anonymous["error"]["code"] == 499
    # esri-leaflet appends ?token= to the href.
    with_token = await secure.session.get(href, params={"token": token})
    assert with_token.content_type == "image/png"


async def test_without_security_there_are_no_token_services(client: TestClient) -> None:
    response = await client.post(SERVER_TOKENS, data={"username": "alice", "password": PASSWORD})
    assert response.status == 404
    assert (await client.get("/_test/stats")).status == 404
    # Tokens are ignored, even invalid ones.
    status, content_type, _ = await export_status(client, token="anything")
    assert (status, content_type) == (200, "image/png")


async def test_stats_endpoint_is_opt_in(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(secured(stats_endpoint=False)))
    assert (await client.get("/_test/stats")).status == 404
