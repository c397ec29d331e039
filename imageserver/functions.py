"""Raster functions: the ``renderingRule`` of exportImage and identify, the service's
``rasterFunctionInfos``, and the default stretch of non-8-bit data.

A rule is the ArcGIS REST "Raster function objects" JSON: either
``{"rasterFunction": "Stretch", "rasterFunctionArguments": {...}}`` or the name of one of the
service's templates, ``{"rasterFunction": "<name in rasterFunctionInfos>"}``. A function's
input is the service raster (after ``bandIds``) or, when ``rasterFunctionArguments.Raster`` is
itself a rule, that rule's output (e.g. a Stretch over NDVI). Argument names are matched
case-insensitively, as ArcGIS does; an unknown function or a bad argument is a
:class:`~imageserver.params.ParameterError` naming the function (ArcGIS error 400).

Functions (arguments and defaults from "Raster function objects" and the function pages of
ArcGIS Pro "Raster functions"):

- ``Stretch``: ``StretchType`` 0 None, 3 StandardDeviation (``NumberOfStandardDeviations``,
  default 2), 5 MinMax, 6 PercentClip (``MinPercent``/``MaxPercent``, default 0.5/0.5);
  output range ``Min``/``Max`` (default 0-255); ``Statistics`` ``[[min, max, mean, std], ...]``
  per band overrides the dataset statistics of MinMax and StandardDeviation; ``DRA`` true
  takes them from the requested extent instead; ``UseGamma`` with ``Gamma`` ``[g, ...]``
  raises the 0-1 stretched value to ``1/g`` (g > 1 brightens the mid-tones). Output U8 (F32
  when Min/Max leave 0-255).
- ``Hillshade``: ``Azimuth`` (315°), ``Altitude`` (45°), ``ZFactor`` (1) with Horn's 3x3
  slope and aspect, as in Esri's "How Hillshade works" (ArcGIS Desktop 9.2-9.3 help):
  ``255 * (cos(zenith) cos(slope) + sin(zenith) sin(slope) cos(azimuth - aspect))``, negative
  values 0. Cell size from the output grid; pixels with an invalid neighbour are no data.
  Output U8.
- ``NDVI``: ``VisibleBandID`` (0), ``InfraredBandID`` (1), 0-based; ``(NIR - Red) /
  (NIR + Red)``, as U8 ``NDVI * 100 + 100`` (0-200) unless ``Scientific``/``ScientificOutput``
  is true (F32, -1..1). ``NIR + Red == 0`` is no data.
- ``BandArithmetic``: ``Method`` 0 with ``BandIndexes`` an expression over ``B1`` ..
  ``Bn`` (1-based bands; numbers, ``+ - * /``, ``**``, parentheses), evaluated by
  walking its syntax tree (never ``eval``); ``Method`` 1 NDVI and 11 SR (Simple Ratio) with
  ``BandIndexes`` ``"NIR Red"`` (1-based). Output F32; division by zero is no data.
- ``ExtractBand``: ``BandIDs`` (0-based) or ``BandNames`` (``Band_1``, ...). Pixel type kept.
- ``Colormap``: ``Colormap`` ``[[value, r, g, b], ...]`` on the first band (values truncated
  to integers); values not in the map are no data. Output 3 x U8.

Statistics: a service band's Stretch statistics are the dataset's (``minValues`` ...,
:class:`~imageserver.raster.BandStatistics`); the output of another function has none, so
its statistics come from the requested extent, as with ``DRA``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from affine import Affine

from imageserver.encode import cast_pixels
from imageserver.params import PIXEL_TYPES, ImageFormat, ParameterError, PixelType
from imageserver.raster import RasterSource, Rendered, RenderRequest

# Percent clip of the default display stretch, each end (see DEFAULT_STRETCH).
DEFAULT_CLIP_PERCENT = 0.5
DEFAULT_STRETCH: dict[str, Any] = {
    "rasterFunction": "Stretch",
    "rasterFunctionArguments": {
        "StretchType": 6,
        "MinPercent": DEFAULT_CLIP_PERCENT,
        "MaxPercent": DEFAULT_CLIP_PERCENT,
    },
}
"""Applied to non-8-bit data drawn as PNG/JPEG without a ``renderingRule`` or ``pixelType``.
The ArcGIS SOAP "ExportImage" remarks: an image service draws such data with "a proper default
renderer ... using the same rule as when a raster dataset of the same properties ... is added
to map"; Esri's "Raster rendering behavior" page makes that a statistics-based stretch by
source type, and ArcMap 10.1+ gives imagery a percent clip (Esri Community, "Turn off default
stretch for opening raster images?"). The percentages are not in the pages found:
:data:`DEFAULT_CLIP_PERCENT` is this server's choice. Statistics are the dataset's, so
adjacent tiles match."""

_NO_DATA = "NoData"


@dataclasses.dataclass(frozen=True)
class RasterFunction:
    """A parsed rule.

    Attributes:
        name: canonical function name (``Stretch``, ``Hillshade``, ...).
        arguments: ``rasterFunctionArguments`` with lower-cased names, values as in the JSON.
        raster: the input rule (``rasterFunctionArguments.Raster``); ``None``: the service
            raster.
        output_pixel_type: the rule's ``outputPixelType``: the output is cast to it (values
            clipped to its range, as ``pixelType`` does); ``None``: the function's own type.
    """

    name: str
    arguments: Mapping[str, Any]
    raster: RasterFunction | None
    output_pixel_type: PixelType | None = None

    @property
    def margin(self) -> int:
        """Pixels of neighbourhood the chain needs around the output on each side."""
        own = 1 if self.name == "Hillshade" else 0
        return own + (self.raster.margin if self.raster is not None else 0)


@dataclasses.dataclass(frozen=True)
class _Stats:
    minimum: float
    maximum: float
    mean: float
    std: float
    percentile: Callable[[float], float]


@dataclasses.dataclass
class _Pixels:
    """The working image: ``data`` ``(bands, h, w)``, ``valid`` ``(h, w)``, each band's
    dataset statistics (``None`` for a function's output), and ``interior`` ``(h, w)``: the
    requested extent without the margin (what ``DRA`` statistics are taken from)."""

    data: np.ndarray
    valid: np.ndarray
    stats: list[_Stats | None]
    transform: Affine
    interior: np.ndarray


# ---------------------------------------------------------------------------------------------
# Templates and rasterFunctionInfos


def default_templates(source: RasterSource) -> dict[str, dict[str, Any]]:
    """The named templates a service offers unless its configuration replaces them.

    Every service: ``None`` (no function). Not paletted: ``Stretch_MinMax``,
    ``Stretch_PercentClip`` (0.5 % each end), ``Stretch_StdDev`` (2 standard deviations).
    Single-band, not paletted (an elevation model, say): ``Hillshade``. Four bands or more
    (red, green, blue, near infrared, as NAIP): ``NDVI`` (bands 0 and 3, 0-200 U8) and
    ``False_Color`` (near infrared, red, green).
    """
    templates: dict[str, dict[str, Any]] = {"None": {"rasterFunction": "None"}}
    if source.palette is None:
        templates["Stretch_MinMax"] = _stretch_rule({"StretchType": 5})
        templates["Stretch_PercentClip"] = _stretch_rule(
            {
                "StretchType": 6,
                "MinPercent": DEFAULT_CLIP_PERCENT,
                "MaxPercent": DEFAULT_CLIP_PERCENT,
            }
        )
        templates["Stretch_StdDev"] = _stretch_rule(
            {"StretchType": 3, "NumberOfStandardDeviations": 2}
        )
    if source.count == 1 and source.palette is None:
        templates["Hillshade"] = {
            "rasterFunction": "Hillshade",
            "rasterFunctionArguments": {"Azimuth": 315, "Altitude": 45, "ZFactor": 1},
        }
    if source.count >= 4:
        templates["NDVI"] = {
            "rasterFunction": "NDVI",
            "rasterFunctionArguments": {"VisibleBandID": 0, "InfraredBandID": 3},
        }
        templates["False_Color"] = {
            "rasterFunction": "ExtractBand",
            "rasterFunctionArguments": {"BandIDs": [3, 0, 1]},
        }
    return templates


def templates(source: RasterSource) -> dict[str, dict[str, Any]]:
    """The service's templates: :func:`default_templates` updated with the configured
    ``raster_functions``."""
    merged = default_templates(source)
    merged.update(source.spec.raster_functions)
    return merged


def raster_function_infos(source: RasterSource) -> list[dict[str, str]]:
    """``rasterFunctionInfos`` of the service root (``[{"name", "description", "help"}]``)."""
    infos = []
    for name, rule in templates(source).items():
        function = str(rule.get("rasterFunction", ""))
        arguments = rule.get("rasterFunctionArguments") or {}
        described = f"{function} {json.dumps(arguments)}" if arguments else function
        infos.append({"name": name, "description": described, "help": ""})
    return infos


def _stretch_rule(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"rasterFunction": "Stretch", "rasterFunctionArguments": arguments}


# ---------------------------------------------------------------------------------------------
# Parsing


_FUNCTIONS = ("Stretch", "Hillshade", "NDVI", "BandArithmetic", "ExtractBand", "Colormap")
_CANONICAL = {name.lower(): name for name in _FUNCTIONS}


def parse_rendering_rule(
    value: str | Mapping[str, Any], named: Mapping[str, Mapping[str, Any]]
) -> RasterFunction | None:
    """Parse a ``renderingRule`` (JSON text or object) against the templates ``named``.

    Returns ``None`` for "no function" (the ``None`` template or function).

    Raises:
        ParameterError: not JSON, an unknown function or template, or a bad argument; the
            message names the function.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ParameterError([f"Invalid renderingRule: not JSON ({exc})"]) from None
    return _parse(value, named, depth=0)


def _parse(rule: Any, named: Mapping[str, Mapping[str, Any]], depth: int) -> RasterFunction | None:
    if depth > 8:
        raise ParameterError(["Invalid renderingRule: functions nested too deep"])
    if not isinstance(rule, Mapping):
        raise ParameterError(["Invalid renderingRule: expected a raster function object"])
    if "rasterFunctionDefinition" in rule:
        raise ParameterError(
            ["Invalid renderingRule: rasterFunctionDefinition is not supported by this server"]
        )
    name = rule.get("rasterFunction")
    if not isinstance(name, str) or not name.strip():
        raise ParameterError(["Invalid renderingRule: rasterFunction (a name) is required"])
    arguments = rule.get("rasterFunctionArguments")
    if arguments is not None and not isinstance(arguments, Mapping):
        raise ParameterError(
            [f"Invalid renderingRule: {name}: rasterFunctionArguments must be an object"]
        )
    template = next((t for n, t in named.items() if n.lower() == name.lower()), None)
    if template is not None and not arguments:
        # A template is a rule of functions, not of other templates: "NDVI" names the
        # template here and the function inside it.
        resolved = _parse(template, {}, depth + 1)
        if resolved is None or "outputPixelType" not in rule:
            return resolved
        return dataclasses.replace(resolved, output_pixel_type=_output_pixel_type(name, rule))
    if name.lower() == "none":
        return None
    canonical = _CANONICAL.get(name.lower())
    if canonical is None:
        raise ParameterError(
            [
                f"Invalid renderingRule: raster function '{name}' is not supported; "
                f"functions: {', '.join(_FUNCTIONS)}; templates: {', '.join(named) or 'none'}"
            ]
        )
    lowered = {str(k).lower(): v for k, v in (arguments or {}).items()}
    raster = lowered.pop("raster", None)
    source = _parse(raster, named, depth + 1) if isinstance(raster, Mapping) else None
    function = RasterFunction(canonical, lowered, source, _output_pixel_type(canonical, rule))
    _CHECKS[canonical](function)
    return function


def _output_pixel_type(name: str, rule: Mapping[str, Any]) -> PixelType | None:
    value = rule.get("outputPixelType")
    if value is None or (isinstance(value, str) and value.upper() == "UNKNOWN"):
        return None
    if not isinstance(value, str) or value.upper() not in PIXEL_TYPES:
        choices = ", ".join(PIXEL_TYPES)
        raise ParameterError(
            [f"Invalid renderingRule: {name}: outputPixelType must be one of {choices}"]
        )
    return PIXEL_TYPES[value.upper()]


def _argument_error(function: RasterFunction, message: str) -> ParameterError:
    return ParameterError([f"Invalid renderingRule: {function.name}: {message}"])


def _number(function: RasterFunction, name: str, default: float) -> float:
    value = function.arguments.get(name.lower(), default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _argument_error(function, f"{name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise _argument_error(function, f"{name} must be a number") from None
    if not math.isfinite(number):
        raise _argument_error(function, f"{name} must be finite")
    return number


def _integer(function: RasterFunction, name: str, default: int) -> int:
    number = _number(function, name, default)
    if not number.is_integer():
        raise _argument_error(function, f"{name} must be a whole number")
    return int(number)


def _flag(function: RasterFunction, name: str, default: bool = False) -> bool:
    value = function.arguments.get(name.lower(), default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _argument_error(function, f"{name} must be true or false")


def _numbers(function: RasterFunction, name: str) -> list[float] | None:
    value = function.arguments.get(name.lower())
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise _argument_error(function, f"{name} must be a list of numbers")
    return [float(v) for v in value]


_STRETCH_TYPES = {0: "None", 3: "StandardDeviation", 5: "MinMax", 6: "PercentClip"}


def _choice(function: RasterFunction, name: str, default: int, supported: Mapping[int, str]) -> int:
    """The integer argument ``name`` (``default`` when absent), one of ``supported`` (value ->
    name). Raises ``ParameterError`` naming the values this server supports."""
    value = _integer(function, name, default)
    if value not in supported:
        raise _argument_error(
            function,
            f"{name} {value} is not supported; use "
            + ", ".join(f"{k} ({v})" for k, v in supported.items()),
        )
    return value


def _check_stretch(function: RasterFunction) -> None:
    _choice(function, "StretchType", 0, _STRETCH_TYPES)
    if _number(function, "NumberOfStandardDeviations", 2) <= 0:
        raise _argument_error(function, "NumberOfStandardDeviations must be positive")
    low, high = (
        _number(function, "MinPercent", DEFAULT_CLIP_PERCENT),
        _number(function, "MaxPercent", DEFAULT_CLIP_PERCENT),
    )
    if not (0 <= low < 100 and 0 <= high < 100 and low + high < 100):
        raise _argument_error(function, "MinPercent and MaxPercent must be 0..100 together")
    if _number(function, "Min", 0) >= _number(function, "Max", 255):
        raise _argument_error(function, "Min must be less than Max")
    statistics = function.arguments.get("statistics")
    if statistics is not None and not (
        isinstance(statistics, list)
        and all(
            isinstance(row, list)
            and len(row) >= 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
            for row in statistics
        )
    ):
        raise _argument_error(function, "Statistics must be [[min, max, mean, stddev], ...]")
    gamma = _numbers(function, "Gamma")
    if gamma is not None and not all(g > 0 for g in gamma):
        raise _argument_error(function, "Gamma values must be positive")
    _flag(function, "DRA")
    _flag(function, "UseGamma")


def _check_hillshade(function: RasterFunction) -> None:
    _number(function, "Azimuth", 315)
    altitude = _number(function, "Altitude", 45)
    if not 0 <= altitude <= 90:
        raise _argument_error(function, "Altitude must be 0..90 degrees")
    _number(function, "ZFactor", 1)


def _check_ndvi(function: RasterFunction) -> None:
    for name, default in (("VisibleBandID", 0), ("InfraredBandID", 1)):
        if _integer(function, name, default) < 0:
            raise _argument_error(function, f"{name} must be a 0-based band index")
    _scientific(function)


def _scientific(function: RasterFunction) -> bool:
    if "scientificoutput" in function.arguments:
        return _flag(function, "ScientificOutput")
    return _flag(function, "Scientific")


_METHODS = {0: "user defined", 1: "NDVI", 11: "SR"}


def _check_band_arithmetic(function: RasterFunction) -> None:
    method = _choice(function, "Method", 0, _METHODS)
    indexes = function.arguments.get("bandindexes")
    if not isinstance(indexes, str) or not indexes.strip():
        raise _argument_error(function, "BandIndexes (a string) is required")
    if method == 0:
        _compile_expression(function, indexes)
    else:
        _predefined_bands(function, indexes)


def _predefined_bands(function: RasterFunction, indexes: str) -> tuple[int, int]:
    parts = indexes.replace(",", " ").split()
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise _argument_error(function, "BandIndexes must be two 1-based bands: 'NIR Red'")
    return int(parts[0]) - 1, int(parts[1]) - 1


def _check_extract_band(function: RasterFunction) -> None:
    ids, names = function.arguments.get("bandids"), function.arguments.get("bandnames")
    if ids is not None:
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        ):
            raise _argument_error(function, "BandIDs must be a list of 0-based band indexes")
    elif names is not None:
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _argument_error(function, "BandNames must be a list of band names")
    else:
        raise _argument_error(function, "BandIDs or BandNames is required")


def _check_colormap(function: RasterFunction) -> None:
    colormap = function.arguments.get("colormap")
    if colormap is None:
        given = [a for a in ("colormapname", "colorramp") if a in function.arguments]
        detail = f"{given[0]} is not supported by this server; " if given else ""
        raise _argument_error(function, f"{detail}Colormap [[value, r, g, b], ...] is required")
    if (
        not isinstance(colormap, list)
        or not colormap
        or not all(
            isinstance(row, list)
            and len(row) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in row)
            and all(0 <= v <= 255 for v in row[1:])
            for row in colormap
        )
    ):
        raise _argument_error(function, "Colormap must be [[value, r, g, b], ...] of integers")


_CHECKS: dict[str, Callable[[RasterFunction], None]] = {
    "Stretch": _check_stretch,
    "Hillshade": _check_hillshade,
    "NDVI": _check_ndvi,
    "BandArithmetic": _check_band_arithmetic,
    "ExtractBand": _check_extract_band,
    "Colormap": _check_colormap,
}


# ---------------------------------------------------------------------------------------------
# BandArithmetic expressions, evaluated over their syntax tree

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MAX_EXPRESSION = 500


def _compile_expression(function: RasterFunction, text: str) -> ast.expr:
    """The syntax tree of a BandArithmetic expression, checked to hold only numbers, band
    names ``B<n>``, ``+ - * / **`` and parentheses."""
    if len(text) > _MAX_EXPRESSION:
        raise _argument_error(function, "BandIndexes expression is too long")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise _argument_error(function, f"BandIndexes '{text}' is not an expression") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp | ast.UnaryOp | ast.operator | ast.unaryop):
            if isinstance(node, ast.operator) and type(node) not in _BINARY:
                raise _argument_error(function, "BandIndexes may use + - * / ** only")
            if isinstance(node, ast.unaryop) and type(node) not in _UNARY:
                raise _argument_error(function, "BandIndexes may use + - * / ** only")
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            if isinstance(node.value, bool):
                raise _argument_error(function, "BandIndexes may not use booleans")
            continue
        if isinstance(node, ast.Name) and _band_of(node.id) is not None:
            continue
        if isinstance(node, ast.Load):
            continue
        raise _argument_error(
            function, f"BandIndexes '{text}': only numbers, B1..Bn and + - * / ** are allowed"
        )
    return tree


def _band_of(name: str) -> int | None:
    """0-based band of a name ``B<n>`` / ``b<n>`` (n >= 1), else ``None``."""
    if len(name) > 1 and name[0] in "Bb" and name[1:].isdigit() and int(name[1:]) >= 1:
        return int(name[1:]) - 1
    return None


def _evaluate(node: ast.expr, bands: np.ndarray) -> Any:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        index = _band_of(node.id)
        assert index is not None  # checked by _compile_expression
        return bands[index]
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, bands))
    assert isinstance(node, ast.BinOp)
    return _BINARY[type(node.op)](_evaluate(node.left, bands), _evaluate(node.right, bands))


