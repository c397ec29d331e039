"""Per-request variants of a layer: the styles (named renderings: a raster function, a
renderingRule template, band combinations) and time values a layer declares
(``LayerConfig.styles``, ``LayerConfig.time``), checked and normalised into one short token
per distinct variant.

The token is part of a tile's cache keys (``cache.keys.KeyLayout.tile``) and of its ETag, so
each variant has its own entries; the default style and time give the empty token, so a
request naming them equals one naming neither. exportImage gets the variant's
``renderingRule``, ``bandIds`` and ``time`` (epoch milliseconds, ``t`` or ``t1,t2``; ArcGIS
REST "Export Image").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import LayerConfig
from gateway.errors import VariantRefused
from gateway.sources.imageserver import export_params
from gateway.timevalues import TimeSpan, arcgis_time, key_part, parse_time

# The style identifier WMTS clients send when they know no other (OWSLib, QGIS, 07-057r7
# examples): always the layer's default style.
DEFAULT_STYLE = "default"
# The keyword for a Dimension's Default value (07-057r7 wmtsGetCapabilities_response.xsd).
DEFAULT_TIME = "default"


@dataclass(frozen=True, slots=True)
class StyleOffer:
    """A style as documents list it: ``name`` (identifier), ``title``, ``abstract``."""

    name: str
    title: str
    abstract: str | None


@dataclass(frozen=True, slots=True)
class Choice:
    """A checked variant: its ``token`` (``""`` for the default), the ``style`` identifier and
    the ``time`` value as the layer lists it (``None`` when not time-enabled), and its
    ``span``."""

    token: str
    style: str
    time: str | None
    span: TimeSpan | None


class LayerVariants:
    """The variants a layer offers and the exportImage parameters of each one served so far.

    ``styles`` lists the configured styles (empty: the layer has only its own rendering,
    ``default``); ``default_style`` is the one a request without ``style`` gets. ``times`` are
    the configured time values as written (or, with ``time.from_service``, the ``times`` read
    from the service, ISO 8601), ``default_time`` the one sent when a request names none
    (``None``: the layer is not time-enabled). ``params(token)`` gives a served variant's
    exportImage parameters as query strings; ``token`` makes new variants, at most
    ``max_variants`` besides the default one, and ``choose`` checks one without serving it.
    """

    def __init__(self, config: LayerConfig, times: Sequence[str] = ()) -> None:
        self._config = config
        self.styles = tuple(
            StyleOffer(name, style.title or name, style.abstract)
            for name, style in config.styles.items()
        )
        self.default_style = config.default_style or next(iter(config.styles), DEFAULT_STYLE)
        # The configured values, or ``times`` read from the service (``time.from_service``;
        # none yet: not time-enabled until they are read).
        time = config.time
        listed = () if time is None else tuple(time.values or times)
        self.times: tuple[str, ...] = listed
        self._spans: dict[TimeSpan, str] = {parse_time(value): value for value in listed}
        self.default_time: str | None = None
        if time is not None and listed:
            wanted = None if time.default is None else parse_time(time.default)
            self.default_time = self._spans.get(wanted, listed[-1]) if wanted else listed[-1]
        self._default_span = None if self.default_time is None else parse_time(self.default_time)
        self.max_variants = config.max_variants
        self._params: dict[str, dict[str, str]] = {
            "": self._export(self.default_style, self._default_span)
        }

    @property
    def style_names(self) -> tuple[str, ...]:
        """The style identifiers documents advertise: the configured ones, else ``default``."""
        return tuple(style.name for style in self.styles) or (DEFAULT_STYLE,)

    def _export(self, style: str, span: TimeSpan | None) -> dict[str, str]:
        """The exportImage parameters of ``style`` at ``span``: the layer's ``export``, the
        style's ``renderingRule``/``bandIds`` over it, and ``time``."""
        params: dict[str, Any] = self._config.export.model_dump(exclude_none=True)
        found = self._config.styles.get(style)
        if found is not None:
            params.update(found.export())
        if span is not None:
            params["time"] = arcgis_time(span)
        return export_params(params)

    def choose(self, style: str | None, time: str | None) -> Choice:
        """The variant ``style`` at ``time`` (``None`` or empty: the default), checked and
        normalised, not yet served (see ``token``). ``style`` is an identifier (``default``
        names the default style); ``time`` an ISO 8601 instant or interval equal (in epoch
        milliseconds, UTC) to one of the layer's values: ``2020-08-31`` and
        ``2020-08-31T00:00:00Z`` are the same; ``default`` is the default time, as WMTS allows
        for a Dimension.

        Raises ``VariantRefused`` (part ``Style`` or ``Time``) for a style or time the layer
        does not offer.
        """
        parts: list[str] = []
        chosen_style = self.default_style
        if style and style != DEFAULT_STYLE and style != self.default_style:
            if style not in self._config.styles:
                raise VariantRefused(
                    f"style {style[:40]!r} is not one of {', '.join(self.style_names)}",
                    "Style",
                    style,
                    self.style_names,
                )
            parts.append(f"s={style}")
            chosen_style = style
        span: TimeSpan | None = self._default_span
        if time and time != DEFAULT_TIME:
            if self._default_span is None:
                raise VariantRefused(
                    f"time {time[:40]!r} is not offered: the layer has no time dimension",
                    "Time",
                    time,
                    (),
                )
            try:
                span = parse_time(time)
            except ValueError as exc:
                raise VariantRefused(f"time {exc}", "Time", time, self.times) from None
            if span not in self._spans:
                raise VariantRefused(
                    f"time {time[:40]!r} is not one of {', '.join(self.times)}",
                    "Time",
                    time,
                    self.times,
                )
            if span != self._default_span:
                parts.append(f"t={key_part(span)}")
        chosen_time = None if span is None else self._spans[span]
        return Choice(",".join(parts), chosen_style, chosen_time, span)

    def token(self, style: str | None, time: str | None) -> str:
        """The normalised token of the variant ``style`` at ``time`` (see ``choose``), served
        from now on; ``""`` for the default variant.

        Raises ``VariantRefused`` as ``choose`` does, and for a new variant once
        ``max_variants`` are served.
        """
        choice = self.choose(style, time)
        token = choice.token
        if token not in self._params:
            if len(self._params) > self.max_variants:
                raise VariantRefused(
                    f"the layer already serves {self.max_variants} variants besides its "
                    "default (max_variants): ask for the default style and time",
                    "Time" if time else "Style",
                    time or style or "",
                    (),
                )
            self._params[token] = self._export(choice.style, choice.span)
        return token

    def tokens(self, style: str | None = None, time: str | None = None) -> list[str]:
        """The tokens of every variant the layer may serve of ``style`` (every style when
        ``None``) at ``time`` (every time value when ``None``), the default's ``""`` among
        them: a purge's reach, whatever variants a replica has served.

        Raises ``VariantRefused`` as ``choose`` does.
        """
        styles = [style] if style else list(self.style_names)
        times: list[str | None] = [time] if time else (list(self.times) or [None])
        return list(dict.fromkeys(self.choose(s, t).token for s in styles for t in times))

    def params(self, token: str) -> Mapping[str, str]:
        """The exportImage parameters of a variant ``token`` has made (here, or on the layer
        this one replaced while a request was under way: then they are made again from the
        token, and those of a style or time this layer lacks are its default's)."""
        found = self._params.get(token)
        if found is not None:
            return found
        parts = dict(part.split("=", 1) for part in token.split(","))
        style = parts.get("s", self.default_style)
        start, _, end = parts["t"].partition("_") if "t" in parts else ("", "", "")
        span = (int(start), int(end or start)) if start else self._default_span
        if style not in self._config.styles or (span is not None and span not in self._spans):
            return self._params[""]
        return self._export(style, span)
