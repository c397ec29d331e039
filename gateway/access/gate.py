"""The access check of one route group, run by its front's middleware (and by the root's
before a ready answer): who the client is, whether it is over its rate, whether the group and
the layer or service it asks for admit it, and the group's CORS headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.access.keys import ApiKeys
from gateway.access.rates import RateLimits
from gateway.access.tokens import IssuerUnavailable, JwtVerifier, TokenRejected
from gateway.config import AccessConfig, GroupAccess, ResourceAccess

# The request's admission, kept in its state so that the root's check and the front's are one
# (aiohttp copies the state into a clone).
_ADMISSION = web.RequestKey("admission", "Admission")
EXPOSED_HEADERS = "ETag, X-Cache, Content-Length, Retry-After, X-Request-Id"
"""The answer headers a cross-origin script may read (Fetch standard, CORS-exposed headers):
the cache's validators and result, and when to try again after a 429 or 503."""
_REALM = 'realm="tile-gateway"'

Resource = Callable[[web.Request], ResourceAccess | None]
"""The restriction of what a request asks for (its layer, its proxied service), if any."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client is: ``kind`` ``key`` (``name`` is the API key's name) or ``sub`` (a JWT:
    ``name`` is its subject, with its ``claims``)."""

    kind: str
    name: str
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused request: HTTP ``status``, a ``message`` naming no credential, and
    ``headers`` (``WWW-Authenticate``, ``Retry-After``)."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Admission:
    """What the check decided: the ``request`` to hand on (a clone without the API key query
    parameter when it had one) or the ``refusal`` to answer, and who the ``client`` is:
    ``key:<API key name>``, ``sub:<JWT subject>`` or ``ip:<address>`` (what rate limits
    count, and what owns a GP job)."""

    request: web.Request
    refusal: Refusal | None = None
    client: str = ""


def admission_of(request: web.Request) -> Admission | None:
    """The admission a gate decided for ``request``, ``None`` when no gate saw it."""
    known = request.get(_ADMISSION)
    return known if isinstance(known, Admission) else None


def client_address(request: web.Request, hops: int) -> str:
    """The client's address: the ``X-Forwarded-For`` entry ``hops`` from the right (the one
    the outermost trusted proxy added), else the connection's peer."""
    if hops:
        entries = [
            entry.strip()
            for value in request.headers.getall("X-Forwarded-For", ())
            for entry in value.split(",")
        ]
        if entries:
            return entries[-min(hops, len(entries))]
    return request.remote or "-"