def _expression_bands(tree: ast.expr) -> list[int]:
    return [
        index
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and (index := _band_of(node.id)) is not None
    ]


# ---------------------------------------------------------------------------------------------
# Applying


def display_rule(
    source: RasterSource,
    function: RasterFunction | None,
    image_format: ImageFormat,
    pixel_type: PixelType | None,
) -> RasterFunction | None:
    """The function to apply to an exportImage: the requested one, else :data:`DEFAULT_STRETCH`
    for non-8-bit, non-paletted data drawn as PNG/JPEG without a ``pixelType`` (a requested
    pixel type casts instead, per the "Export Image" page), else ``None``."""
    if function is not None:
        return function
    if image_format is ImageFormat.TIFF or pixel_type is not None:
        return None
    if source.dtype == "uint8" or source.palette is not None:
        return None
    return _parse(DEFAULT_STRETCH, {}, depth=0)


def apply(
    function: RasterFunction,
    rendered: Rendered,
    source: RasterSource,
    bands: Sequence[int],
    margin: int = 0,
) -> Rendered:
    """Apply ``function`` to ``rendered`` (the service raster's ``bands``, 0-based, on the
    output grid grown by ``margin`` pixels on each side, see :attr:`RasterFunction.margin`)
    and crop the margin off. The result's ``value_ranges`` are the valid output's own min/max
    (how PNG/JPEG draw a non-8-bit function output).

    Raises:
        ParameterError: an argument does not fit the raster (band index out of range, ...).
    """
    statistics = source.statistics
    stats: list[_Stats | None] = [
        _Stats(
            statistics.minimum[b],
            statistics.maximum[b],
            statistics.mean[b],
            statistics.std[b],
            lambda percent, b=b: statistics.percentile(b, percent),
        )
        for b in bands
    ]
    height, width = rendered.valid.shape
    window = (slice(margin, height - margin), slice(margin, width - margin))
    interior = np.zeros((height, width), bool)
    interior[window] = True
    start = _Pixels(rendered.data, rendered.valid.copy(), stats, rendered.transform, interior)
    pixels = _run(function, start)
    data = pixels.data[(slice(None), *window)]
    valid = pixels.valid[window]
    data[:, ~valid] = 0
    transform = rendered.transform @ Affine.translation(margin, margin)
    return Rendered(data, valid, _ranges(data, valid), transform)


