"""Typed configuration of the gateway: one YAML file, with ``${VAR}`` environment substitution.

The file has three main sections, ``server``, ``cache`` and ``layers`` (plus the optional
``proxy`` and ``jobs``) (see ``config/example.yaml``
for every field with comments). Strings may reference environment variables as ``${NAME}`` or
``${NAME:-default}``; that is how URLs and secrets are overridden per deployment without
editing the file (the same convention as MapProxy >= 6.1 and docker-compose).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from limits import parse_many
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pyproj import CRS
from pyproj.exceptions import CRSError

from gateway.redis_url import check_redis_url
from gateway.timevalues import parse_time

LAYER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# An allowed_hosts entry: a name or IPv4 address, "*." and a domain, or a bracketed IPv6
# address; each optionally with ":port".
_HOST_PATTERN = re.compile(
    r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?"
)

# Map pictures (png, jpg, webp) and the elevation encodings of gateway.terrain, whose tiles
# MapLibre's raster-dem sources read as heights.
TileFormat = Literal["png", "jpg", "webp", "terrain-rgb", "terrarium"]
ELEVATION_FORMATS = ("terrain-rgb", "terrarium")
# Served by default for every layer: the OGC TMS 2.0 sets clients know, each with a 512-pixel
# variant (same tiles, twice the pixels) for high-density screens (ogc-interop.md section 5).
BUILTIN_TILE_MATRIX_SETS = (
    "WebMercatorQuad",
    "WorldCRS84Quad",
    "WGS1984Quad",
    "WebMercatorQuad_2x",
    "WorldCRS84Quad_2x",
    "WGS1984Quad_2x",
)
# ArcGIS accepts these four WKIDs for spherical Web Mercator (arcgis-rest.md section 1.1, S16);
# older servers only know 102113 or 102100, so the WKID the gateway sends is configurable.
WebMercatorWkid = Literal[3857, 102100, 102113, 900913]
Interpolation = Literal[
    "RSP_BilinearInterpolation", "RSP_CubicConvolution", "RSP_Majority", "RSP_NearestNeighbor"
]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The packages of the ``otel`` extra that ``gateway.tracing`` imports.
_OTEL_MODULES = (
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.instrumentation.aiohttp_server",
    "opentelemetry.instrumentation.aiohttp_client",
    "opentelemetry.instrumentation.redis",
)


class TracingConfig(_Strict):
    """OpenTelemetry traces (``gateway.tracing``; needs the ``otel`` extra), off unless
    ``enabled``: a span per request, with a child per upstream HTTP call and per Redis command
    or pipeline, exported over OTLP/HTTP (protobuf) to ``endpoint``, the collector's traces URL
    (``http://collector:4318/v1/traces``). Unset, the OpenTelemetry SDK's environment variables
    decide (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus
    ``/v1/traces``, else ``http://localhost:4318/v1/traces``), as they do for the sampler
    (``OTEL_TRACES_SAMPLER``) and the batching (``OTEL_BSP_*``). ``service_name`` is the
    resource's ``service.name`` unless ``OTEL_SERVICE_NAME`` is set. Raises ``ValueError``
    (a config error) when enabled without the extra installed.
    """

    enabled: bool = False
    endpoint: AnyHttpUrl | None = None
    service_name: Annotated[str, Field(min_length=1)] = "tile-gateway"

    @field_validator("enabled")
    @classmethod
    def _extra_installed(cls, value: bool) -> bool:
        if value:
            missing = [name for name in _OTEL_MODULES if not _importable(name)]
            if missing:
                raise ValueError(
                    f"tracing needs the otel extra (pip install 'tile-gateway[otel]'); "
                    f"missing: {', '.join(missing)}"
                )
        return value


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class ServerConfig(_Strict):
    """How the gateway listens and answers.

    ``upstream_timeout`` is the total time, in seconds, allowed for one upstream request
    (exportImage, service info) before the client gets a 504; ``upstream_connections`` bounds
    the open connections to each upstream origin (more requests wait for one).
    ``max_concurrent_exports`` bounds the exportImage calls in flight to each upstream service
    (one ImageServer URL, shared by every layer of it) from this process; a call beyond it waits
    for a slot, at most ``export_queue_timeout`` seconds and with at most
    ``max_queued_exports`` calls waiting, else the client gets a 503 with ``Retry-After`` (or a
    stale copy inside ``stale_if_error``). ``public_url``
    is the base URL clients reach the gateway at (used for
    every absolute URL in capabilities, TileJSON and OGC API documents); without it the request's
    own scheme and Host are used, and with ``trust_proxy`` the ``X-Forwarded-Proto``,
    ``X-Forwarded-Host`` and ``X-Forwarded-Prefix`` headers of a reverse proxy are honoured.
    ``allowed_hosts`` lists the host names (``tiles.example.org``), wildcards of subdomains
    (``*.example.org``) and ``host:port`` pairs a request's ``Host`` (its ``X-Forwarded-Host``
    with ``trust_proxy``) may name; others get 400. Unset, any host is answered.

    Connections (per process): ``keepalive_timeout`` is how long, in seconds, a connection may
    go without a complete request head, counted from its opening or from the end of its last
    answer; bytes trickling in do not restart it, so it bounds the time to receive a request's
    headers as well as idleness (aiohttp's ``keepalive_timeout``). ``max_client_connections``
    bounds the open client connections; one accepted beyond it is closed at once.

    ``log_format`` is ``text`` (a line of words) or ``json`` (one JSON object a line:
    ``logs.JsonFormatter``). Every answer carries an ``X-Request-Id``, sent upstream too and
    logged: the client's own (1 to 128 letters, digits and ``._:+=/-``) with ``trust_proxy``,
    else a new one. ``tracing`` turns OpenTelemetry traces on (``TracingConfig``).
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    cors_allow_origin: str = "*"
    upstream_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    upstream_connections: Annotated[int, Field(ge=1, le=10000)] = 100
    max_concurrent_exports: Annotated[int, Field(ge=1, le=10000)] = 4
    max_queued_exports: Annotated[int, Field(ge=0, le=100000)] = 64
    export_queue_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    public_url: AnyHttpUrl | None = None
    trust_proxy: bool = False
    allowed_hosts: Annotated[list[str], Field(min_length=1)] | None = None
    startup_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    keepalive_timeout: Annotated[float, Field(gt=0, le=3600)] = 75.0
    max_client_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    log_format: Literal["text", "json"] = "text"
    tracing: TracingConfig = TracingConfig()

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        patterns = []
        for pattern in value:
            if not _HOST_PATTERN.fullmatch(pattern):
                raise ValueError(
                    f"{pattern!r} is not a host name, *.domain or host:port (IPv6 in brackets)"
                )
            # Host names compare case-insensitively (RFC 9110 section 4.2.3).
            patterns.append(pattern.lower())
        return patterns


class ServiceConfig(_Strict):
    """Who publishes the service: WMTS ServiceIdentification / ServiceProvider (OWS 1.1, 06-121r3
    section 7.4) and the OGC API landing page."""

    title: str = "tile-gateway"
    abstract: str = "Tiles of ArcGIS Image Services through exportImage"
    keywords: list[str] = []
    provider_name: str = "tile-gateway"
    provider_site: AnyHttpUrl | None = None
    contact_name: str | None = None
    contact_email: str | None = None
    fees: str = "none"
    access_constraints: str = "none"


class TileMatrixSetConfig(_Strict):
    """A custom TileMatrixSet (OGC 17-083r4) built with morecantile ``TileMatrixSet.custom``.

    ``crs`` is an EPSG code (``EPSG:25832``): the same code is sent as bboxSR/imageSR.
    ``extent`` is ``[xmin, ymin, xmax, ymax]`` in the CRS's units, easting/northing order; tiles
    are ``tile_size`` pixels square; TileMatrix 0 has ``matrix_width`` x ``matrix_height`` tiles
    and each further level doubles both.
    """

    crs: str
    extent: tuple[float, float, float, float]
    tile_size: Annotated[int, Field(ge=16, le=4096)] = 256
    matrix_width: Annotated[int, Field(ge=1)] = 1
    matrix_height: Annotated[int, Field(ge=1)] = 1
    minzoom: Annotated[int, Field(ge=0, le=30)] = 0
    maxzoom: Annotated[int, Field(ge=0, le=30)] = 15
    title: str | None = None

    @field_validator("crs")
    @classmethod
    def _epsg_code(cls, value: str) -> str:
        if not re.fullmatch(r"EPSG:\d+", value):
            raise ValueError("must be an EPSG code such as EPSG:25832")
        try:
            CRS.from_user_input(value)
        except CRSError:
            raise ValueError(f"{value} is not a CRS known to PROJ") from None
        return value

    @model_validator(mode="after")
    def _extent_order(self) -> TileMatrixSetConfig:
        xmin, ymin, xmax, ymax = self.extent
        if xmin >= xmax or ymin >= ymax:
            raise ValueError("extent must be [xmin, ymin, xmax, ymax], min below max")
        if self.minzoom > self.maxzoom:
            raise ValueError("minzoom must not be greater than maxzoom")
        return self


class CacheConfig(_Strict):
    """Where tiles are cached: ``memory`` in this process, or a shared ``redis``.

    ``redis_url`` takes the redis-py URL forms ``redis://[[user]:password@]host[:port][/db]`` and
    ``rediss://`` for TLS (query options such as ``ssl_ca_certs`` pass through to redis-py).
    Sentinel is ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<service>[/db]``
    and Cluster ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (``rediss+`` for
    TLS). ``backend`` defaults to ``redis`` when a URL is given, else ``memory``. ``timeout``
    bounds every cache operation in seconds; ``retry_interval`` is how long, in seconds, an
    unreachable cache is left alone before it is tried again. ``l1_max_bytes`` bounds the
    in-process LRU in front of the backend (0 turns it off) and ``memory_max_bytes`` the
    ``memory`` backend, the least recently used tiles dropped beyond it (both in bytes: tile
    bytes plus 512 per entry); ``lock_lease`` is how long, in seconds, the lock of a metatile
    outlives a replica that died fetching it (other processes stop waiting for it after
    ``server.upstream_timeout`` anyway, see ``cache.coalesce``); ``purge_poll`` how often, in
    seconds, a replica looks for purges made by the others;
    ``max_connections`` bounds each process's Redis connections (per node on a Cluster); a
    burst beyond it waits for a free connection (the single node's pool up to ``timeout``;
    Sentinel and Cluster calls for a permit of the cache).
    """

    backend: Literal["memory", "redis"] | None = None
    redis_url: str | None = None
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "tg"
    timeout: Annotated[float, Field(gt=0, le=60)] = 0.5
    retry_interval: Annotated[float, Field(ge=0, le=3600)] = 1.0
    l1_max_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    memory_max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 256 * 1024 * 1024
    lock_lease: Annotated[float, Field(gt=0, le=600)] = 30.0
    purge_poll: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_connections: Annotated[int, Field(ge=1, le=10000)] = 100

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        schemes = tuple(
            f"{scheme}{kind}://"
            for scheme in ("redis", "rediss")
            for kind in ("", "+sentinel", "+cluster")
        )
        if not value.startswith(schemes):
            raise ValueError(
                "must start with redis://, rediss://, redis+sentinel:// or redis+cluster://"
            )
        # Here, so that check-config rejects what the cache would only fail on at start-up.
        check_redis_url(value)
        return value

    @model_validator(mode="after")
    def _backend_needs_url(self) -> CacheConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend 'redis' needs cache.redis_url")
        return self

    @property
    def effective_backend(self) -> Literal["memory", "redis"]:
        """The backend in use: the explicit one, else ``redis`` when a URL is set."""
        if self.backend is not None:
            return self.backend
        return "redis" if self.redis_url else "memory"


class ExportParams(_Strict):
    """Fixed exportImage parameters of a layer, sent on every call as configured.

    Names and value syntax are those of the ArcGIS REST "Export Image" page
    (arcgis-rest.md section 1.1): ``bandIds`` 0-based, ``renderingRule``/``mosaicRule`` JSON
    objects (or their JSON text), ``noData`` one number or one per band.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    bandIds: list[Annotated[int, Field(ge=0)]] | None = None
    renderingRule: dict[str, Any] | str | None = None
    mosaicRule: dict[str, Any] | str | None = None
    noData: float | list[float] | None = None
    noDataInterpretation: Literal["esriNoDataMatchAny", "esriNoDataMatchAll"] | None = None
    interpolation: Interpolation | None = None
    compressionQuality: Annotated[int, Field(ge=0, le=100)] | None = None
    pixelType: str | None = None


STYLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StyleConfig(_Strict):
    """One named rendering of a layer a client may choose (``?style=``, a WMTS ``Style``).

    ``rasterFunction`` names a raster function of the upstream's ``rasterFunctionInfos`` (sent
    as ``renderingRule={"rasterFunction": <name>}``); ``renderingRule`` is a whole
    renderingRule JSON object instead (a template with ``rasterFunctionArguments``); either
    may come with ``bandIds`` (0-based), or ``bandIds`` alone makes a band combination. What a
    style sets replaces the layer's ``export`` value of the same name (ArcGIS REST "Export
    Image": ``renderingRule``, ``bandIds``). ``title``/``abstract`` are shown in documents
    (WMTS Style, the viewer).
    """

    title: str | None = None
    abstract: str | None = None
    rasterFunction: Annotated[str, Field(min_length=1)] | None = None
    renderingRule: dict[str, Any] | None = None
    bandIds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> StyleConfig:
        if self.rasterFunction is not None and self.renderingRule is not None:
            raise ValueError("give rasterFunction or renderingRule, not both")
        return self

    def export(self) -> dict[str, Any]:
        """The exportImage parameters this style sets (``renderingRule``, ``bandIds``)."""
        params: dict[str, Any] = {}
        if self.rasterFunction is not None:
            params["renderingRule"] = {"rasterFunction": self.rasterFunction}
        elif self.renderingRule is not None:
            params["renderingRule"] = self.renderingRule
        if self.bandIds is not None:
            params["bandIds"] = self.bandIds
        return params


class TimeConfig(_Strict):
    """The time values a client may choose for a time-enabled layer (``?time=``, the WMTS
    ``Time`` Dimension, OGC API ``datetime``).

    ``values`` are ISO 8601 instants (``2020-08-31`` or ``2020-08-31T12:00:00Z``; a date is
    its midnight UTC, a time without offset is UTC) or intervals ``<start>/<end>``, in the
    order documents list them. Or ``from_service``: the distinct acquisition times of the
    service's catalog, read at start-up (its ``timeInfo.startTimeField``, by a catalog
    ``query``; ArcGIS REST "Query (Image Service)"). ``default`` is one of them (the last one
    when unset, or when the service lists no such time), sent when a request names no time.
    exportImage gets ``time`` as epoch milliseconds, ``t`` or ``t1,t2`` (ArcGIS REST "Export
    Image").
    """

    values: Annotated[list[str], Field(min_length=1)] | None = None
    from_service: bool = False
    default: str | None = None

    @field_validator("values", "default", mode="before")
    @classmethod
    def _yaml_dates(cls, value: Any) -> Any:
        # YAML reads an unquoted 2020-08-31 as a date: keep it as the ISO text it was.
        if isinstance(value, list):
            return [cls._yaml_dates(item) for item in value]
        return value.isoformat() if isinstance(value, date | datetime) else value

    @model_validator(mode="after")
    def _parsable(self) -> TimeConfig:
        if (self.values is None) == (not self.from_service):
            raise ValueError("give values, or from_service: true (not both)")
        seen: set[tuple[int, int]] = set()
        for value in self.values or ():
            parsed = parse_time(value)
            if parsed in seen:
                raise ValueError(f"time value {value!r} is listed twice")
            seen.add(parsed)
        if self.default is not None:
            span = parse_time(self.default)
            if self.values is not None and span not in seen:
                raise ValueError(f"default {self.default!r} is not one of the values")
        return self


# Keys a YAML file might use for a secret in plain text; each has ``<key>_env`` and
# ``<key>_file`` forms instead.
PLAIN_SECRETS = ("password", "token", "client_secret")


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret is read when it is needed: the environment variable ``env`` or the file
    ``file`` (e.g. a Kubernetes Secret mount), exactly one of them set. Never the secret."""

    env: str | None
    file: Path | None

    @property
    def source(self) -> str:
        """Where the secret comes from, for messages: ``environment variable X`` or
        ``file /path``."""
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


def _secret_ref(owner: BaseModel, name: str) -> SecretRef:
    """The ``SecretRef`` of ``<name>_env`` / ``<name>_file`` of ``owner``; raises
    ``ValueError`` unless exactly one is set."""
    env, file = getattr(owner, f"{name}_env"), getattr(owner, f"{name}_file")
    if (env is None) == (file is None):
        raise ValueError(f"give exactly one of {name}_env and {name}_file")
    return SecretRef(env, file)


class CredentialsBase(_Strict):
    """What every kind of credentials has: how the token travels (``send_as``: the ``token``
    parameter, or the ``X-Esri-Authorization: Bearer`` header, arcgis-rest.md section 4.6),
    the ``referer`` sent as the ``Referer`` header of every upstream and token request (and
    the one tokens are bound to with ``client: referer``), and ``refresh_margin``: a token is
    renewed that many seconds before it expires, or at 90 % of its lifetime when that is later
    (a short-lived token is not renewed on every request)."""

    send_as: Literal["param", "header"] = "param"
    referer: str | None = None
    refresh_margin: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # The secret each kind reads from ``<secret_name>_env`` or ``<secret_name>_file``.
    secret_name: ClassVar[str]

    @model_validator(mode="after")
    def _one_source(self) -> CredentialsBase:
        _secret_ref(self, self.secret_name)
        return self

    @property
    def secret(self) -> SecretRef:
        """Where the secret (token, password or client secret) is read."""
        return _secret_ref(self, self.secret_name)

    @field_validator("referer")
    @classmethod
    def _referer_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/?#\s]+", value) or "?" in value or "#" in value:
            # A referer with a query string gives unusable tokens (resource-proxy #434).
            raise ValueError("must be an http(s) URL without query or fragment")
        return value


class _GenerateTokenBinding(CredentialsBase):
    """What a generateToken call binds its token to (ArcGIS REST "Generate Token",
    arcgis-rest.md section 4.2): ``client`` ``referer`` (needs ``referer``) or ``requestip``
    (the gateway's own address; breaks behind several egress addresses); by default
    ``referer`` when a referer is given, else ``requestip``. ``expiration`` is the lifetime
    asked for, in minutes (the server clamps it to its maximum); unset, the server's default."""

    client: Literal["referer", "requestip"] | None = None
    expiration: Annotated[int, Field(ge=1, le=525600)] | None = None

    @model_validator(mode="after")
    def _referer_given(self) -> _GenerateTokenBinding:
        if self.client == "referer" and self.referer is None:
            raise ValueError("client: referer needs a referer (the URL tokens are bound to)")
        return self

    @property
    def binding(self) -> dict[str, str]:
        """The ``client`` (and ``referer``) fields of a generateToken form."""
        client = self.client or ("referer" if self.referer else "requestip")
        if client == "referer" and self.referer is not None:
            return {"client": client, "referer": self.referer}
        return {"client": client}


class StaticCredentials(CredentialsBase):
    """A fixed token or API key (arcgis-rest.md section 4.5), read from ``token_env`` or
    ``token_file``. It is sent as it is; a token file is read again when the upstream rejects
    the token (a rotated Kubernetes Secret)."""

    type: Literal["static"]
    secret_name: ClassVar[str] = "token"
    token_env: str | None = None
    token_file: Path | None = None


class ServerCredentials(_GenerateTokenBinding):
    """A user of a stand-alone ArcGIS Server: ``username`` and the password of
    ``password_env`` / ``password_file``, POSTed to its ``.../tokens/generateToken``.

    ``url`` is that token service; unset, it is discovered from the server's
    ``<root>/rest/info`` (``authInfo.tokenServicesUrl``, arcgis-rest.md section 4.1).
    """

    type: Literal["server"]
    secret_name: ClassVar[str] = "password"
    url: AnyHttpUrl | None = None
    username: Annotated[str, Field(min_length=1)]
    password_env: str | None = None
    password_file: Path | None = None


class PortalCredentials(ServerCredentials):
    """A user of an ArcGIS Enterprise portal or ArcGIS Online: ``username`` and password
    POSTed to the portal's ``/sharing/rest/generateToken`` (``url``; unset, the
    ``tokenServicesUrl`` of the server's ``/rest/info``, which a federated server points at
    its portal). With ``exchange``, the portal token is exchanged at the same service for a
    token of the layer's federated server (``token`` + ``serverUrl``, arcgis-rest.md section
    4.3); without, the portal token itself is sent (ArcGIS Online hosted services)."""

    type: Literal["portal"]
    exchange: bool = False


class OAuth2Credentials(CredentialsBase):
    """An application registered with a portal or ArcGIS Online: ``client_id`` and the
    secret of ``client_secret_env`` / ``client_secret_file``, POSTed with
    ``grant_type=client_credentials`` to ``/sharing/rest/oauth2/token`` (``url``; unset,
    beside the portal ``generateToken`` named by the server's ``/rest/info``), arcgis-rest.md
    section 4.4. ``expiration`` is in minutes. With ``exchange``, the app token is exchanged
    at the portal's ``generateToken`` for a token of the layer's federated server."""

    type: Literal["oauth2"]
    secret_name: ClassVar[str] = "client_secret"
    url: AnyHttpUrl | None = None
    client_id: Annotated[str, Field(min_length=1)]
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    expiration: Annotated[int, Field(ge=1, le=525600)] | None = None
    exchange: bool = False


CredentialsConfig = Annotated[
    StaticCredentials | ServerCredentials | PortalCredentials | OAuth2Credentials,
    Field(discriminator="type"),
]


class ResourceAccess(_Strict):
    """Who may use one layer or proxied service, beyond what its route group admits
    (README, "Access control"): an identity by API key whose name is in ``api_keys``, or by
    a JWT carrying every claim of ``claims`` (a claim matches when its value, or one of its
    space-separated words (OAuth ``scope``, RFC 8693 section 4.2) or list items, is the
    required value or one of the required values). Anyone else is refused: 401 without an
    identity, 403 with one."""

    api_keys: list[str] = []
    claims: dict[str, str | list[str]] = {}


class LayerConfig(_Strict):
    """One published tile layer: an upstream ImageServer plus fixed export parameters and policy.

    ``url`` is the ImageServer's root (``.../rest/services/<name>/ImageServer``). ``formats`` are
    the tile extensions offered, the first being the viewer's default. ``minzoom``/``maxzoom``
    bound the TileMatrix (zoom) levels served in every TileMatrixSet of ``tile_matrix_sets``;
    without ``maxzoom``, each set's last level is the one whose cell size is just finer than
    the service's pixel size, plus ``overzoom`` levels (``tiles.zooms``).
    ``ttl`` is the cache lifetime of a tile in seconds, also sent as ``Cache-Control: max-age``.
    ``bounds`` (``[west, south, east, north]``, degrees, lon/lat) overrides the data extent read
    from the upstream's service info; tiles wholly outside it are answered without an upstream
    call, transparent (PNG) or ``background`` (JPEG, ``#rrggbb``).

    Metatiles: ``meta_size`` ``[columns, rows]`` of tiles fetched in one exportImage call (never
    larger than the upstream's maxImageWidth/maxImageHeight) with ``meta_buffer`` extra pixels
    around it, cut and encoded per tile: PNG (``png8`` quantises to 256 colours), JPEG at
    ``jpeg_quality`` or WebP at ``webp_quality``. A metatile is fetched in
    ``metatile_format``: with ``auto``, as JPEG (at
    ``export.compressionQuality`` when set, else ``metatile_jpeg_quality``) for JPEG tiles of a
    layer whose ``background`` is black (what ArcGIS paints where a JPEG has no data), else as
    PNG, which keeps transparency; the upstream renders and sends a JPEG at a fraction of a
    PNG's cost. Stale serving: for ``stale_while_revalidate`` seconds past its ``ttl`` a
    tile is still served while one background refresh runs; for ``stale_if_error`` seconds
    past it, it is served when the upstream fails (RFC 5861 semantics). ``credentials`` names
    the entry of the top-level ``credentials`` that gets the upstream's token. ``access``
    restricts the layer to some API keys or JWT claims (``ResourceAccess``).

    ``use_service_cache``: with ``auto``, when the upstream is a cached image service whose
    ``tileInfo`` matches a TileMatrixSet of the layer (``tiles.servicecache``) and the layer
    sets no ``export`` parameter (the cache holds the service's default rendering), those
    tiles are read from its ``tile/<level>/<row>/<col>``, falling back to exportImage for a
    missing tile; ``never`` always renders with exportImage.

    Elevation: ``terrain-rgb`` and ``terrarium`` in ``formats`` serve a single-band elevation
    service's heights as Mapbox Terrain-RGB or Terrarium PNG tiles (``gateway.terrain``), from
    metatiles of float pixels whatever ``metatile_format`` says; a layer lists at least one map
    format (``png``, ``jpg``, ``webp``) too, for WMTS and OGC API - Tiles.

    Variants a client may choose per request: ``styles`` (named renderings, ``StyleConfig``;
    ``default_style`` is the one a request without ``style`` gets, the first when unset) and
    ``time`` (``TimeConfig``). Each distinct (style, time) pair has its own cache entries; at
    most ``max_variants`` pairs besides the default are served per process, further ones are
    refused (400), so that a cache cannot be flooded with variants.
    """

    title: str | None = None
    url: AnyHttpUrl
    formats: Annotated[list[TileFormat], Field(min_length=1)] = ["png", "jpg"]
    export: ExportParams = ExportParams()
    web_mercator_wkid: WebMercatorWkid = 3857
    minzoom: Annotated[int, Field(ge=0, le=30)] = 0
    maxzoom: Annotated[int, Field(ge=0, le=30)] | None = None
    overzoom: Annotated[int, Field(ge=0, le=10)] = 1
    ttl: Annotated[int, Field(ge=1)] = 86400
    attribution: str = ""
    tile_matrix_sets: Annotated[list[str], Field(min_length=1)] = list(BUILTIN_TILE_MATRIX_SETS)
    bounds: tuple[float, float, float, float] | None = None
    background: Annotated[str, Field(pattern=r"^#[0-9A-Fa-f]{6}$")] = "#000000"
    meta_size: tuple[Annotated[int, Field(ge=1, le=32)], Annotated[int, Field(ge=1, le=32)]] = (
        4,
        4,
    )
    meta_buffer: Annotated[int, Field(ge=0, le=512)] = 0
    png8: bool = False
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 85
    webp_quality: Annotated[int, Field(ge=1, le=100)] = 80
    metatile_format: Literal["auto", "png", "jpg"] = "auto"
    metatile_jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    stale_while_revalidate: Annotated[int, Field(ge=0)] = 0
    stale_if_error: Annotated[int, Field(ge=0)] = 0
    credentials: str | None = None
    access: ResourceAccess | None = None
    use_service_cache: Literal["auto", "never"] = "auto"
    styles: dict[str, StyleConfig] = {}
    default_style: str | None = None
    time: TimeConfig | None = None
    max_variants: Annotated[int, Field(ge=1, le=10000)] = 32

    @field_validator("url")
    @classmethod
    def _image_server(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        path = (value.path or "").rstrip("/")
        if not path.endswith("/ImageServer"):
            raise ValueError("must be an ImageServer URL ending in /ImageServer")
        if value.query:
            raise ValueError("must not carry a query string (tokens are configured separately)")
        return value

    @model_validator(mode="after")
    def _zoom_order(self) -> LayerConfig:
        if self.maxzoom is not None and self.minzoom > self.maxzoom:
            raise ValueError("minzoom must not be greater than maxzoom")
        if self.bounds is not None:
            west, south, east, north = self.bounds
            if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
                raise ValueError("bounds must be [west, south, east, north] in degrees")
        for name in self.styles:
            if not STYLE_NAME.match(name):
                raise ValueError(
                    f"style name {name!r} must be letters, digits, '_', '-' or '.', "
                    "starting with a letter or digit"
                )
        if self.default_style is not None and self.default_style not in self.styles:
            known = ", ".join(self.styles) or "none are configured"
            raise ValueError(f"default_style {self.default_style!r} is not a style ({known})")
        return self

    @model_validator(mode="after")
    def _map_format(self) -> LayerConfig:
        # WMTS and OGC API - Tiles offer map pictures: the elevation encodings are not formats
        # of theirs (heights, for MapLibre's raster-dem), so a layer needs one besides them.
        if all(ext in ELEVATION_FORMATS for ext in self.formats):
            raise ValueError(
                "formats must hold a map format (png, jpg or webp) besides the elevation "
                "encodings, for WMTS and OGC API - Tiles"
            )
        return self

    @property
    def service_url(self) -> str:
        """The ImageServer root URL without a trailing slash."""
        return str(self.url).rstrip("/")

    @property
    def lifetime(self) -> int:
        """Seconds a tile is stored: its freshness (``ttl``) plus the longer stale window."""
        return self.ttl + max(self.stale_while_revalidate, self.stale_if_error)


class ViewerConfig(_Strict):
    """Where the viewer page (``GET /``) loads Leaflet, OpenLayers and MapLibre GL from.

    ``libraries: local`` (the default) serves them from the gateway itself, at
    ``/vendor/<name>@<version>/<path>`` (the npm packages' files in ``gateway/web/vendor``), so
    the viewer needs no internet access. ``cdn`` has the browser fetch the same files from
    ``cdn_url``: a base URL under which ``<name>@<version>/<path>`` is that file of the npm
    package, served with CORS (unpkg, or jsDelivr's ``https://cdn.jsdelivr.net/npm/``). The
    viewer checks both with the same Subresource Integrity hashes. A ``cdn_url`` without a
    trailing slash gets one; a query or fragment is refused.
    """

    libraries: Literal["local", "cdn"] = "local"
    cdn_url: AnyHttpUrl = AnyHttpUrl("https://unpkg.com/")

    @field_validator("cdn_url")
    @classmethod
    def _folder_url(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if value.query is not None or value.fragment is not None:
            raise ValueError("must be a folder URL, without a query or fragment")
        # Package paths are resolved against it: without the slash its last segment would go.
        text = str(value)
        return value if text.endswith("/") else AnyHttpUrl(text + "/")


# A path segment the reverse proxy forwards: the characters of ArcGIS folder, service,
# operation, job and output file names. Everything else (``%``, ``@``, ``:``, ``\``, spaces,
# non-ASCII) is refused before any matching (README, "Reverse proxy").
PROXY_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


def _proxy_segments(value: str, what: str, *, empty: bool) -> str:
    """``value`` without surrounding slashes, checked to be ``/``-separated ``PROXY_SEGMENT``s
    other than ``.`` and ``..``; ``""`` only when ``empty``."""
    stripped = value.strip("/")
    if not stripped:
        if empty:
            return ""
        raise ValueError(f"{what} must not be empty")
    for segment in stripped.split("/"):
        if not PROXY_SEGMENT.match(segment) or segment in (".", ".."):
            raise ValueError(
                f"{what} {value!r}: each segment must be letters, digits, '_', '-' or '.', "
                "and not '.' or '..'"
            )
    return stripped


class ProxyServiceConfig(_Strict):
    """One upstream of the reverse proxy: requests under ``<proxy.prefix>/<path>/`` go to
    ``url`` (an upstream base URL, e.g. ``https://gis.example.com/arcgis/rest/services``) with
    the rest of their path appended, when that rest starts with one of the ``allow`` service
    path prefixes (whole segments: ``rgb/ImageServer`` allows ``rgb/ImageServer/exportImage``,
    not ``rgb/ImageServerX``; case-sensitive). ``path`` may be ``""`` for one upstream.
    ``credentials`` names the credential set whose token is sent upstream (none: no token).
    ``outputs_url`` is the upstream's output directory, whose files ``exportImage?f=json``
    names in ``href``; by default ``.../rest/directories/arcgisoutput`` beside ``url``'s
    ``.../rest/services``. ``access`` restricts the service to some API keys or JWT claims
    (``ResourceAccess``).
    """

    path: str = ""
    url: AnyHttpUrl
    credentials: str | None = None
    access: ResourceAccess | None = None
    allow: Annotated[list[str], Field(min_length=1)]
    outputs_url: AnyHttpUrl | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _proxy_segments(value, "path", empty=True)

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return [_proxy_segments(prefix, "allow prefix", empty=False) for prefix in value]

    @field_validator("url", "outputs_url")
    @classmethod
    def _base_url(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if value is not None and (value.query is not None or value.fragment is not None):
            raise ValueError("must not carry a query string or fragment (tokens are not URLs)")
        if value is not None and (value.username is not None or value.password is not None):
            raise ValueError("must not carry a user name or password")
        return value

    @property
    def base_url(self) -> str:
        """``url`` without a trailing slash."""
        return str(self.url).rstrip("/")

    @property
    def outputs_base(self) -> str | None:
        """The upstream output directory without a trailing slash, or ``None`` when neither
        configured nor derivable (``url`` has no ``/rest/services``)."""
        if self.outputs_url is not None:
            return str(self.outputs_url).rstrip("/")
        base = self.base_url
        head, found, _ = base.partition("/rest/services")
        return f"{head}/rest/directories/arcgisoutput" if found else None


class ProxyConfig(_Strict):
    """The ArcGIS REST reverse proxy (README, "Reverse proxy").

    ``prefix`` is where it is mounted on the gateway; ``services`` the upstreams, each under
    its own ``path``. ``max_body_bytes`` bounds a POST body (larger: 413).
    ``max_document_bytes`` bounds a JSON or text answer, which is read whole to be scrubbed
    (larger: 502). ``cache_ttl`` is how long, in seconds, a cacheable read
    (``exportImage?f=image`` with bbox and size, a cached service's ``tile/<level>/<row>/<col>``)
    is kept, 0 for never; ``cache_max_pixels`` bounds the width x height of an export that is
    cached (larger ones are streamed, never held in memory).
    """

    prefix: str = "/arcgis/rest/services"
    services: Annotated[list[ProxyServiceConfig], Field(min_length=1)]
    max_body_bytes: Annotated[int, Field(ge=0)] = 10 * 1024 * 1024
    max_document_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    cache_ttl: Annotated[int, Field(ge=0)] = 86400
    cache_max_pixels: Annotated[int, Field(ge=1)] = 4096 * 4096

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return "/" + _proxy_segments(value, "prefix", empty=False)

    @model_validator(mode="after")
    def _distinct_paths(self) -> ProxyConfig:
        paths = [service.path for service in self.services]
        for path in paths:
            if paths.count(path) > 1:
                raise ValueError(f"proxy.services: path {path!r} is given more than once")
        return self


class JobsServiceConfig(_Strict):
    """The upstream geoprocessing service of the jobs relay: ``url`` is its ``GPServer`` URL
    (``https://host/arcgis/rest/services/System/RasterAnalysisTools/GPServer``, arcgis-rest.md
    section 5.2) and ``credentials`` the credential set whose token it gets (none: no token)."""

    url: AnyHttpUrl
    credentials: str | None = None

    @field_validator("url")
    @classmethod
    def _plain_url(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if value.query is not None or value.fragment is not None:
            raise ValueError("must not carry a query string or fragment (tokens are not URLs)")
        if value.username is not None or value.password is not None:
            raise ValueError("must not carry a user name or password")
        return value

    @property
    def base_url(self) -> str:
        """``url`` without a trailing slash."""
        return str(self.url).rstrip("/")


class JobsConfig(_Strict):
    """The ``CreateImageCollection`` jobs relay (README, "Jobs"), mounted under the proxy's
    prefix (``proxy.prefix``, ``/arcgis/rest/services`` without a proxy) at ``path``.

    ``retention`` is how long, in seconds, a job's record (its owner) is kept after its
    submission; ``max_wait`` bounds the ``wait`` of a long poll and the life of an event
    stream without a status change, in seconds; the one poller of a job asks the upstream
    every ``poll_min`` seconds after a change, backing off by half again each time nothing
    changed up to ``poll_max``; ``max_memory_jobs`` bounds the records kept in memory
    without Redis (the oldest dropped first).
    """

    path: str = "System/RasterAnalysisTools/GPServer"
    service: JobsServiceConfig
    retention: Annotated[int, Field(ge=60)] = 7 * 86400
    max_wait: Annotated[float, Field(gt=0, le=3600)] = 60.0
    poll_min: Annotated[float, Field(gt=0, le=600)] = 1.0
    poll_max: Annotated[float, Field(gt=0, le=3600)] = 10.0
    max_memory_jobs: Annotated[int, Field(ge=1)] = 10_000

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _proxy_segments(value, "path", empty=False)

    @model_validator(mode="after")
    def _poll_range(self) -> JobsConfig:
        if self.poll_max < self.poll_min:
            raise ValueError("poll_max must not be below poll_min")
        return self


# Signature algorithms a JWT may use (RFC 7518 section 3.1, RFC 8037): asymmetric only, so that
# a key published in a JWKS can never sign; "none" and the HMAC ones are never accepted.
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
AuthMethod = Literal["api_key", "jwt"]
RouteGroup = Literal["tiles", "proxy", "admin"]
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class JwtConfig(_Strict):
    """JWT bearer tokens (``Authorization: Bearer``, RFC 6750 section 2.1) signed by a key of
    the JWKS at ``jwks_url`` (RFC 7517).

    A token must name an allowed ``algorithms`` entry, carry ``exp``, and have ``iss`` equal
    to ``issuer`` and ``aud`` holding ``audience`` (or one of them); ``exp``/``nbf``/``iat``
    are checked with ``leeway`` seconds of clock skew (RFC 7519 section 4.1). The key set is
    kept ``jwks_cache`` seconds, and fetched again sooner when a token names a key id it does
    not hold (a rotation), at most once per ``jwks_refetch_interval`` seconds. ``subject`` is
    the claim that identifies a client for rate limits.
    """

    jwks_url: AnyHttpUrl
    issuer: str
    audience: str | Annotated[list[str], Field(min_length=1)]
    algorithms: Annotated[list[JwtAlgorithm], Field(min_length=1)] = ["RS256", "ES256"]
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    jwks_cache: Annotated[float, Field(gt=0, le=86400)] = 300.0
    jwks_refetch_interval: Annotated[float, Field(ge=0, le=3600)] = 10.0
    subject: str = "sub"


class GroupAccess(_Strict):
    """Access to one route group (``tiles``: /tiles, /wmts and /ogcapi; ``proxy``: the
    reverse proxy; ``admin``).

    ``authenticate`` lists the identities accepted (``api_key``, ``jwt``); empty, the group is
    open. With ``anonymous`` a request without credentials is admitted too (but not to a
    restricted layer or service); wrong credentials are always refused (401).
    ``rate_limit`` is a ``limits`` rate string (``100/second``, ``10/second;1000/hour``) per
    client: an identity's key name or JWT subject, else the client address.
    ``cors_allow_origins`` replaces ``server.cors_allow_origin`` for the group: ``["*"]``,
    or origins echoed back when a request's ``Origin`` is one of them. ``referers`` lists URL
    prefixes a request's ``Referer`` must start with (a convenience against casual embedding,
    not a security boundary: any client can send any ``Referer``).
    """

    authenticate: list[AuthMethod] = []
    anonymous: bool = False
    rate_limit: str | None = None
    cors_allow_origins: Annotated[list[str], Field(min_length=1)] | None = None
    referers: Annotated[list[str], Field(min_length=1)] | None = None

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a rate such as 100/second or 10/second;1000/hour"
                ) from None
        return value


class AccessConfig(_Strict):
    """Inbound access control (README, "Access control"): API keys, JWT, rate limits, CORS
    and Referer checks per route group (``groups``).

    API keys are configured as the SHA-256 of the key (64 hex digits) by name: in
    ``api_keys`` and/or in ``api_keys_file``, read at start-up, a ``name sha256hex`` pair per
    line (``#`` comments). A client sends its key in the ``api_key_header`` header or, for
    map clients that can only put it in a URL, in the ``api_key_param`` query parameter
    (``null``: header only); the parameter is removed before the request goes further (never
    in a cache key, a log line or an upstream request). ``trusted_proxy_hops`` is how many
    reverse proxies in front of the gateway append to ``X-Forwarded-For``: the client address
    of rate limits is the entry that many from the right (0: the connection's own address);
    unset, 1 with ``server.trust_proxy``, else 0. Rate-limit counters live in the cache's
    Redis (``cache.redis_url``) with the redis backend, so a limit holds across replicas;
    else in this process's memory.
    """

    api_key_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")] = "X-API-Key"
    api_key_param: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = "api_key"
    api_keys: dict[str, str] = {}
    api_keys_file: Path | None = None
    jwt: JwtConfig | None = None
    trusted_proxy_hops: Annotated[int, Field(ge=0, le=16)] | None = None
    groups: dict[RouteGroup, GroupAccess] = {}

    @field_validator("api_keys")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if not LAYER_NAME.match(name):
                raise ValueError(f"api key name {name!r} must be letters, digits, '_', '-', '.'")
            if not _SHA256_HEX.match(digest):
                # Never the value: it may be a key pasted by mistake.
                raise ValueError(
                    f"api_keys.{name}: give the SHA-256 of the key as 64 hex digits "
                    "(printf %s KEY | sha256sum), never the key itself"
                )
        return {name: digest.lower() for name, digest in value.items()}

    @model_validator(mode="after")
    def _methods_configured(self) -> AccessConfig:
        keys = bool(self.api_keys) or self.api_keys_file is not None
        for group, settings in self.groups.items():
            if "jwt" in settings.authenticate and self.jwt is None:
                raise ValueError(f"groups.{group}: authenticate jwt needs access.jwt")
            if "api_key" in settings.authenticate and not keys:
                raise ValueError(
                    f"groups.{group}: authenticate api_key needs api_keys or api_keys_file"
                )
            if group == "admin" and "jwt" in settings.authenticate:
                raise ValueError(
                    "groups.admin: the admin API's Authorization header carries its own token "
                    "(TILE_GATEWAY_ADMIN_TOKEN); authenticate it with api_key only"
                )
        return self

    def client_hops(self, server: ServerConfig) -> int:
        """``trusted_proxy_hops``, or its default from ``server.trust_proxy``."""
        if self.trusted_proxy_hops is not None:
            return self.trusted_proxy_hops
        return 1 if server.trust_proxy else 0


class GatewayConfig(_Strict):
    """The whole configuration: server, service metadata, cache, the viewer, custom
    TileMatrixSets, the upstream credentials keyed by a name layers refer to (and the proxy
    names), inbound access control (``access``, per route group), the ArcGIS REST reverse
    proxy (optional), the CreateImageCollection jobs relay (``jobs``, optional) and the
    layers keyed by their URL name.

    A secret is never written in the file: a ``password``, ``token`` or ``client_secret`` key
    in a credentials entry is refused, naming the ``_env`` / ``_file`` keys to use instead.
    """

    server: ServerConfig = ServerConfig()
    service: ServiceConfig = ServiceConfig()
    cache: CacheConfig = CacheConfig()
    viewer: ViewerConfig = ViewerConfig()
    tile_matrix_sets: dict[str, TileMatrixSetConfig] = {}
    proxy: ProxyConfig | None = None
    jobs: JobsConfig | None = None
    credentials: dict[str, CredentialsConfig] = {}
    access: AccessConfig = AccessConfig()
    layers: Annotated[dict[str, LayerConfig], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _no_plain_secrets(cls, data: Any) -> Any:
        # Before field validation, so that this message comes first, and never the value.
        credentials = data.get("credentials") if isinstance(data, dict) else None
        if not isinstance(credentials, dict):
            return data
        for name, entry in credentials.items():
            for key in PLAIN_SECRETS:
                if isinstance(entry, dict) and key in entry:
                    raise ValueError(
                        f"credentials.{name}.{key}: secrets are never written in the "
                        f"configuration file; give {key}_env (the name of an environment "
                        f"variable holding it) or {key}_file (a file holding it, such as a "
                        "mounted Kubernetes Secret)"
                    )
        return data

    @model_validator(mode="after")
    def _known_credentials(self) -> GatewayConfig:
        for name in self.credentials:
            if not LAYER_NAME.match(name):
                raise ValueError(
                    f"credentials: {name!r} must be letters, digits, '_', '-' or '.', "
                    "starting with a letter or digit"
                )
        for layer_name, layer in self.layers.items():
            if layer.credentials is not None and layer.credentials not in self.credentials:
                known = ", ".join(self.credentials) or "none are configured"
                raise ValueError(
                    f"layers.{layer_name}.credentials: unknown credentials "
                    f"{layer.credentials!r} ({known})"
                )
        for service in self.proxy.services if self.proxy is not None else ():
            if service.credentials is not None and service.credentials not in self.credentials:
                known = ", ".join(self.credentials) or "none are configured"
                raise ValueError(
                    f"proxy.services[path={service.path!r}].credentials: unknown credentials "
                    f"{service.credentials!r} ({known})"
                )
        jobs = self.jobs.service.credentials if self.jobs is not None else None
        if jobs is not None and jobs not in self.credentials:
            known = ", ".join(self.credentials) or "none are configured"
            raise ValueError(f"jobs.service.credentials: unknown credentials {jobs!r} ({known})")
        return self

    @model_validator(mode="after")
    def _restrictions_enforced(self) -> GatewayConfig:
        # A restriction in a group that reads no identity would admit nobody: say so now.
        restricted: list[tuple[RouteGroup, str, ResourceAccess]] = [
            ("tiles", f"layers.{name}", layer.access)
            for name, layer in self.layers.items()
            if layer.access is not None
        ]
        restricted += [
            ("proxy", f"proxy.services[path={service.path!r}]", service.access)
            for service in (self.proxy.services if self.proxy is not None else ())
            if service.access is not None
        ]
        access = self.access
        for group, where, rule in restricted:
            methods = access.groups[group].authenticate if group in access.groups else []
            if rule.api_keys and "api_key" not in methods:
                raise ValueError(
                    f"{where}.access.api_keys: access.groups.{group}.authenticate lacks api_key"
                )
            if rule.claims and "jwt" not in methods:
                raise ValueError(
                    f"{where}.access.claims: access.groups.{group}.authenticate lacks jwt"
                )
            unknown = [name for name in rule.api_keys if name not in access.api_keys]
            if unknown and access.api_keys_file is None:
                raise ValueError(f"{where}.access.api_keys: unknown API key {unknown[0]!r}")
        return self

    @model_validator(mode="after")
    def _known_tile_matrix_sets(self) -> GatewayConfig:
        for name in self.tile_matrix_sets:
            # An elevation encoding names the XYZ path /tiles/<layer>/<encoding>/{z}/{x}/{y}.png.
            if (
                name in BUILTIN_TILE_MATRIX_SETS
                or name in ELEVATION_FORMATS
                or not LAYER_NAME.match(name)
            ):
                raise ValueError(
                    f"tile_matrix_sets: {name!r} is a built-in, an elevation encoding or not a "
                    "valid name"
                )
        custom = set(self.tile_matrix_sets)
        known = set(BUILTIN_TILE_MATRIX_SETS) | custom | {f"{name}_2x" for name in custom}
        for layer_name, layer in self.layers.items():
            for tms in layer.tile_matrix_sets:
                if tms not in known:
                    raise ValueError(
                        f"layers.{layer_name}.tile_matrix_sets: unknown TileMatrixSet {tms!r}"
                    )
        return self

    @field_validator("layers")
    @classmethod
    def _layer_names(cls, value: dict[str, LayerConfig]) -> dict[str, LayerConfig]:
        for name in value:
            if not LAYER_NAME.match(name):
                raise ValueError(
                    f"layer name {name!r} must be letters, digits, '_', '-' or '.', "
                    "starting with a letter or digit"
                )
        return value


def config_warnings(config: GatewayConfig) -> list[str]:
    """Settings that work but are risky in production, each as a sentence for an operator.

    Today one: neither ``server.public_url`` nor ``server.allowed_hosts``, so documents carry
    URLs built from whatever ``Host`` a client sends (or ``X-Forwarded-Host`` with
    ``trust_proxy``).
    """
    server = config.server
    if server.public_url is None and server.allowed_hosts is None:
        header = "X-Forwarded-Host" if server.trust_proxy else "Host"
        return [
            f"server.public_url and server.allowed_hosts are both unset: capabilities, TileJSON "
            f"and OGC API documents hold URLs built from any {header} a client sends; set "
            "server.public_url, or server.allowed_hosts to the names clients use"
        ]
    return []


def substitute_env(value: Any, environ: dict[str, str] | None = None) -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of a parsed YAML tree.

    Raises ``ConfigError`` when a referenced variable is unset (or empty) and has no default;
    the message names the variable and how to set it.
    """
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is referenced but not set: set it (export {name}=...) "
            f"or give the reference a default in the file: ${{{name}:-default}}"
        )

    if isinstance(value, str):
        return _ENV_REF.sub(replace, value)
    if isinstance(value, list):
        return [substitute_env(item, env) for item in value]
    if isinstance(value, dict):
        return {key: substitute_env(item, env) for key, item in value.items()}
    return value


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate an already-parsed YAML tree (after environment substitution).

    Raises ``ConfigError`` naming ``source`` and the first bad field, e.g.
    ``config.yaml: layers.bluemarble.maxzoom: Input should be less than or equal to 30``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with server, cache, layers")
    try:
        substituted = substitute_env(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return GatewayConfig.model_validate(substituted)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field_path(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        more = exc.error_count() - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        # Whole-config checks name their field in the message itself.
        located = f"{where}: {message}" if where else message
        raise ConfigError(f"{source}: {located}{suffix}") from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read, substitute and validate a YAML configuration file.

    Raises ``ConfigError`` when the file is missing, is not UTF-8 YAML (saying where, never
    what the offending line holds), or has an invalid field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    return parse_config(data, str(path))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where (line and column, from 1), without the snippet of
    the offending line that ``str(exc)`` shows: the line may hold a password."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character #x{exc.character:04x} is not allowed, at character {exc.position}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "the file cannot be parsed"
    problem = exc.problem or exc.context or "the file cannot be parsed"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
