"""The upstream GP service (arcgis-rest.md section 5.1): ``submitJob``, ``jobs/<jobId>``,
``results/<paramName>`` and ``cancel`` of one task, with the gateway's credentials.

Every call is a form POST with ``f=json`` (clients POST GP calls too, arcgis-rest.md
section 0), redirects are not followed and no cookie is kept. When ArcGIS rejects the token
(``sources.http.token_rejected``) the provider renews it and the call is sent once more, so a
job outliving its token goes on. Answers are JSON objects; an ArcGIS error JSON is an answer
too (the client gets it); anything else, and a token service that fails, is
``GPUnavailable``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from gateway.errors import GPUnavailable, UpstreamError
from gateway.sources.http import Credentials, UpstreamRequest, UpstreamResponse, token_rejected

log = logging.getLogger(__name__)

# An answer larger than this is no job JSON.
_MAX_ANSWER = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GPAnswer:
    """An upstream answer: HTTP ``status``, its JSON ``document`` and the credential values
    ``sent`` with the call (to be cut out of what a client reads)."""

    status: int
    document: dict[str, Any]
    sent: frozenset[str]

    @property
    def error(self) -> bool:
        """Whether it is an ArcGIS error JSON."""
        return isinstance(self.document.get("error"), dict)


def _secrets(request: UpstreamRequest) -> set[str]:
    found = {request.params.get("token", "")}
    for name in ("X-Esri-Authorization", "Authorization"):
        found.add(request.headers.get(name, "").removeprefix("Bearer ").strip())
    found.discard("")
    return found


class GPTask:
    """The task at ``task_url`` (``.../GPServer/CreateImageCollection``), reached through
    ``session`` within ``timeout`` seconds per call, with ``credentials``."""

    def __init__(
        self,
        task_url: str,
        credentials: Credentials,
        session: aiohttp.ClientSession,
        timeout: float,
    ) -> None:
        self.url = task_url.rstrip("/")
        self._credentials = credentials
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)

    async def call(self, segments: Sequence[str], params: Mapping[str, str]) -> GPAnswer:
        """POST ``params`` (plus ``f=json``) to the task URL with ``segments`` appended
        (``()``: the task itself, ``("submitJob",)``, ``("jobs", id)``...). Raises
        ``GPUnavailable``."""
        url = "/".join((self.url, *segments))
        form = {**params, "f": "json"}
        sent = UpstreamRequest(url, {}, {})
        try:
            await self._credentials.apply(sent)
            answer = await self._post(sent, form)
            secrets = _secrets(sent)
            if token_rejected(answer) and await self._credentials.refresh(sent):
                retry = UpstreamRequest(url, {}, {})
                await self._credentials.apply(retry)
                answer = await self._post(retry, form)
                secrets |= _secrets(retry)
        except UpstreamError as exc:
            # The token service failed: its message names the credential set, never a secret.
            raise GPUnavailable(exc.status, exc.message) from None
        try:
            document = json.loads(answer.body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise GPUnavailable(
                502, f"the upstream GP service did not answer JSON (HTTP {answer.status})"
            )
        return GPAnswer(answer.status, document, frozenset(secrets))

    async def _post(self, request: UpstreamRequest, form: dict[str, str]) -> UpstreamResponse:
        # A token the provider put in the query goes in the form: never in a URL.
        body = {**form, **request.params}
        try:
            async with self._session.post(
                URL(request.url, encoded=True),
                data=body,
                headers=request.headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                data = await response.content.read(_MAX_ANSWER + 1)
                if len(data) > _MAX_ANSWER:
                    raise GPUnavailable(502, "the upstream GP answer is too large")
                return UpstreamResponse(response.status, response.headers, data)
        except TimeoutError:
            raise GPUnavailable(504, "the upstream GP service did not answer in time") from None
        except aiohttp.ClientError as exc:
            log.warning("jobs: upstream %s failed: %s", URL(request.url).origin(), exc)
            raise GPUnavailable(
                502, f"the upstream GP service cannot be reached ({type(exc).__name__})"
            ) from None