def _ranges(data: np.ndarray, valid: np.ndarray) -> tuple[tuple[float, float], ...]:
    if data.dtype == np.uint8 or not valid.any():
        return ((0.0, 255.0),) * data.shape[0]
    values = data[:, valid]
    return tuple((float(band.min()), float(band.max())) for band in values)


def _run(function: RasterFunction, pixels: _Pixels) -> _Pixels:
    if function.raster is not None:
        pixels = _run(function.raster, pixels)
    result = _APPLY[function.name](function, pixels)
    if function.output_pixel_type is not None:
        result.data = cast_pixels(result.data, function.output_pixel_type)
    return result


def _band(function: RasterFunction, pixels: _Pixels, index: int, name: str) -> np.ndarray:
    if not 0 <= index < pixels.data.shape[0]:
        raise _argument_error(
            function, f"{name} {index} is out of range: the input has {pixels.data.shape[0]} bands"
        )
    return pixels.data[index].astype(np.float64)


def _derived(data: np.ndarray, valid: np.ndarray, pixels: _Pixels) -> _Pixels:
    return _Pixels(data, valid, [None] * data.shape[0], pixels.transform, pixels.interior)


def _extent_stats(values: np.ndarray) -> _Stats:
    """Statistics of one band's valid pixels in the requested extent (``DRA``)."""
    if values.size == 0:
        return _Stats(0.0, 0.0, 0.0, 0.0, lambda percent: 0.0)
    values = values.astype(np.float64)
    return _Stats(
        float(values.min()),
        float(values.max()),
        float(values.mean()),
        float(values.std()),
        lambda percent: float(np.percentile(values, percent)),
    )


