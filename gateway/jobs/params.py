"""The parameters of a ``CreateImageCollection`` submission, checked before anything is
forwarded (arcgis-rest.md section 5.2, from Esri's "Create Image Collection" page).

Each JSON-valued parameter must parse; a parse error names the line, column and character
position, and typographic quotes (“ ” and their single and low kin, which the task's own
documentation prints and users copy) are named as such. Then:

- ``inputRasters``: an object with at least one of ``folderId``, ``itemIds``, ``itemId``,
  ``urls``, ``url``, ``uris``, ``uri`` (and optionally ``byref``); when item ids are given
  with other kinds, the item ids win, as the task documents, and only they are forwarded;
- ``imageCollection``: an object with ``itemId``, ``url`` or ``uri`` (keys case-sensitive), or
  ``serviceProperties.name`` (a new collection and service);
- ``rasterType``: ``rasterTypeName`` one of ``RASTER_TYPES``; ``rasterTypeParameters`` with
  ``gps`` rows, ``cameraProperties``, ``constantZ``, ``isAltitudeFlightHeight`` and ``dem``
  (``url``, ``itemId`` or ``uri``) checked when given; ``imageCollectionProps
  .imageCollectionType`` one of ``COLLECTION_TYPES`` (default UAV/UAS);
- ``context``: an object; its ``outSR`` (``{"wkid": n}`` or ``{"wkt": ..}``) is required when
  the task creates the collection and its service.

Every problem raises ``InvalidParameter`` naming the parameter (and member) and what is
wrong; the front answers it as ArcGIS error JSON (arcgis-rest.md section 3).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# rasterTypeName values of the task (the list; "Raster Dataset" from client code,
# arcgis-rest.md section 5.2 S14).
RASTER_TYPES = (
    "Raster Dataset",
    "UAV/UAS",
    "Aerial",
    "ScannedAerial",
    "Landsat 7 ETM+",
    "Landsat 8",
    "Sentinel-2",
    "ZY3-SASMAC",
    "ZY3-CRESDA",
)
COLLECTION_TYPES = ("UAV/UAS", "Aerial", "ScannedAerial", "Satellite")
INPUT_KINDS = ("folderId", "itemIds", "itemId", "urls", "url", "uris", "uri")
_LIST_KINDS = frozenset(("itemIds", "urls", "uris"))
_ITEM_KINDS = ("itemIds", "itemId")
COLLECTION_KEYS = ("itemId", "url", "uri")
# The parameters the task defines; any other a client sends is passed on untouched.
TASK_PARAMETERS = ("inputRasters", "imageCollection", "rasterType", "context")
# Double and single typographic quotes, and the low one: what word processors put in JSON.
_TYPOGRAPHIC = "\u201c\u201d\u2018\u2019\u201e"


class InvalidParameter(ValueError):
    """A parameter that is missing or wrong: ``parameter`` names it (``rasterType
    .rasterTypeName``), ``message`` says what is wrong."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True, slots=True)
class Submission:
    """A checked submission: ``params`` as forwarded (JSON values re-encoded compactly, item
    ids alone when they win), ``new_collection`` whether the task creates the collection, and
    ``collection_name`` the name of the collection, when one is given."""

    params: dict[str, str]
    new_collection: bool
    collection_name: str | None

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the forwarded parameters, sorted: what the job record keeps."""
        text = json.dumps(sorted(self.params.items()), separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_json(parameter: str, text: str) -> Any:
    """The JSON value of ``text``, or ``InvalidParameter`` saying where it stops parsing and
    naming typographic quotes when there are any."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        found = [(index, char) for index, char in enumerate(text) if char in _TYPOGRAPHIC]
        if found:
            index, char = found[0]
            raise InvalidParameter(
                parameter,
                f"typographic quotes ({char} at character {index + 1}) are not JSON quotes: "
                'write straight double quotes (")',
            ) from None
        raise InvalidParameter(
            parameter,
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(character {exc.pos + 1})",
        ) from None
    except RecursionError:
        raise InvalidParameter(parameter, "not valid JSON: nested too deep") from None