class Gate:
    """The access check of route group ``group`` (``tiles``, ``proxy``, ``admin``).

    ``admit(request)`` decides, in this order (each step's answer in the front's own format):
    wrong credentials 401; over the rate 429 with ``Retry-After``; a ``Referer`` outside
    ``referers`` 403; no credentials where the group needs them 401; an identity the layer or
    service (``resource``) does not admit 403 (401 without one). A 401 carries
    ``WWW-Authenticate`` (RFC 9110 section 11.6.1; ``Bearer`` per RFC 6750 section 3).
    """

    def __init__(
        self,
        group: str,
        settings: GroupAccess,
        config: AccessConfig,
        client_hops: int,
        default_origin: str,
        keys: ApiKeys,
        verifier: JwtVerifier | None,
        rates: RateLimits,
        resource: Resource,
    ) -> None:
        self.group = group
        self._settings = settings
        self._methods = frozenset(settings.authenticate)
        self._header = config.api_key_header
        self._param = config.api_key_param if "api_key" in self._methods else None
        self._hops = client_hops
        self._keys = keys
        self._verifier = verifier if "jwt" in self._methods else None
        self._subject = config.jwt.subject if config.jwt is not None else "sub"
        self._rates = rates
        self._resource = resource
        origins = settings.cors_allow_origins or [default_origin]
        # One origin (or "*") is sent as it is; among several, the request's is echoed.
        self._origin = origins[0] if len(origins) == 1 else None
        self._origins = frozenset(origins)
        self._referers = tuple(settings.referers or ())
        challenges = []
        if self._verifier is not None:
            challenges.append(f"Bearer {_REALM}")
        if "api_key" in self._methods:
            challenges.append(f'ApiKey {_REALM}, header="{self._header}"')
        self._challenge = ", ".join(challenges)

    # -- CORS ------------------------------------------------------------------------------

    def cors(self, request: web.Request, response: web.StreamResponse) -> None:
        """Set the group's CORS headers on ``response`` (Fetch standard, CORS protocol):
        the one configured origin, or the request's ``Origin`` when it is one of several
        (then ``Vary: Origin``, and no ``Access-Control-Allow-Origin`` for another)."""
        headers = response.headers
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if self._origin is not None:
            headers["Access-Control-Allow-Origin"] = self._origin
            return
        vary = headers.get("Vary", "")
        if "origin" not in vary.lower():
            headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        origin = request.headers.get("Origin")
        if origin in self._origins:
            headers["Access-Control-Allow-Origin"] = origin
        else:
            headers.popall("Access-Control-Allow-Origin", None)

    # -- admission -------------------------------------------------------------------------

    async def admit(self, request: web.Request) -> Admission:
        """The admission of ``request``, decided once per request (see the class)."""
        known = request.get(_ADMISSION)
        if isinstance(known, Admission):
            return known
        refusal, client = await self._refusal(request)
        admission = Admission(request, refusal, client)
        param = self._param
        if admission.refusal is None and param is not None and param in request.rel_url.query:
            clone = request.clone(rel_url=request.rel_url.without_query_params(param))
            admission = Admission(clone, None, client)
            clone[_ADMISSION] = admission
        request[_ADMISSION] = admission
        return admission

    async def _refusal(self, request: web.Request) -> tuple[Refusal | None, str]:
        """The refusal of ``request`` (``None``: admitted) and who the client is."""
        try:
            identity = await self._identify(request)
        except TokenRejected as exc:
            return self._unauthorised(str(exc), 'error="invalid_token"'), ""
        except IssuerUnavailable as exc:
            return Refusal(503, str(exc), {"Retry-After": "10"}), ""
        client = f"{identity.kind}:{identity.name}" if identity else f"ip:{self.client(request)}"
        return await self._decide(request, identity, client), client

    async def _decide(
        self, request: web.Request, identity: Identity | None, client: str
    ) -> Refusal | None:
        if self._rates.limits(self.group):
            wait = await self._rates.hit(self.group, client)
            if wait is not None:
                metrics.rate_limited(self.group)
                return Refusal(
                    429, f"too many requests: try again in {wait} s", {"Retry-After": str(wait)}
                )
        if self._referers and not request.headers.get("Referer", "").startswith(self._referers):
            return Refusal(403, "the Referer is not one this service is offered to")
        if identity is None and self._methods and not self._settings.anonymous:
            return self._unauthorised("credentials are required")
        rule = self._resource(request)
        if rule is not None and not _admits(rule, identity):
            if identity is None:
                return self._unauthorised("credentials are required for this resource")
            return Refusal(403, "these credentials do not give access to this resource")
        return None

    def _unauthorised(self, message: str, detail: str = "") -> Refusal:
        challenge = self._challenge
        if detail and challenge.startswith("Bearer"):
            challenge = challenge.replace(f"Bearer {_REALM}", f"Bearer {_REALM}, {detail}", 1)
        return Refusal(401, message, {"WWW-Authenticate": challenge} if challenge else {})

    async def _identify(self, request: web.Request) -> Identity | None:
        """The identity of the request's credentials, ``None`` without any. Raises
        ``TokenRejected`` for a key or token that does not verify."""
        if "api_key" in self._methods:
            key = request.headers.get(self._header)
            if key is None and self._param is not None:
                key = request.rel_url.query.get(self._param)
            if key is not None:
                name = self._keys.name(key)
                if name is None:
                    raise TokenRejected("the API key is not valid")
                return Identity("key", name)
        if self._verifier is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                claims = await self._verifier.verify(token.strip())
                subject = claims.get(self._subject)
                if not isinstance(subject, str) or not subject:
                    raise TokenRejected(f"the token has no {self._subject!r} claim")
                return Identity("sub", subject, claims)
        return None

    def client(self, request: web.Request) -> str:
        """The client's address (``client_address`` with ``trusted_proxy_hops``)."""
        return client_address(request, self._hops)


def _admits(rule: ResourceAccess, identity: Identity | None) -> bool:
    """Whether ``rule`` admits ``identity`` (see ``ResourceAccess``)."""
    if identity is None:
        return False
    if identity.kind == "key":
        return identity.name in rule.api_keys
    return bool(rule.claims) and all(
        _claim_matches(identity.claims.get(name), wanted) for name, wanted in rule.claims.items()
    )


def _claim_matches(value: Any, wanted: str | list[str]) -> bool:
    allowed = {wanted} if isinstance(wanted, str) else set(wanted)
    if isinstance(value, str):
        return value in allowed or not allowed.isdisjoint(value.split())
    if isinstance(value, list):
        return any(isinstance(item, str) and item in allowed for item in value)
    return False