def _apply_stretch(function: RasterFunction, pixels: _Pixels) -> _Pixels:
    kind = _integer(function, "StretchType", 0)
    if kind == 0:
        return pixels
    dra = _flag(function, "DRA")
    given = function.arguments.get("statistics")
    out_low, out_high = _number(function, "Min", 0), _number(function, "Max", 255)
    gamma = _numbers(function, "Gamma") if _flag(function, "UseGamma") else None
    count = pixels.data.shape[0]
    output = np.zeros(pixels.data.shape, np.float64)
    for index in range(count):
        values = pixels.data[index]
        stats = None if dra else pixels.stats[index]
        # Statistics carry no histogram, so a PercentClip keeps the dataset's (or DRA's).
        if given is not None and not dra and kind != 6 and index < len(given):
            minimum, maximum, mean, std = (float(v) for v in given[index][:4])
            stats = _Stats(minimum, maximum, mean, std, lambda percent: math.nan)
        if stats is None:
            stats = _extent_stats(values[pixels.valid & pixels.interior])
        if kind == 3:
            n = _number(function, "NumberOfStandardDeviations", 2)
            low, high = stats.mean - n * stats.std, stats.mean + n * stats.std
        elif kind == 5:
            low, high = stats.minimum, stats.maximum
        else:
            low = stats.percentile(_number(function, "MinPercent", DEFAULT_CLIP_PERCENT))
            high = stats.percentile(100 - _number(function, "MaxPercent", DEFAULT_CLIP_PERCENT))
        span = high - low
        scaled = (
            np.clip((values.astype(np.float64) - low) / span, 0.0, 1.0)
            if span > 0
            else np.zeros(values.shape)
        )
        if gamma:
            scaled = scaled ** (1.0 / gamma[min(index, len(gamma) - 1)])
        output[index] = out_low + scaled * (out_high - out_low)
    output = np.rint(output)
    dtype = np.uint8 if out_low >= 0 and out_high <= 255 else np.float32
    return _derived(output.astype(dtype), pixels.valid, pixels)