def _object(parameter: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParameter(parameter, f"must be a JSON object, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _text(parameter: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameter(parameter, f"must be a non-empty string, not {_kind(value)}")
    return value


def _texts(parameter: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidParameter(
            parameter, f"must be a non-empty array of strings, not {_kind(value)}"
        )
    for index, item in enumerate(value):
        _text(f"{parameter}[{index}]", item)
    return value


def _case_hint(parameter: str, key: str, known: tuple[str, ...]) -> InvalidParameter:
    for name in known:
        if name.lower() == key.lower():
            return InvalidParameter(
                parameter, f"keys are case-sensitive: {key!r} should be {name!r}"
            )
    return InvalidParameter(
        parameter, f"unknown key {key!r} (expected {', '.join(repr(k) for k in known)})"
    )


def input_rasters(value: Any) -> dict[str, Any]:
    """The ``inputRasters`` to forward (item ids alone when given with other kinds)."""
    name = "inputRasters"
    rasters = _object(name, value)
    for key in rasters:
        if key not in INPUT_KINDS and key != "byref":
            raise _case_hint(name, key, (*INPUT_KINDS, "byref"))
    given = [kind for kind in INPUT_KINDS if kind in rasters]
    if not given:
        raise InvalidParameter(name, f"give one of {', '.join(INPUT_KINDS)}")
    for kind in given:
        if kind in _LIST_KINDS:
            _texts(f"{name}.{kind}", rasters[kind])
        else:
            _text(f"{name}.{kind}", rasters[kind])
    if "byref" in rasters and not isinstance(rasters["byref"], bool):
        raise InvalidParameter(f"{name}.byref", "must be true or false")
    items = [kind for kind in _ITEM_KINDS if kind in rasters]
    if items and len(given) > len(items):
        kept = {kind: rasters[kind] for kind in items}
        if "byref" in rasters:
            kept["byref"] = rasters["byref"]
        return kept
    return rasters


def image_collection(value: Any) -> tuple[dict[str, Any], bool, str | None]:
    """The ``imageCollection``, whether it is a new one (``serviceProperties`` without an
    existing ``itemId``/``url``/``uri``) and its name when known."""
    name = "imageCollection"
    collection = _object(name, value)
    known = (*COLLECTION_KEYS, "serviceProperties", "itemProperties")
    for key in collection:
        if key not in known:
            raise _case_hint(name, key, known)
    existing = [key for key in COLLECTION_KEYS if key in collection]
    for key in existing:
        _text(f"{name}.{key}", collection[key])
    if "itemProperties" in collection:
        _object(f"{name}.itemProperties", collection["itemProperties"])
    collection_name = None
    if "serviceProperties" in collection:
        service = _object(f"{name}.serviceProperties", collection["serviceProperties"])
        if not existing or "name" in service:
            collection_name = _text(f"{name}.serviceProperties.name", service.get("name"))
    elif not existing:
        raise InvalidParameter(
            name,
            "give an existing collection's itemId, url or uri, or serviceProperties.name for a "
            "new one",
        )
    if collection_name is None and "url" in existing:
        # ".../rest/services/<folder>/<name>/ImageServer": the name before the type.
        parts = [part for part in collection["url"].rstrip("/").split("/") if part]
        collection_name = parts[-2] if len(parts) >= 2 else None
    return collection, not existing, collection_name


def _dem(parameter: str, value: Any) -> None:
    dem = _object(parameter, value)
    given = [key for key in ("url", "itemId", "uri") if key in dem]
    if len(given) != 1:
        raise InvalidParameter(parameter, "give exactly one of url, itemId or uri")
    _text(f"{parameter}.{given[0]}", dem[given[0]])


def _gps(parameter: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise InvalidParameter(parameter, "must be a non-empty array of rows")
    for index, row in enumerate(value):
        if (
            not isinstance(row, list)
            or len(row) != 4
            or not all(isinstance(cell, str | int | float) for cell in row)
        ):
            raise InvalidParameter(
                f"{parameter}[{index}]",
                'must be a row ["<image name>", "<x>", "<y>", "<z>"] of four strings or numbers',
            )


def raster_type(value: Any) -> dict[str, Any]:
    """The ``rasterType``, checked."""
    name = "rasterType"
    kind = _object(name, value)
    type_name = kind.get("rasterTypeName")
    if type_name is None:
        raise InvalidParameter(f"{name}.rasterTypeName", "is required")
    if type_name not in RASTER_TYPES:
        raise InvalidParameter(
            f"{name}.rasterTypeName",
            f"{type_name!r} is not one of {', '.join(RASTER_TYPES)}",
        )
    if "rasterTypeParameters" in kind:
        parameters = _object(f"{name}.rasterTypeParameters", kind["rasterTypeParameters"])
        # The documented example writes "GPS", the parameter list "gps": either is read.
        for key, item in parameters.items():
            where = f"{name}.rasterTypeParameters.{key}"
            lowered = key.lower()
            if lowered == "gps":
                _gps(where, item)
            elif lowered == "cameraproperties":
                _object(where, item)
            elif lowered == "constantz" and (
                isinstance(item, bool) or not isinstance(item, int | float)
            ):
                raise InvalidParameter(where, "must be a number")
            elif lowered == "isaltitudeflightheight" and not isinstance(item, bool):
                raise InvalidParameter(where, "must be true or false")
            elif lowered == "dem":
                _dem(where, item)
    if "imageCollectionProps" in kind:
        props = _object(f"{name}.imageCollectionProps", kind["imageCollectionProps"])
        collection_type = props.get("imageCollectionType", COLLECTION_TYPES[0])
        if collection_type not in COLLECTION_TYPES:
            raise InvalidParameter(
                f"{name}.imageCollectionProps.imageCollectionType",
                f"{collection_type!r} is not one of {', '.join(COLLECTION_TYPES)}",
            )
    return kind


def _spatial_reference(parameter: str, value: Any) -> None:
    reference = _object(parameter, value)
    wkid = reference.get("wkid", reference.get("latestWkid"))
    if isinstance(wkid, int) and not isinstance(wkid, bool) and wkid > 0:
        return
    if isinstance(reference.get("wkt"), str) and reference["wkt"].strip():
        return
    raise InvalidParameter(parameter, 'must be {"wkid": <positive integer>} or {"wkt": "..."}')


def _find(params: Mapping[str, str], name: str) -> str | None:
    """The value of parameter ``name`` (ArcGIS reads names case-insensitively); an empty value
    is "not given" (arcgis-rest.md section 0)."""
    for key, value in params.items():
        if key.lower() == name.lower() and value.strip():
            return value
    return None


def check_submission(params: Mapping[str, str]) -> Submission:
    """The checked submission of the client's parameters ``params`` (query and form, without
    ``token``, ``f`` and the gateway's own): task parameters re-encoded, others passed on.
    Raises ``InvalidParameter`` for the first problem found (module docstring)."""
    values: dict[str, Any] = {}
    for name in TASK_PARAMETERS:
        text = _find(params, name)
        if text is None:
            if name != "context":
                raise InvalidParameter(name, "is required")
            continue
        values[name] = parse_json(name, text)
    rasters = input_rasters(values["inputRasters"])
    collection, new, collection_name = image_collection(values["imageCollection"])
    kind = raster_type(values["rasterType"])
    context = values.get("context")
    if context is not None:
        context = _object("context", context)
        if "outSR" in context:
            _spatial_reference("context.outSR", context["outSR"])
    if new and (context is None or "outSR" not in context):
        raise InvalidParameter(
            "context.outSR",
            "is required when the task creates the collection and its service "
            '(serviceProperties without an existing itemId, url or uri): {"outSR": {"wkid": n}}',
        )
    forwarded = {
        key: value
        for key, value in params.items()
        if key.lower() not in {name.lower() for name in TASK_PARAMETERS}
    }
    checked = {
        "inputRasters": rasters,
        "imageCollection": collection,
        "rasterType": kind,
        "context": context,
    }
    for name, value in checked.items():
        if value is not None:
            forwarded[name] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return Submission(forwarded, new, collection_name)
