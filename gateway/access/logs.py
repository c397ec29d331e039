"""Access log lines without credentials: the API key parameter and ArcGIS ``token`` values of
a request line or ``Referer`` are replaced before the line is written. Each line carries the
request's fields too, for the JSON log format (``logs.JsonFormatter``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.config import AccessConfig
from gateway.logs import EXCHANGES, Exchange, printable

REDACTED = "[redacted]"
# Always hidden: the ArcGIS token a client of the reverse proxy sends (the proxy drops it).
_ALWAYS = ("token",)


def redactor(names: Iterable[str]) -> Callable[[str], str]:
    """A function of a text that replaces the value of every query parameter among ``names``
    (any case, as a query or form field ``name=value``) by ``[redacted]``."""
    alternatives = "|".join(re.escape(name) for name in names)
    pattern = re.compile(rf"(?i)(^|[?&;]|%3F|%26)((?:{alternatives})=)[^&;\s\"]*")
    replacement = rf"\1\2{REDACTED}"

    def redact(text: str) -> str:
        # Every access line passes here: most of its values (addresses, times, agents, paths
        # without a query) hold no "=" and skip the expression.
        return pattern.sub(replacement, text) if "=" in text else text

    return redact


def secret_params(config: AccessConfig | None) -> tuple[str, ...]:
    """The query parameters whose values are credentials: ``token`` and the configured
    ``api_key_param``."""
    return (*_ALWAYS, *((config.api_key_param,) if config and config.api_key_param else ()))


def access_logger(
    config: AccessConfig | None, *, fields: bool = True
) -> type[AbstractAccessLogger]:
    """aiohttp's ``AccessLogger`` (same format and fields) whose values pass through
    ``redactor`` for the configured ``api_key_param`` and ``token``. With ``fields`` (the JSON
    log format writes them), each line's record also has ``method``, ``path`` (raw,
    redacted, escaped: ``logs.printable``), ``status``, ``duration`` (seconds), and when known
    ``cache`` (``X-Cache``), ``layer``, ``upstream_duration`` (seconds), ``remote`` and
    ``request_id`` (the request's ``logs.Exchange``)."""
    redact = redactor(secret_params(config))

    class RedactingAccessLogger(AccessLogger):
        def _format_line(
            self, request: BaseRequest, response: StreamResponse, time: float
        ) -> Iterable[tuple[str | tuple[str, str], Any]]:
            return [
                (key, redact(value) if isinstance(value, str) else value)
                for key, value in super()._format_line(request, response, time)
            ]

        def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
            try:
                values = tuple(value for _, value in self._format_line(request, response, time))
                # A text line never shows them: every access line would build them for nothing.
                extra = _fields(request, response, time) if fields else None
                self.logger.info(self._log_format % values, extra=extra)
            except Exception:
                self.logger.exception("Error in logging")

    def _fields(request: BaseRequest, response: StreamResponse, time: float) -> dict[str, Any]:
        exchange: Exchange | None = request.get(EXCHANGES)
        fields: dict[str, Any] = {
            "method": request.method,
            "path": printable(redact(request.raw_path), 1000),
            "status": response.status,
            "duration": round(time, 6),
            "cache": response.headers.get("X-Cache"),
            "remote": request.remote,
        }
        if exchange is not None:
            fields["request_id"] = exchange.request_id
            fields["layer"] = exchange.layer
            if exchange.upstream_seconds:
                fields["upstream_duration"] = round(exchange.upstream_seconds, 6)
        return fields

    return RedactingAccessLogger