def _apply_hillshade(function: RasterFunction, pixels: _Pixels) -> _Pixels:
    azimuth = _number(function, "Azimuth", 315)
    altitude = _number(function, "Altitude", 45)
    z_factor = _number(function, "ZFactor", 1)
    elevation = _band(function, pixels, 0, "band")
    valid = pixels.valid
    cell_x, cell_y = abs(pixels.transform.a), abs(pixels.transform.e)
    shade = np.zeros(elevation.shape, np.float64)
    neighbours = np.zeros(valid.shape, bool)
    if min(elevation.shape) >= 3:
        # Horn's 3x3 window a b c / d e f / g h i around each interior cell.
        def cell(row: int, col: int) -> np.ndarray:
            rows, cols = elevation.shape
            return elevation[row : rows - 2 + row, col : cols - 2 + col]

        a, b, c = cell(0, 0), cell(0, 1), cell(0, 2)
        d, f = cell(1, 0), cell(1, 2)
        g, h, i = cell(2, 0), cell(2, 1), cell(2, 2)
        dz_dx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * cell_x)
        dz_dy = ((g + 2 * h + i) - (a + 2 * b + c)) / (8 * cell_y)
        slope = np.arctan(z_factor * np.hypot(dz_dx, dz_dy))
        aspect = np.arctan2(dz_dy, -dz_dx)
        aspect = np.where(aspect < 0, aspect + 2 * math.pi, aspect)
        zenith = math.radians(90.0 - altitude)
        azimuth_math = math.radians((360.0 - azimuth + 90.0) % 360.0)
        value = 255.0 * (
            math.cos(zenith) * np.cos(slope)
            + math.sin(zenith) * np.sin(slope) * np.cos(azimuth_math - aspect)
        )
        shade[1:-1, 1:-1] = np.clip(value, 0, None)
        rows, cols = valid.shape
        window = np.ones((rows - 2, cols - 2), bool)
        for dr in range(3):
            for dc in range(3):
                window &= valid[dr : rows - 2 + dr, dc : cols - 2 + dc]
        neighbours[1:-1, 1:-1] = window
    data = np.clip(np.rint(shade), 0, 255).astype(np.uint8)[np.newaxis]
    return _derived(data, neighbours, pixels)


