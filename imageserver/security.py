"""Token security of the reference server: issuing, binding and checking ArcGIS tokens.

Behaviour follows ArcGIS Server 11.x as described in ``docs/arcgis-rest.md`` §3-§4 (ArcGIS REST
"Generate Token", "Acquire ArcGIS Server tokens", portal "Generate Token" and OAuth 2.0 pages):

- a token is an opaque string with an expiry in epoch milliseconds;
- ``client=referer`` binds it to a ``Referer``, ``client=ip`` to a given address and
  ``client=requestip`` to the address that asked for it; a bound token used from elsewhere
  is invalid (498);
- a request may carry the token as the ``token`` parameter (query or form) or in an
  ``X-Esri-Authorization: Bearer`` or ``Authorization: Bearer`` header (§4.6);
- API keys are accepted wherever a token is (§4.5).

Tokens live in memory only; nothing here logs a token, password or secret.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import secrets
import time
from collections.abc import Callable, Mapping
from enum import Enum
from urllib.parse import unquote_plus, urlsplit

from imageserver.config import SecurityConfig

# Names of request parameters that carry secrets; they never reach a log line.
SECRET_PARAMETERS = frozenset(
    {"token", "password", "client_secret", "access_token", "refresh_token", "code"}
)
_BEARER = "bearer "


class Binding(Enum):
    """What a token is bound to (the ``client`` parameter of generateToken)."""

    NONE = "none"
    REFERER = "referer"
    IP = "ip"
    REQUEST_IP = "requestip"


@dataclasses.dataclass(frozen=True)
class Grant:
    """One issued token.

    Attributes:
        subject: username or OAuth ``client_id`` the token was issued to (not a secret).
        expires: expiry as epoch seconds; ``math.inf`` for API keys.
        referer: the ``Referer`` prefix a referer-bound token must be used with.
        address: the client address an ip- or requestip-bound token must come from.
    """

    subject: str
    expires: float
    referer: str | None = None
    address: str | None = None


class TokenState(Enum):
    """What a request says about tokens: none given, a valid one, or an invalid one."""

    MISSING = "missing"
    VALID = "valid"
    INVALID = "invalid"


class TokenStore:
    """Issued tokens and the counters tests read.

    Attributes:
        issued: tokens issued per endpoint name (``tokens/generateToken``,
            ``sharing/rest/generateToken``, ``sharing/rest/oauth2/token``).
        refused: requests refused per ArcGIS code (498, 499).
    """

    def __init__(self, config: SecurityConfig, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._grants: dict[str, Grant] = {
            key: Grant(subject="api-key", expires=math.inf) for key in config.api_keys
        }
        self.issued: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[int] = collections.Counter()

    def lifetime(self, expiration_minutes: float | None) -> float:
        """Seconds a new token lives: the request's ``expiration`` (minutes) or the default,
        clamped to the configured maximum (ArcGIS clamps, it does not refuse)."""
        wanted = (
            self._config.token_lifetime if expiration_minutes is None else expiration_minutes * 60
        )
        return min(wanted, self._config.token_lifetime_max)

    def issue(
        self,
        endpoint: str,
        subject: str,
        lifetime: float,
        *,
        referer: str | None = None,
        address: str | None = None,
    ) -> tuple[str, Grant]:
        """Create a token for ``subject`` living ``lifetime`` seconds; count it under
        ``endpoint``. Returns the token and its grant."""
        now = self._clock()
        for token in [t for t, g in self._grants.items() if g.expires <= now]:
            del self._grants[token]
        token = secrets.token_urlsafe(32)
        grant = Grant(subject, now + lifetime, referer=_strip_query(referer), address=address)
        self._grants[token] = grant
        self.issued[endpoint] += 1
        return token, grant

    def grant(self, token: str, *, referer: str | None, address: str | None) -> Grant | None:
        """The grant of ``token`` if it is known, unexpired and its binding holds for a
        request with this ``Referer`` header and client ``address``; else ``None``.

        Referer rule (exact ArcGIS rule unconfirmed, ``docs/arcgis-rest.md`` §4.7): query and
        fragment are ignored on both sides; the request's Referer must equal the bound one or
        continue it with a ``/`` (``https://app.example`` accepts ``https://app.example/map``,
        not ``https://app.example.evil``).
        """
        grant = self._grants.get(token)
        if grant is None or grant.expires <= self._clock():
            return None
        if grant.address is not None and grant.address != address:
            return None
        if grant.referer is not None and not _referer_matches(grant.referer, referer):
            return None
        return grant

    def state(
        self, params: Mapping[str, str], headers: Mapping[str, str], address: str | None
    ) -> TokenState:
        """Classify a request's token: ``token`` parameter first, then the bearer headers."""
        token = request_token(params, headers)
        if token is None:
            return TokenState.MISSING
        if self.grant(token, referer=headers.get("Referer"), address=address) is None:
            return TokenState.INVALID
        return TokenState.VALID


def request_token(params: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The token a request carries: the ``token`` parameter (lower-cased names), else
    ``X-Esri-Authorization: Bearer <t>``, else ``Authorization: Bearer <t>`` (§4.6)."""
    if params.get("token"):
        return params["token"].strip()
    for header in ("X-Esri-Authorization", "Authorization"):
        value = headers.get(header, "")
        if value[: len(_BEARER)].lower() == _BEARER and value[len(_BEARER) :].strip():
            return value[len(_BEARER) :].strip()
    return None


def parse_binding(client: str | None, referer: str | None) -> Binding:
    """Parse generateToken's ``client``.

    ``referer`` (also the older spelling ``HTTP Referer`` that resource-proxy sends),
    ``ip`` and ``requestip``. When ``client`` is omitted (Python API 1.8, resource-proxy) the
    binding is ``referer`` if a ``referer`` is given, else ``requestip`` (§4.2: unconfirmed
    in the docs; this is what those clients need to work).

    Raises:
        ValueError: an unknown ``client`` value.
    """
    if client is None:
        return Binding.REFERER if referer else Binding.REQUEST_IP
    name = client.strip().lower()
    if name in ("referer", "http referer"):
        return Binding.REFERER
    if name == "ip":
        return Binding.IP
    if name == "requestip":
        return Binding.REQUEST_IP
    raise ValueError("client must be referer, ip or requestip")


def _strip_query(url: str | None) -> str | None:
    if url is None:
        return None
    # resource-proxy issue #434: a referer with a query string made tokens unusable.
    return url.split("?", 1)[0].split("#", 1)[0]


def _referer_matches(bound: str, referer: str | None) -> bool:
    actual = _strip_query(referer)
    if not actual:
        return False
    if actual == bound:
        return True
    return actual.startswith(bound) and (bound.endswith("/") or actual[len(bound)] == "/")


def redact_url(url: str) -> str:
    """``url`` (a path with query, or an absolute URL such as a Referer) with the values of
    :data:`SECRET_PARAMETERS` replaced by ``***``, for log lines.

    Parameter names are compared after percent-decoding, as the server decodes them.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = []
    for pair in parts.query.split("&"):
        name, sep, _ = pair.partition("=")
        secret = unquote_plus(name).lower() in SECRET_PARAMETERS
        pairs.append(f"{name}{sep}***" if secret and sep else pair)
    return parts._replace(query="&".join(pairs)).geturl()
