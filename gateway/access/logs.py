"""Access log lines without credentials: the API key parameter and ArcGIS ``token`` values of
a request line or ``Referer`` are replaced before the line is written. Each line carries the
request's fields too, for the JSON log format (``logs.JsonFormatter``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
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


def redact(text: str, names: Iterable[str]) -> str:
    """``text`` with the value of every query parameter among ``names`` (any case, as a
    query or form field ``name=value``) replaced by ``[redacted]``."""
    alternatives = "|".join(re.escape(name) for name in names)
    pattern = rf"(?i)(^|[?&;]|%3F|%26)((?:{alternatives})=)[^&;\s\"]*"
    return re.sub(pattern, rf"\1\2{REDACTED}", text)


def secret_params(config: AccessConfig | None) -> tuple[str, ...]:
    """The query parameters whose values are credentials: ``token`` and the configured
    ``api_key_param``."""
    return (*_ALWAYS, *((config.api_key_param,) if config and config.api_key_param else ()))


def access_logger(config: AccessConfig | None) -> type[AbstractAccessLogger]:
    """aiohttp's ``AccessLogger`` (same format and fields) whose values pass through
    ``redact`` for the configured ``api_key_param`` and ``token``; each line's record also
    has ``method``, ``path`` (raw, redacted, escaped: ``logs.printable``), ``status``,
    ``duration`` (seconds), and when known ``cache`` (``X-Cache``), ``layer``,
    ``upstream_duration`` (seconds), ``remote`` and ``request_id`` (the request's
    ``logs.Exchange``)."""
    names = secret_params(config)

    class RedactingAccessLogger(AccessLogger):
        def _format_line(
            self, request: BaseRequest, response: StreamResponse, time: float
        ) -> Iterable[tuple[str | tuple[str, str], Any]]:
            return [
                (key, redact(value, names) if isinstance(value, str) else value)
                for key, value in super()._format_line(request, response, time)
            ]

        def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
            try:
                values = tuple(value for _, value in self._format_line(request, response, time))
                self.logger.info(self._log_format % values, extra=_fields(request, response, time))
            except Exception:
                self.logger.exception("Error in logging")

    def _fields(request: BaseRequest, response: StreamResponse, time: float) -> dict[str, Any]:
        exchange: Exchange | None = request.get(EXCHANGES)
        fields: dict[str, Any] = {
            "method": request.method,
            "path": printable(redact(request.raw_path, names), 1000),
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