def _apply_ndvi(function: RasterFunction, pixels: _Pixels) -> _Pixels:
    red = _band(function, pixels, _integer(function, "VisibleBandID", 0), "VisibleBandID")
    nir = _band(function, pixels, _integer(function, "InfraredBandID", 1), "InfraredBandID")
    total = nir + red
    valid = pixels.valid & (total != 0)
    ndvi = np.divide(nir - red, total, out=np.zeros_like(total), where=total != 0)
    if _scientific(function):
        return _derived(ndvi.astype(np.float32)[np.newaxis], valid, pixels)
    scaled = np.clip(np.rint(ndvi * 100.0 + 100.0), 0, 200).astype(np.uint8)
    return _derived(scaled[np.newaxis], valid, pixels)


def _apply_band_arithmetic(function: RasterFunction, pixels: _Pixels) -> _Pixels:
    method = _integer(function, "Method", 0)
    text = str(function.arguments["bandindexes"])
    bands = pixels.data.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if method == 0:
            tree = _compile_expression(function, text)
            for index in _expression_bands(tree):
                _band(function, pixels, index, f"B{index + 1}")
            result = np.broadcast_to(_evaluate(tree, bands), bands.shape[1:]).astype(np.float64)
        else:
            nir_index, red_index = _predefined_bands(function, text)
            nir = _band(function, pixels, nir_index, "NIR band")
            red = _band(function, pixels, red_index, "Red band")
            result = (nir - red) / (nir + red) if method == 1 else nir / red
    valid = pixels.valid & np.isfinite(result)
    result = np.where(valid, result, 0.0).astype(np.float32)
    return _derived(result[np.newaxis], valid, pixels)


