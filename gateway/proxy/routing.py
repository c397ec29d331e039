"""Which upstream URL a request path names, if any: the allow-list of the reverse proxy.

The path is taken as the client sent it (``request.raw_path``, never aiohttp's decoded
``path``), split on ``/`` first and only then percent-decoded, once, segment by segment. A
segment must then be ``PROXY_SEGMENT`` characters and not ``.`` or ``..``: so ``%2e%2e``
(``..``), ``%2f`` and ``%5c`` (a slash or backslash inside a segment), a double encoding
(``%252e``: a ``%`` after decoding), ``@``, ``:``, a backslash, control characters and empty
segments (``//host``) are refused before any matching, and the URL sent upstream is the base
URL plus the checked segments, never a string the client wrote. This closes what Esri's
resource-proxy left open (arcgis-rest.md section 6: ``mustMatch=false``, prefix matching on
the raw URL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.config import PROXY_SEGMENT, ProxyConfig, ProxyServiceConfig

# The segment under an upstream's path that stands for its output directory
# (``exportImage?f=json`` ``href``s): a leading "_" is not an ArcGIS service or folder name.
OUTPUTS = "_outputs"
# ArcGIS names its output files "_ags_<id>.<ext>" (arcgis-rest.md section 1.2).
_OUTPUT_FILE = "_ags_"


class Refused(Exception):
    """A request the proxy does not forward: HTTP ``status`` (403, 404, 405, 413, 415) and a
    ``message`` for the client, which never holds an upstream URL."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ProxyService:
    """One configured upstream: its ``config``, ``mount`` (the segments of its ``path``) and
    ``allow`` (the segments of each allowed service path prefix)."""

    config: ProxyServiceConfig
    mount: tuple[str, ...]
    allow: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, config: ProxyServiceConfig) -> ProxyService:
        """The service of ``config`` (whose paths the config already checked)."""
        return cls(
            config,
            tuple(config.path.split("/")) if config.path else (),
            tuple(tuple(prefix.split("/")) for prefix in config.allow),
        )

    @property
    def key_path(self) -> str:
        """``path`` as a cache key part: ``/`` as ``:``, ``-`` for the empty path."""
        return ":".join(self.mount) or "-"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: ``service``, the checked ``segments`` below its base URL (or below
    its output directory when ``output``), and whether the path ended in ``/``."""

    service: ProxyService
    segments: tuple[str, ...]
    trailing_slash: bool = False
    output: bool = False

    @property
    def url(self) -> str:
        """The upstream URL (no query): the base URL or output directory plus the segments."""
        config = self.service.config
        base = config.outputs_base if self.output else config.base_url
        assert base is not None  # route() only makes output targets where there is one
        return f"{base}/{'/'.join(self.segments)}{'/' if self.trailing_slash else ''}"

    @property
    def operation(self) -> str:
        """The last segment, lower case (``exportimage``, a tile column, ``imageserver``)."""
        return self.segments[-1].lower()


def _segments(raw: str) -> tuple[list[str], bool]:
    """The decoded segments of ``raw`` (a path below the prefix, as sent) and whether it ends
    in ``/``. Raises ``Refused`` (403) for anything but plain segments (module docstring)."""
    parts = raw.split("/")
    trailing = len(parts) > 1 and parts[-1] == ""
    if trailing:
        parts.pop()
    segments = []
    for part in parts:
        try:
            segment = unquote(part, errors="strict")
        except UnicodeDecodeError:
            raise Refused(403, "the path is not valid UTF-8 after percent-decoding") from None
        if not segment:
            raise Refused(403, "the path has an empty segment")
        if segment in (".", "..") or not PROXY_SEGMENT.match(segment):
            raise Refused(
                403,
                "the path has a segment that is not letters, digits, '_', '-' or '.' "
                "(dot segments, encoded slashes and backslashes, '@', ':' and '%' are refused)",
            )
        segments.append(segment)
    return segments, trailing


def _starts_with(segments: Sequence[str], prefix: Sequence[str]) -> bool:
    return tuple(segments[: len(prefix)]) == tuple(prefix)


class Router:
    """The allow-list of ``config``: ``route(raw_path)`` -> ``Target``."""

    def __init__(self, config: ProxyConfig) -> None:
        self.prefix = config.prefix
        # Longest mount first: "a/b" is tried before "a" and "" (the catch-all).
        self.services = sorted(
            (ProxyService.of(service) for service in config.services),
            key=lambda service: -len(service.mount),
        )

    def route(self, raw_path: str) -> Target:
        """The target of ``raw_path`` (``request.raw_path``: the request target as sent, query
        included), or ``Refused``: 404 outside the prefix or any upstream's path, 403 for a
        path that is not plain segments or names no allowed service path."""
        path = raw_path.partition("?")[0].partition("#")[0]
        # The prefix as the client wrote it: aiohttp matched it on the decoded path.
        if not path.startswith(self.prefix + "/"):
            raise Refused(404, "not a service path of this proxy")
        segments, trailing = _segments(path[len(self.prefix) + 1 :])
        for service in self.services:
            if not _starts_with(segments, service.mount):
                continue
            rest = tuple(segments[len(service.mount) :])
            if not rest:
                raise Refused(404, "the catalog of an upstream is not served by this proxy")
            if rest[0] == OUTPUTS:
                return self._output(service, rest[1:], trailing)
            if any(_starts_with(rest, prefix) for prefix in service.allow):
                return Target(service, rest, trailing)
            raise Refused(403, "the path names no service this proxy allows")
        raise Refused(404, "not a service path of this proxy")

    @staticmethod
    def _output(service: ProxyService, rest: tuple[str, ...], trailing: bool) -> Target:
        if (
            service.config.outputs_base is None
            or trailing
            or not rest
            or len(rest) > 3
            or not rest[-1].startswith(_OUTPUT_FILE)
        ):
            raise Refused(404, "not an output file of this upstream")
        return Target(service, rest, output=True)
