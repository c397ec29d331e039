"""The WMTS KVP encoding (07-057r7 section 8): parameters by case-insensitive name, and the
checks of GetCapabilities (06-121r3 section 7.3) and GetTile (Table 29) parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from gateway.services.wmts.capabilities import SECTIONS
from gateway.services.wmts.ows import VERSION, OwsException, WmtsError, invalid, missing

# Operation names as 07-057r7 spells them, by their lower-case form: clients differ in case.
OPERATIONS: Final = {
    name.lower(): name for name in ("GetCapabilities", "GetTile", "GetFeatureInfo")
}
# Mandatory GetTile parameters after SERVICE and REQUEST, spelled as 07-057r7 Table 29 spells
# them (the spelling is the exception's locator; names match in any case).
GET_TILE_PARAMETERS: Final = (
    "Version",
    "Layer",
    "Style",
    "Format",
    "TileMatrixSet",
    "TileMatrix",
    "TileRow",
    "TileCol",
)
# The sections a GetCapabilities ``Sections`` parameter may name (06-121r3 section 7.3.3, plus
# WMTS Themes); this service has no Themes to list.
_SECTION_NAMES: Final = frozenset((*SECTIONS, "Themes", "All"))


def parameters(query: Mapping[str, str]) -> dict[str, str]:
    """Query parameters by lower-cased name (06-121r3 section 11.5.2: names are
    case-insensitive, values are not); the first of repeated names wins."""
    found: dict[str, str] = {}
    for name, value in query.items():
        found.setdefault(name.lower(), value)
    return found


def operation(found: Mapping[str, str]) -> str:
    """The operation a KVP request asks for (``GetCapabilities``, ``GetTile``...), checked
    against SERVICE (``WMTS``; ``WMS`` too for GetCapabilities, as QGIS asks a bare endpoint).

    Raises ``WmtsError`` (400): MissingParameterValue for SERVICE/REQUEST, InvalidParameterValue
    for another service.
    """
    absent = [missing(name) for name in ("service", "request") if not found.get(name)]
    if absent:
        raise WmtsError(400, *absent)
    service = found["service"]
    asked = OPERATIONS.get(found["request"].lower(), found["request"])
    if service.upper() != "WMTS" and not (service.upper() == "WMS" and asked == "GetCapabilities"):
        raise WmtsError(400, invalid("service", f"this is a WMTS, not {service!r}"))
    return asked


def capabilities_sections(found: Mapping[str, str]) -> tuple[str, ...]:
    """The sections a KVP GetCapabilities asks for (07-057r7 section 8.1) after its
    AcceptVersions and Sections (06-121r3 sections 7.3.2 and 7.3.3); ``version``,
    updateSequence and AcceptFormats are ignored, as the service keeps no update sequence and
    has one format (06-121r3 sections 7.3.4 and 7.3.5).

    Raises ``WmtsError`` (400): MissingParameterValue for an empty AcceptVersions or Sections,
    VersionNegotiationFailed without 1.0.0, InvalidParameterValue for an unknown section.
    """
    versions = found.get("acceptversions")
    if versions is not None:
        if not versions.strip():
            raise WmtsError(400, missing("AcceptVersions"))
        if VERSION not in (version.strip() for version in versions.split(",")):
            raise WmtsError(
                400,
                OwsException(
                    "VersionNegotiationFailed", None, f"this service speaks WMTS {VERSION} only"
                ),
            )
    requested = found.get("sections")
    if requested is None:
        return SECTIONS
    names = [name.strip() for name in requested.split(",") if name.strip()]
    if not names:
        raise WmtsError(400, missing("Sections"))
    unknown = [name for name in names if name not in _SECTION_NAMES]
    if unknown:
        allowed = ", ".join(sorted(_SECTION_NAMES))
        raise WmtsError(
            400, invalid("Sections", f"unknown section {unknown[0]!r}; one of {allowed}")
        )
    if "All" in names:
        return SECTIONS
    return tuple(section for section in SECTIONS if section in names)


def check_get_tile(found: Mapping[str, str]) -> None:
    """Raise ``WmtsError`` (400) unless a KVP GetTile has every mandatory parameter
    (MissingParameterValue for each missing one) and ``VERSION=1.0.0``."""
    absent = [missing(name) for name in GET_TILE_PARAMETERS if not found.get(name.lower())]
    if absent:
        raise WmtsError(400, *absent)
    if found["version"] != VERSION:
        raise WmtsError(
            400, invalid("Version", f"GetTile is WMTS {VERSION}, not {found['version']!r}")
        )
