"""Scrubbing of upstream answers: what a client reads names the gateway, never the upstream,
and holds no token (arcgis-rest.md sections 1.2 and 7.6; resource-proxy issue #502).

In a JSON document every string is looked at: a URL under a configured upstream's base URL or
output directory becomes the same URL under the gateway (so ``exportImage?f=json``'s ``href``
is served by the gateway, which adds the token), with any ``token`` query parameter removed;
any other URL of an upstream origin (a token service, an admin URL) becomes ``""``; a
``token`` member is removed; and the token values the gateway sent are cut out of every
string. A text answer that is not JSON gets the same treatment on its text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from yarl import URL

# Shorter values would be cut out of unrelated text; ArcGIS tokens and API keys are far longer.
_MIN_SECRET = 8


def _origin(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}".lower()


def without_token(url: str) -> str:
    """``url`` without ``token`` query parameters (any case)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "token"
    ]
    return urlunsplit(parts._replace(query=urlencode(kept)))


@dataclass(frozen=True, slots=True)
class Scrubber:
    """Rewrites answers for one request: ``bases`` are ``(upstream prefix, gateway prefix)``
    pairs (no trailing slashes), ``secrets`` the credential values sent upstream."""

    bases: Sequence[tuple[str, str]]
    secrets: frozenset[str]

    @classmethod
    def of(cls, bases: Iterable[tuple[str, str]], secrets: Iterable[str]) -> Scrubber:
        """A scrubber for ``bases`` and ``secrets`` (values too short to be tokens dropped)."""
        return cls(
            tuple(sorted(bases, key=lambda pair: -len(pair[0]))),
            frozenset(secret for secret in secrets if len(secret) >= _MIN_SECRET),
        )

    @property
    def _origins(self) -> frozenset[str]:
        return frozenset(_origin(upstream) for upstream, _ in self.bases)

    def url(self, url: str) -> str | None:
        """The gateway URL for an absolute upstream ``url`` (token removed), or ``None`` when
        it is under no configured base."""
        lowered = url.lower()
        for upstream, gateway in self.bases:
            if lowered == upstream.lower() or lowered.startswith(
                (upstream.lower() + "/", upstream.lower() + "?")
            ):
                return without_token(gateway + url[len(upstream) :])
        return None

    def text(self, value: str) -> str:
        """``value`` with upstream URLs rewritten (a whole-string URL) and secrets cut out."""
        if value.startswith(("http://", "https://")):
            mapped = self.url(value)
            if mapped is not None:
                value = mapped
            else:
                try:
                    internal = _origin(value) in self._origins
                except ValueError:
                    internal = False
                if internal:
                    return ""
        for secret in self.secrets:
            value = value.replace(secret, "")
        return value

    def document(self, value: Any) -> Any:
        """A parsed JSON ``value`` scrubbed throughout (see the module docstring)."""
        if isinstance(value, dict):
            return {
                key: self.document(item)
                for key, item in value.items()
                if not (isinstance(key, str) and key.lower() == "token")
            }
        if isinstance(value, list):
            return [self.document(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def body(self, body: bytes, charset: str | None) -> bytes:
        """A JSON or text answer scrubbed: JSON is parsed, scrubbed and written again; other
        text has its upstream URLs rewritten and secrets cut out as plain text."""
        text = body.decode(charset or "utf-8", errors="replace")
        try:
            document = json.loads(text)
        except ValueError:
            for upstream, gateway in self.bases:
                text = text.replace(upstream, gateway)
            return self.text(text).encode("utf-8")
        return json.dumps(self.document(document), ensure_ascii=False).encode("utf-8")