def _apply_extract_band(function: RasterFunction, pixels: _Pixels) -> _Pixels:
    count = pixels.data.shape[0]
    ids = function.arguments.get("bandids")
    if ids is None:
        names = [f"band_{i + 1}" for i in range(count)]
        ids = []
        for name in function.arguments["bandnames"]:
            if name.lower() not in names:
                raise _argument_error(function, f"no band named {name}: bands are Band_1..")
            ids.append(names.index(name.lower()))
    for index in ids:
        _band(function, pixels, index, "BandID")
    return dataclasses.replace(
        pixels, data=pixels.data[list(ids)], stats=[pixels.stats[i] for i in ids]
    )


def _apply_colormap(function: RasterFunction, pixels: _Pixels) -> _Pixels:
    values = _band(function, pixels, 0, "band")
    table = function.arguments["colormap"]
    keys = np.array([row[0] for row in table], np.int64)
    colours = np.array([row[1:] for row in table], np.uint8)
    order = np.argsort(keys)
    keys, colours = keys[order], colours[order]
    integers = np.trunc(values).astype(np.int64)
    position = np.clip(np.searchsorted(keys, integers), 0, len(keys) - 1)
    found = keys[position] == integers
    rgb = np.moveaxis(colours[position], -1, 0).copy()
    return _derived(rgb, pixels.valid & found, pixels)


