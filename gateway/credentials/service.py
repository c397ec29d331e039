"""Talking to ArcGIS token services: form-encoded POSTs, their JSON answers, and finding the
token service of a server from its ``/rest/info`` (arcgis-rest.md sections 3, 4.1-4.4).

Credentials go in the POST body, never in a URL (ArcGIS Server 10.3+ refuses them in a query
string), and the messages of the errors raised here never hold a URL or a secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from gateway.errors import UpstreamError
from gateway.sources.http import arcgis_error

log = logging.getLogger(__name__)


def server_root(service_url: str) -> str:
    """The root of the ArcGIS Server a service URL belongs to: what comes before
    ``/rest/services/`` (``https://host/arcgis`` of ``https://host/arcgis/rest/services/
    Folder/Name/ImageServer``), else the URL's origin."""
    index = service_url.lower().find("/rest/services/")
    if index < 0:
        return str(URL(service_url).origin())
    return service_url[:index]


def generate_token_url(services_url: str) -> str:
    """The generateToken URL of an ``authInfo.tokenServicesUrl``: a stand-alone server
    advertises its tokens root ``.../tokens/`` (arcgis-rest.md section 4.1), where the
    operation is ``.../tokens/generateToken``; a portal's URL is already the operation."""
    trimmed = services_url.rstrip("/")
    if trimmed.lower().endswith("/tokens"):
        return f"{trimmed}/generateToken"
    return services_url


def _sharing_rest(url: str) -> str | None:
    """``<portal>/sharing/rest`` of a portal URL (``.../sharing/generateToken`` and
    ``.../sharing/rest/...`` alike), ``None`` when ``url`` is not under ``/sharing/``."""
    index = url.lower().find("/sharing/")
    return None if index < 0 else f"{url[:index]}/sharing/rest"


def oauth2_token_url(services_url: str) -> str | None:
    """The portal's ``/sharing/rest/oauth2/token`` beside its token service
    ``services_url``; ``None`` when that is no portal's (a stand-alone server has no OAuth)."""
    base = _sharing_rest(services_url)
    return None if base is None else f"{base}/oauth2/token"


def portal_generate_token_url(portal_url: str) -> str | None:
    """The portal's ``/sharing/rest/generateToken`` (where tokens are exchanged for a
    federated server's) from any of its ``/sharing/`` URLs; ``None`` for other URLs."""
    base = _sharing_rest(portal_url)
    return None if base is None else f"{base}/generateToken"


class TokenService:
    """HTTP to the token services of one set of credentials, ``owner`` (``credentials
    'corp'``) starting every error message, each request bounded by ``timeout`` seconds and
    sent through ``session_for(url)``, the keep-alive session of the URL's origin.

    Every failure raises ``UpstreamError`` (502): the fronts answer it naming the layer.
    """

    def __init__(
        self,
        owner: str,
        session_for: Callable[[str], aiohttp.ClientSession],
        timeout: float,
    ) -> None:
        self.owner = owner
        self._session_for = session_for
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def post(
        self,
        url: str,
        form: Mapping[str, str],
        referer: str | None,
        secrets: Iterable[str] = (),
    ) -> dict[str, Any]:
        """POST ``form`` (plus ``f=json``) form-encoded to ``url`` with ``referer`` as the
        ``Referer`` header when given; the answer's JSON object. ``secrets`` (the password,
        client secret or token sent) are blanked out of any message a server echoes them in.

        Raises ``UpstreamError`` (502) for no answer, an error JSON (ArcGIS's
        ``{"error": {...}}`` or OAuth's ``{"error": "invalid_client", ...}``), an HTTP error
        or an answer that is not a JSON object.
        """
        headers = {"Referer": referer} if referer else {}
        session = self._session_for(url)
        try:
            async with session.post(
                url, data={**form, "f": "json"}, headers=headers, timeout=self._timeout
            ) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(url, exc) from None
        return self._document(status, body, secrets)

    async def get_json(self, url: str) -> dict[str, Any]:
        """``GET url?f=json`` (a server's ``/rest/info``): the answer's JSON object; raises
        ``UpstreamError`` (502) as ``post`` does."""
        session = self._session_for(url)
        try:
            async with session.get(url, params={"f": "json"}, timeout=self._timeout) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(url, exc) from None
        return self._document(status, body, ())

    async def discover(self, root: str) -> str:
        """The ``authInfo.tokenServicesUrl`` of the server at ``root`` (its
        ``<root>/rest/info``, arcgis-rest.md section 4.1). Raises ``UpstreamError`` (502)
        when it cannot be read or names no token service."""
        info = await self.get_json(f"{root}/rest/info")
        auth = info.get("authInfo")
        url = auth.get("tokenServicesUrl") if isinstance(auth, dict) else None
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise UpstreamError(
                502,
                None,
                f"{self.owner}: the server's /rest/info names no token service "
                "(authInfo.tokenServicesUrl); configure the credentials' url",
            )
        return url

    def _unreachable(self, url: str, exc: Exception) -> UpstreamError:
        if isinstance(exc, TimeoutError):
            return UpstreamError(
                502,
                None,
                f"{self.owner}: the token service gave no answer within {self.timeout:g} s",
            )
        # The exception's text names the host, not the path or the form; the client only
        # learns the kind of failure.
        log.warning("%s: token request to %s failed: %s", self.owner, URL(url).origin(), exc)
        return UpstreamError(
            502, None, f"{self.owner}: the token service is unreachable ({type(exc).__name__})"
        )

    def _document(self, status: int, body: bytes, secrets: Iterable[str]) -> dict[str, Any]:
        error = arcgis_error(body)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if error is None and isinstance(document, dict) and isinstance(document.get("error"), str):
            # OAuth 2.0's own error shape (RFC 6749 section 5.2).
            description = document.get("error_description")
            error = None, str(description or document["error"])
        if error is not None:
            code, message = error
            for secret in secrets:
                if secret:
                    message = message.replace(secret, "***")
            raise UpstreamError(
                502,
                code if code is not None else status,
                f"{self.owner}: the token service refused: {message}",
            )
        if status >= 400:
            raise UpstreamError(
                502, status, f"{self.owner}: the token service answered HTTP {status}"
            )
        if not isinstance(document, dict):
            raise UpstreamError(
                502, status, f"{self.owner}: the token service's answer is not a JSON object"
            )
        return document
