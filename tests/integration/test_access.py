"""Who may use the gateway (``gateway.access``): API keys and JWT bearer tokens per route
group, restrictions per layer and proxied service, rate limits in memory and in a shared
Redis, CORS and Referer per group, each refusal in its front's own format.

Every gateway here runs as ``tile-gateway serve`` runs it (``start_site``: the access log
included), in front of the scripted upstream; JWTs are signed with keys generated per test and
published by a JWKS server on a socket. After each test, every captured response (status line,
headers, body) and every log line is scanned for each API key and token the test made.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

from gateway.app import create_app
from gateway.config import ConfigError, parse_config
from gateway.server import start_site
from tests.integration.conftest import FakeUpstream

OWS = "{http://www.opengis.net/ows/1.1}"
XYZ = "/tiles/{layer}/0/0/0.png"
WMTS = "/wmts/1.0.0/{layer}/default/WebMercatorQuad/0/0/0.png"
OGCAPI = "/ogcapi/collections/{layer}"
PROXY = "/arcgis/rest/services/up/fake/ImageServer?f=json"
ISSUER = "https://idp.example.org/"
AUDIENCE = "tile-gateway"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Secrets:
    """Every API key and token a test made, to be found nowhere afterwards."""

    values: set[str] = field(default_factory=set)

    def key(self) -> str:
        value = f"key-{secrets.token_urlsafe(16)}"
        self.values.add(value)
        return value

    def token(self, value: str) -> str:
        self.values.add(value)
        return value


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class Issuer:
    """The JWKS server: ``keys`` are published as they are when it is asked."""

    server: TestServer
    published: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    @property
    def jwks_url(self) -> str:
        return str(self.server.make_url("/jwks.json"))


@dataclass
class SigningKey:
    kid: str
    private: Any
    algorithm: str

    def jwk(self) -> dict[str, Any]:
        maker = (
            jwt.algorithms.RSAAlgorithm if self.algorithm == "RS256" else jwt.algorithms.ECAlgorithm
        )
        jwk = maker.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, **changes}


@pytest.fixture
async def issuer(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Issuer:
    state: dict[str, Issuer] = {}

    async def jwks(request: web.Request) -> web.Response:
        state["issuer"].fetches += 1
        return web.json_response({"keys": state["issuer"].published})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    state["issuer"] = Issuer(await aiohttp_server(app))
    return state["issuer"]


@pytest.fixture
def made() -> Secrets:
    return Secrets()


Get = Callable[..., Awaitable[Reply]]


@pytest.fixture
async def gateway(
    fake_upstream: FakeUpstream, made: Secrets, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Callable[..., Awaitable[Get]]]:
    """``await gateway(access, layers=None, proxy=None, cache=None) -> get``: a gateway on a
    socket (``proxy``: the settings of its proxied service ``up``, if any);
    ``await get(path, headers=None)`` -> ``Reply``. Afterwards, no secret
    of ``made`` in any reply or log line."""
    caplog.set_level(logging.DEBUG)
    runners: list[web.AppRunner] = []
    replies: list[Reply] = []
    session = aiohttp.ClientSession()

    async def start(
        access: dict[str, Any],
        layers: dict[str, Any] | None = None,
        proxy: dict[str, Any] | None = None,
        cache: dict[str, Any] | None = None,
    ) -> Get:
        base = {"url": fake_upstream.url, "formats": ["png"], "meta_size": [1, 1]}
        tree: dict[str, Any] = {
            "access": access,
            "cache": cache or {},
            "layers": {name: {**base, **extra} for name, extra in (layers or {"open": {}}).items()},
        }
        if proxy is not None:
            upstream = fake_upstream.url.removesuffix("/fake/ImageServer")
            service = {"path": "up", "url": upstream, "allow": ["fake"], **proxy}
            tree["proxy"] = {"services": [service]}
        runner, port = await start_site(create_app(parse_config(tree)), "127.0.0.1", 0)
        runners.append(runner)

        async def get(path: str, headers: dict[str, str] | None = None) -> Reply:
            url = f"http://127.0.0.1:{port}{path}"
            async with session.get(url, headers=headers or {}) as response:
                reply = Reply(response.status, dict(response.headers), await response.read())
            replies.append(reply)
            return reply

        return get

    yield start
    await session.close()
    for runner in runners:
        await runner.cleanup()
    assert made.values, "the test made no secret to look for"
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    lines = [record.getMessage() for record in records]
    assert any("GET /" in line for line in lines), "no access log line was captured"
    texts = [*lines, *(repr(r.headers) + r.body.decode("latin-1") for r in replies)]
    for value in made.values:
        leaks = [text for text in texts if value in text]
        assert not leaks, f"a secret was found in {leaks[0][:300]!r}"


def api_key_access(keys: dict[str, str], **group: Any) -> dict[str, Any]:
    return {
        "api_keys": {name: sha256(key) for name, key in keys.items()},
        "groups": {"tiles": {"authenticate": ["api_key"], **group}},
    }


# -- API keys -----------------------------------------------------------------------------


async def test_api_key_in_header_or_query_is_required_and_never_forwarded(
    gateway, made: Secrets, fake_upstream: FakeUpstream
) -> None:
    key = made.key()
    get = await gateway(api_key_access({"alice": key}))
    path = XYZ.format(layer="open")

    missing = await get(path)
    assert missing.status == 401
    assert missing.json()["error"]["code"] == 401
    assert 'header="X-API-Key"' in missing.headers["WWW-Authenticate"]
    wrong = await get(path, {"X-API-Key": made.key()})
    assert wrong.status == 401
    assert wrong.json()["error"]["message"] == "the API key is not valid"

    assert (await get(path, {"X-API-Key": key})).status == 200
    assert (await get(f"{path}?api_key={key}")).status == 200
    assert (await get(f"{OGCAPI.format(layer='open')}?api_key={key}")).status == 200
    assert fake_upstream.queries, "the tile was never fetched"
    for query in fake_upstream.queries:
        assert "api_key" not in query


async def test_api_key_digests_come_from_a_file(gateway, made: Secrets, tmp_path) -> None:
    key = made.key()
    keys = tmp_path / "keys"
    keys.write_text(f"# name sha256\nalice {sha256(key)}\n")
    get = await gateway(
        {"api_keys_file": str(keys), "groups": {"tiles": {"authenticate": ["api_key"]}}}
    )
    assert (await get(XYZ.format(layer="open"), {"X-API-Key": key})).status == 200
    assert (await get(XYZ.format(layer="open"), {"X-API-Key": sha256(key)})).status == 401


async def test_refusals_come_in_each_fronts_format(gateway, made: Secrets) -> None:
    made.key()
    access = api_key_access({"alice": made.key()})
    access["groups"]["proxy"] = {"authenticate": ["api_key"]}
    get = await gateway(access, proxy={})

    for path in (XYZ.format(layer="open"), OGCAPI.format(layer="open")):
        reply = await get(path)
        assert reply.status == 401
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.json()["error"]["code"] == 401
    wmts = await get(WMTS.format(layer="open"))
    assert wmts.status == 401
    report = etree.fromstring(wmts.body)
    assert report.tag == f"{OWS}ExceptionReport"
    assert report[0].get("exceptionCode") == "NoApplicableCode"
    proxied = await get(PROXY)
    assert proxied.status == 401
    assert proxied.json() == {
        "error": {"code": 401, "message": "credentials are required", "details": []}
    }
    # Health stays open.
    assert (await get("/healthz")).status == 200


# -- JWT ------------------------------------------------------------------------------------


def jwt_access(issuer: Issuer, **jwt_settings: Any) -> dict[str, Any]:
    return {
        "jwt": {
            "jwks_url": issuer.jwks_url,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "leeway": 5,
            **jwt_settings,
        },
        "groups": {"tiles": {"authenticate": ["jwt"]}},
    }


def bearer(made: Secrets, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {made.token(token)}"}


async def test_jwt_is_verified_against_the_jwks(gateway, issuer: Issuer, made: Secrets) -> None:
    rsa1, ec1 = rsa_key("r1"), ec_key("e1")
    issuer.published = [rsa1.jwk(), ec1.jwk()]
    get = await gateway(jwt_access(issuer))
    path = XYZ.format(layer="open")

    def sign(key: SigningKey, **changes: Any) -> str:
        return jwt.encode(claims(**changes), key.private, key.algorithm, {"kid": key.kid})

    assert (await get(path, bearer(made, sign(rsa1)))).status == 200
    assert (await get(path, bearer(made, sign(ec1)))).status == 200

    now = int(time.time())
    refused = {
        "expired": sign(rsa1, exp=now - 60),
        "not yet valid": sign(rsa1, nbf=now + 600),
        "wrong audience": sign(rsa1, aud="another-service"),
        "wrong issuer": sign(rsa1, iss="https://evil.example/"),
        "no exp": jwt.encode(
            {k: v for k, v in claims().items() if k != "exp"}, rsa1.private, "RS256", {"kid": "r1"}
        ),
        "alg none": jwt.encode(claims(), None, "none", {"kid": "r1"}),
        # The public key as an HMAC secret: the classic algorithm confusion.
        "HS256 with the public key": jwt.encode(
            claims(), secrets.token_bytes(32), "HS256", {"kid": "r1"}
        ),
        "EC key named by an RS256 token": jwt.encode(
            claims(), rsa1.private, "RS256", {"kid": "e1"}
        ),
        "unknown key": sign(rsa_key("r9")),
        "not a JWT": "abc.def",
    }
    for why, token in refused.items():
        reply = await get(path, bearer(made, token))
        assert reply.status == 401, why
        assert reply.headers["WWW-Authenticate"].startswith('Bearer realm="tile-gateway"'), why
        assert reply.json()["error"]["code"] == 401, why
    assert (await get(path)).status == 401


async def test_jwks_rotation_adds_new_keys_and_drops_removed_ones(
    gateway, issuer: Issuer, made: Secrets
) -> None:
    old, new = rsa_key("old"), ec_key("new")
    issuer.published = [old.jwk()]
    get = await gateway(jwt_access(issuer, jwks_refetch_interval=0))
    path = XYZ.format(layer="open")
    old_token = jwt.encode(claims(), old.private, "RS256", {"kid": "old"})
    new_token = jwt.encode(claims(), new.private, "ES256", {"kid": "new"})

    assert (await get(path, bearer(made, old_token))).status == 200
    assert (await get(path, bearer(made, old_token))).status == 200
    assert issuer.fetches == 1, "the key set is cached"
    issuer.published = [new.jwk()]
    assert (await get(path, bearer(made, new_token))).status == 200
    assert issuer.fetches == 2
    assert (await get(path, bearer(made, old_token))).status == 401


# -- restrictions per layer and service ------------------------------------------------------


async def test_layers_restricted_to_keys_or_claims(gateway, issuer: Issuer, made: Secrets) -> None:
    signer = rsa_key("k")
    issuer.published = [signer.jwk()]
    alice, bob = made.key(), made.key()
    access = {
        **jwt_access(issuer),
        "api_keys": {"alice": sha256(alice), "bob": sha256(bob)},
        "groups": {"tiles": {"authenticate": ["api_key", "jwt"], "anonymous": True}},
    }
    private = {"access": {"api_keys": ["alice"], "claims": {"scope": "tiles:private"}}}
    get = await gateway(access, layers={"open": {}, "private": private})

    def token(**changes: Any) -> dict[str, str]:
        return bearer(made, jwt.encode(claims(**changes), signer.private, "RS256", {"kid": "k"}))

    for path in (XYZ, WMTS, OGCAPI):
        assert (await get(path.format(layer="open"))).status == 200, path
        anonymous = await get(path.format(layer="private"))
        assert anonymous.status == 401, path
        assert (await get(path.format(layer="private"), {"X-API-Key": bob})).status == 403, path
        assert (await get(path.format(layer="private"), {"X-API-Key": alice})).status == 200
        assert (await get(path.format(layer="private"), token(scope="read"))).status == 403
        allowed = token(scope="read tiles:private")
        assert (await get(path.format(layer="private"), allowed)).status == 200, path
    kvp = "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=private&STYLE=default"
    kvp += "&TILEMATRIXSET=WebMercatorQuad&TILEMATRIX=0&TILEROW=0&TILECOL=0&FORMAT=image/png"
    assert (await get(kvp, {"X-API-Key": bob})).status == 403
    assert (await get(kvp, {"X-API-Key": alice})).status == 200


async def test_proxied_service_restricted_to_keys(gateway, made: Secrets) -> None:
    alice, bob = made.key(), made.key()
    access = {
        "api_keys": {"alice": sha256(alice), "bob": sha256(bob)},
        "groups": {"proxy": {"authenticate": ["api_key"]}},
    }
    get = await gateway(access, proxy={"access": {"api_keys": ["alice"]}})
    refused = await get(PROXY, {"X-API-Key": bob})
    assert refused.status == 403
    assert refused.json()["error"]["details"] == []
    # Percent-encoding the service's path does not take a request past its restriction.
    encoded = PROXY.replace("/up/", "/%75p/")
    assert (await get(encoded, {"X-API-Key": bob})).status == 403
    assert (await get(PROXY, {"X-API-Key": alice})).status == 200
    assert (await get(f"{PROXY}&api_key={alice}")).status == 200


async def test_the_ready_answer_of_a_cached_tile_is_checked_too(gateway, made: Secrets) -> None:
    alice, bob = made.key(), made.key()
    access = api_key_access({"alice": alice, "bob": bob})
    get = await gateway(access, layers={"private": {"access": {"api_keys": ["alice"]}}})
    path = XYZ.format(layer="private")

    assert (await get(path, {"X-API-Key": alice})).status == 200
    hit = await get(path, {"X-API-Key": alice})
    assert (hit.status, hit.headers["X-Cache"]) == (200, "HIT")
    # The answer is ready on the root; the client without access still gets none.
    assert (await get(path)).status == 401
    assert (await get(path, {"X-API-Key": bob})).status == 403
    assert (await get(f"{path}?api_key={bob}")).status == 403
    # A key in the query reaches the same ready answer: the target is taken without it.
    keyed = await get(f"{path}?api_key={alice}")
    assert (keyed.status, keyed.headers["X-Cache"]) == (200, "HIT")


# -- rate limits ----------------------------------------------------------------------------


async def test_over_the_rate_is_429_with_retry_after_in_each_fronts_format(
    gateway, made: Secrets
) -> None:
    key = made.key()
    access = api_key_access({"alice": key}, rate_limit="2/minute")
    access["groups"]["proxy"] = {"rate_limit": "1/minute"}
    get = await gateway(access, proxy={})
    headers = {"X-API-Key": key}

    assert (await get(XYZ.format(layer="open"), headers)).status == 200
    assert (await get(XYZ.format(layer="open"), headers)).status == 200
    over = await get(XYZ.format(layer="open"), headers)
    assert over.status == 429
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    # A page on another origin may read it (Fetch standard, CORS-exposed headers).
    exposed = {name.strip() for name in over.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "X-Request-Id"} <= exposed
    assert over.json()["error"]["code"] == 429
    wmts = await get(WMTS.format(layer="open"), headers)
    assert wmts.status == 429
    assert etree.fromstring(wmts.body).tag == f"{OWS}ExceptionReport"
    assert "Retry-After" in wmts.headers

    assert (await get(PROXY)).status == 200
    proxied = await get(PROXY)
    assert proxied.status == 429
    assert proxied.json()["error"]["code"] == 429
    assert proxied.json()["error"]["details"] == []
    assert 1 <= int(proxied.headers["Retry-After"]) <= 60


async def test_rate_limits_are_per_client_address_behind_trusted_proxies(
    gateway, made: Secrets
) -> None:
    made.key()
    get = await gateway({"trusted_proxy_hops": 1, "groups": {"tiles": {"rate_limit": "1/minute"}}})
    path = XYZ.format(layer="open")
    a = {"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}
    b = {"X-Forwarded-For": "203.0.113.2"}
    assert (await get(path, a)).status == 200
    assert (await get(path, a)).status == 429
    # The entry the trusted proxy added is the client: what the client itself wrote is not.
    assert (await get(path, {"X-Forwarded-For": "192.0.2.1, 203.0.113.1"})).status == 429
    assert (await get(path, b)).status == 200


async def test_a_limit_holds_across_replicas_sharing_redis(
    gateway, made: Secrets, redis_url: str, key_prefix: str
) -> None:
    key = made.key()
    access = api_key_access({"alice": key}, rate_limit="3/minute")
    cache = {"redis_url": redis_url, "prefix": key_prefix}
    first = await gateway(access, cache=cache)
    second = await gateway(access, cache=cache)
    headers = {"X-API-Key": key}
    path = XYZ.format(layer="open")
    assert [(await get(path, headers)).status for get in (first, second, first)] == [200] * 3
    assert (await second(path, headers)).status == 429
    assert (await first(path, headers)).status == 429


# -- CORS and Referer ---------------------------------------------------------------------------


async def test_cors_origins_and_referers_per_group(gateway, made: Secrets) -> None:
    made.key()
    access = {
        "groups": {
            "tiles": {
                "cors_allow_origins": ["https://a.example", "https://b.example"],
                "referers": ["https://a.example/", "https://b.example/maps/"],
            }
        }
    }
    get = await gateway(access, proxy={})
    path = XYZ.format(layer="open")
    page = {"Referer": "https://b.example/maps/index.html"}

    for _ in range(2):  # the second answer is the ready one
        reply = await get(path, {**page, "Origin": "https://b.example"})
        assert reply.status == 200
        assert reply.headers["Access-Control-Allow-Origin"] == "https://b.example"
        assert "Origin" in reply.headers["Vary"]
    assert reply.headers["X-Cache"] == "HIT"
    other = await get(path, {**page, "Origin": "https://c.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert (await get(path, {"Referer": "https://b.example/other"})).status == 403
    assert (await get(path)).status == 403
    # The proxy group keeps server.cors_allow_origin.
    proxied = await get(PROXY)
    assert proxied.headers["Access-Control-Allow-Origin"] == "*"


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("access", "layer", "message"),
    [
        ({"api_keys": {"a": "not-a-digest"}}, {}, "64 hex digits"),
        ({"groups": {"tiles": {"authenticate": ["jwt"]}}}, {}, "needs access.jwt"),
        ({"groups": {"tiles": {"rate_limit": "lots"}}}, {}, "not a rate"),
        ({"api_keys": {"a": "0" * 64}}, {"access": {"api_keys": ["a"]}}, "lacks api_key"),
        (
            {"api_keys": {"a": "0" * 64}, "groups": {"tiles": {"authenticate": ["api_key"]}}},
            {"access": {"api_keys": ["b"]}},
            "unknown API key 'b'",
        ),
        (
            {
                "jwt": {"jwks_url": "https://idp.example/jwks", "issuer": "i", "audience": "a"},
                "groups": {"admin": {"authenticate": ["jwt"]}},
            },
            {},
            "admin",
        ),
        (
            {
                "jwt": {
                    "jwks_url": "https://idp.example/jwks",
                    "issuer": "i",
                    "audience": "a",
                    "algorithms": ["none"],
                }
            },
            {},
            "algorithms",
        ),
    ],
)
def test_access_settings_are_checked(access: dict, layer: dict, message: str) -> None:
    url = "http://up.example/arcgis/rest/services/x/ImageServer"
    with pytest.raises(ConfigError, match=message):
        parse_config({"access": access, "layers": {"x": {"url": url, **layer}}})