_APPLY: dict[str, Callable[[RasterFunction, _Pixels], _Pixels]] = {
    "Stretch": _apply_stretch,
    "Hillshade": _apply_hillshade,
    "NDVI": _apply_ndvi,
    "BandArithmetic": _apply_band_arithmetic,
    "ExtractBand": _apply_extract_band,
    "Colormap": _apply_colormap,
}


def format_values(rendered: Rendered) -> str:
    """An identify ``value`` for the centre pixel of a function's output: band values joined
    by ``", "`` (integers without decimals), or ``"NoData"``."""
    row, col = rendered.valid.shape[0] // 2, rendered.valid.shape[1] // 2
    if not rendered.valid[row, col]:
        return _NO_DATA
    values = rendered.data[:, row, col]
    if values.dtype.kind in "iu":
        return ", ".join(str(int(v)) for v in values)
    return ", ".join(str(np.float32(v)) for v in values)


def render(
    source: RasterSource, request: RenderRequest, function: RasterFunction | None
) -> Rendered:
    """Render ``request`` and apply ``function``: on a grid grown by the function's margin
    (so a Hillshade has its neighbours at the image edge), cropped back after. Functions
    see pixel values, so a palette stays indexes.

    Raises:
        ParameterError: a function argument does not fit the raster.
    """
    if function is None:
        return source.render(request)
    margin = function.margin
    xmin, ymin, xmax, ymax = request.bounds
    cell_x = (xmax - xmin) / request.width
    cell_y = (ymax - ymin) / request.height
    grown = dataclasses.replace(
        request,
        bounds=(
            xmin - margin * cell_x,
            ymin - margin * cell_y,
            xmax + margin * cell_x,
            ymax + margin * cell_y,
        ),
        width=request.width + 2 * margin,
        height=request.height + 2 * margin,
        expand_palette=False,
    )
    return apply(function, source.render(grown), source, request.bands, margin)
