"""HTTP side of token security: the token services and the 498/499 answers.

URL layout (mirrors an ArcGIS Enterprise base deployment whose server and portal share the
``arcgis`` web adaptor name, the portal answering under ``/arcgis/sharing/rest`` as ArcGIS
Online answers under ``/sharing/rest``)::

    POST /arcgis/tokens/generateToken          ArcGIS Server token service (§4.2)
    POST /arcgis/tokens/                       its legacy root (request=getToken)
    POST /arcgis/sharing/rest/generateToken    portal token service, + serverUrl exchange (§4.3)
    POST /arcgis/sharing/rest/oauth2/token     OAuth 2.0 client credentials (§4.4)
    GET  /arcgis/sharing/rest/info             portal info: its token service
    GET  /_test/stats                          counters, only with security.stats_endpoint

They are served only when ``security.enabled`` is set. Credentials in the query string are
refused as ArcGIS Server 10.3+ refuses them (error 405 "Method not supported", seen by
resource-proxy issues #177 and #312), whatever the method; HTTPS is not required here.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import web

from imageserver.config import SecurityConfig, TokenErrorStyle
from imageserver.responses import add_route, error_response, json_response, request_params
from imageserver.security import Binding, TokenState, TokenStore, parse_binding

TOKENS = web.AppKey("imageserver_tokens", TokenStore)
SECURITY = web.AppKey("imageserver_security", SecurityConfig)
# Services published at run time (image collections) that need a token, casefolded.
SECURED_AT_RUNTIME = web.AppKey("imageserver_secured_at_runtime", set[str])

SERVER_TOKENS = "/arcgis/tokens"
PORTAL_REST = "/arcgis/sharing/rest"
SERVER_ENDPOINT = "tokens/generateToken"
PORTAL_ENDPOINT = "sharing/rest/generateToken"
OAUTH2_ENDPOINT = "sharing/rest/oauth2/token"

_UNABLE = "Unable to generate token."
_CREDENTIALS_IN_QUERY = (
    "Generate Token request should not contain username and password in the query string."
)
_TOKEN_ERRORS = {
    498: ("Invalid Token", None, "The token is invalid or has expired."),
    499: ("Token Required", "GWM_0003", "This resource needs a token."),
}


def add_token_routes(app: web.Application, security: SecurityConfig) -> None:
    """Register the token services (and the stats endpoint when enabled) on ``app``."""
    app[TOKENS] = TokenStore(security)
    app[SECURITY] = security
    app[SECURED_AT_RUNTIME] = set()
    if not security.enabled:
        return
    add_route(app, SERVER_TOKENS, _server_generate_token)
    add_route(app, f"{SERVER_TOKENS}/generateToken", _server_generate_token)
    add_route(app, f"{PORTAL_REST}/generateToken", _portal_generate_token)
    add_route(app, f"{PORTAL_REST}/oauth2/token", _oauth2_token)
    add_route(app, f"{PORTAL_REST}/info", _portal_info)
    if security.stats_endpoint:
        app.router.add_get("/_test/stats", _stats)


def token_services_url(request: web.Request) -> str | None:
    """The ``authInfo.tokenServicesUrl`` of ``/arcgis/rest/info``, ``None`` when unsecured.

    A stand-alone ArcGIS Server advertises its tokens root ``.../arcgis/tokens/``; a federated
    one its portal's ``.../sharing/rest/generateToken`` (§4.1).
    """
    security = request.app[SECURITY]
    if not security.enabled:
        return None
    origin = request.url.origin()
    if security.federated:
        return str(origin.with_path(f"{PORTAL_REST}/generateToken"))
    return str(origin.with_path(f"{SERVER_TOKENS}/"))


def owning_system_url(request: web.Request) -> str | None:
    """``owningSystemUrl`` of a federated server (the portal's base URL), else ``None``."""
    security = request.app[SECURITY]
    if not (security.enabled and security.federated):
        return None
    return str(request.url.origin().with_path("/arcgis"))


def is_secured(app: web.Application, service: str) -> bool:
    """Whether ``service`` needs a token: named in ``security.secured_services``, or
    published at run time as a secured service (see :mod:`imageserver.gp`)."""
    security = app[SECURITY]
    return security.is_secured(service) or (
        security.enabled and service.casefold() in app[SECURED_AT_RUNTIME]
    )


def token_state(request: web.Request, params: Mapping[str, str]) -> TokenState:
    """Whether ``request`` carries no token, a valid one or an invalid one (always MISSING
    when security is off: tokens are then ignored)."""
    if not request.app[SECURITY].enabled:
        return TokenState.MISSING
    return request.app[TOKENS].state(params, request.headers, request.remote)


def guard(request: web.Request, params: Mapping[str, str], service: str) -> web.Response | None:
    """The 498/499 answer when ``request`` may not reach ``service``, else ``None``.

    An invalid or expired token is refused (498) even on a public service, as ArcGIS does
    (``docs/arcgis-rest.md`` §3, resource-proxy #422); a missing token on a secured service
    is 499.
    """
    state = token_state(request, params)
    if state is TokenState.INVALID:
        return token_error(request, params, 498)
    secured = is_secured(request.app, service)
    if state is TokenState.MISSING and secured:
        return token_error(request, params, 499)
    return None


def token_error(request: web.Request, params: Mapping[str, str], code: int) -> web.Response:
    """Answer 498 (invalid/expired token) or 499 (token required) in the configured style
    (:class:`~imageserver.config.TokenErrorStyle`), and count it."""
    request.app[TOKENS].refused[code] += 1
    message, message_code, sentence = _TOKEN_ERRORS[code]
    style = request.app[SECURITY].token_errors
    if style is TokenErrorStyle.HTML:
        page = (
            f"<!DOCTYPE html>\n<html><head><title>{message}</title></head>"
            f"<body><h1>{message}</h1><p>{sentence}</p></body></html>\n"
        )
        return web.Response(text=page, content_type="text/html")
    response = error_response(params, code, message, [message], message_code=message_code)
    if style is TokenErrorStyle.STATUS:
        response.set_status(code, message)
    return response


async def _server_generate_token(request: web.Request) -> web.Response:
    return await _generate_token(request, SERVER_ENDPOINT, portal=False)


async def _portal_generate_token(request: web.Request) -> web.Response:
    return await _generate_token(request, PORTAL_ENDPOINT, portal=True)


async def _generate_token(request: web.Request, endpoint: str, *, portal: bool) -> web.Response:
    """generateToken: ``{"token", "expires" (epoch ms), "ssl"}`` or an ArcGIS error (§4.2-4.3).

    Credentials: ``username``/``password`` (form body only), or on the portal ``token`` +
    ``serverUrl`` to exchange a valid portal token for a token of this server. Binding:
    ``client`` (see :func:`~imageserver.security.parse_binding`), ``referer``, ``ip``;
    ``expiration`` in minutes, clamped to the configured maximum.
    """
    params = await request_params(request)
    if {"username", "password"} & {name.lower() for name in request.query}:
        return error_response(
            params,
            405,
            "Method not supported",
            [_CREDENTIALS_IN_QUERY],
        )
    store = request.app[TOKENS]
    problems: list[str] = []
    expiration = _expiration(params, problems)
    referer = params.get("referer")
    try:
        binding = parse_binding(params.get("client"), referer)
    except ValueError as exc:
        binding = Binding.NONE
        problems.append(str(exc))
    if binding is Binding.REFERER and not referer:
        problems.append("'referer' must be specified.")
    if binding is Binding.IP and not params.get("ip"):
        problems.append("'ip' must be specified.")
    if problems:
        return error_response(params, 400, _UNABLE, problems)
    if portal and "serverurl" in params:
        grant = store.grant(
            params.get("token", ""),
            referer=request.headers.get("Referer"),
            address=request.remote,
        )
        if grant is None:
            # The token service itself answers in JSON, whatever token_errors says.
            return error_response(params, 498, "Invalid Token", ["Invalid Token"])
        if not urlsplit(params["serverurl"]).path.lower().startswith("/arcgis"):
            return error_response(params, 400, _UNABLE, ["serverUrl is not a federated server."])
        subject = grant.subject
    else:
        username, password = params.get("username"), params.get("password")
        if not username or not password:
            missing = "'username' and 'password' must be specified."
            return error_response(params, 400, _UNABLE, [missing])
        known = request.app[SECURITY].users.get(username)
        if known is None or not secrets.compare_digest(known.encode(), password.encode()):
            return error_response(params, 400, _UNABLE, ["Invalid username or password."])
        subject = username
    token, grant = store.issue(
        endpoint,
        subject,
        store.lifetime(expiration),
        referer=referer if binding is Binding.REFERER else None,
        address={Binding.IP: params.get("ip"), Binding.REQUEST_IP: request.remote}.get(binding),
    )
    return json_response(
        {"token": token, "expires": math.floor(grant.expires * 1000), "ssl": False}, params
    )


async def _oauth2_token(request: web.Request) -> web.Response:
    """OAuth 2.0 client credentials: ``{"access_token", "expires_in" (seconds)}`` (§4.4).

    Errors use the portal's shape, an ArcGIS error with the OAuth ``error`` and
    ``error_description`` inside (``invalid_client``, ``unsupported_grant_type``).
    """
    params = await request_params(request)
    if params.get("grant_type") != "client_credentials":
        return _oauth_error(params, "unsupported_grant_type", "Invalid grant_type")
    client_id, client_secret = params.get("client_id", ""), params.get("client_secret", "")
    known = request.app[SECURITY].apps.get(client_id)
    if known is None or not secrets.compare_digest(known.encode(), client_secret.encode()):
        return _oauth_error(params, "invalid_client", "Invalid client_id or client_secret")
    problems: list[str] = []
    expiration = _expiration(params, problems)
    if problems:
        return _oauth_error(params, "invalid_request", problems[0])
    store = request.app[TOKENS]
    lifetime = store.lifetime(expiration)
    token, _ = store.issue(OAUTH2_ENDPOINT, client_id, lifetime)
    return json_response({"access_token": token, "expires_in": math.floor(lifetime)}, params)


async def _portal_info(request: web.Request) -> web.Response:
    origin = request.url.origin()
    payload = {
        "owningSystemUrl": str(origin.with_path("/arcgis")),
        "authInfo": {
            "tokenServicesUrl": str(origin.with_path(f"{PORTAL_REST}/generateToken")),
            "isTokenBasedSecurity": True,
        },
    }
    return json_response(payload, await request_params(request))


async def _stats(request: web.Request) -> web.Response:
    store = request.app[TOKENS]
    payload = {
        "tokensIssued": {
            name: store.issued[name] for name in (SERVER_ENDPOINT, PORTAL_ENDPOINT, OAUTH2_ENDPOINT)
        },
        "refused": {str(code): store.refused[code] for code in (498, 499)},
    }
    return web.json_response(payload)


def _expiration(params: Mapping[str, str], problems: list[str]) -> float | None:
    raw = params.get("expiration")
    if raw is None:
        return None
    try:
        minutes = float(raw)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        problems.append(f"Invalid expiration '{raw}': expected a positive number of minutes.")
        return None
    return minutes


def _oauth_error(params: Mapping[str, str], error: str, description: str) -> web.Response:
    payload = {
        "error": {
            "code": 400,
            "error": error,
            "error_description": description,
            "message": description,
            "details": [],
        }
    }
    return json_response(payload, params)
