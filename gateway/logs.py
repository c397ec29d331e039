"""Log lines that carry what a client sent: escaped, and one line without a traceback for a
request aiohttp could not parse.

A path, a header or a request line is the client's text: written raw, a line break or an
escape sequence in it would forge log lines or drive the terminal that shows them (CWE-117).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError

# Client text beyond this is cut in a log line: a request line may be 8 KiB long.
_MAX_SHOWN = 200


def printable(text: str, limit: int = _MAX_SHOWN) -> str:
    """``text`` with every character that is not printable (controls, line breaks, the
    surrogates that stand for undecodable bytes) written as its Python escape (``\\n``,
    ``\\x1b``, ``\\udcff``), cut to about ``limit`` characters with ``...`` when longer."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """A logger for aiohttp's server: its request handler (``aiohttp.server``) or its access
    log (``web.AppRunner(app, logger=..., access_log=...)``).

    Every message is escaped (``printable``, cut at 1,000 characters): access lines and
    aiohttp's own lines carry request lines, paths and header values. aiohttp answers a
    request it cannot parse (a malformed request line or header, a line too long) with a 4xx
    itself, and drains a body it cannot decode (a ``Content-Encoding: gzip`` body that does not
    inflate) after the answer; either way it logs the error with its traceback at ERROR, so
    any client could fill the log with tracebacks. Here such a client error is one line at
    INFO (DEBUG where aiohttp chose DEBUG) without traceback. Other records keep their level
    and traceback.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """``msg`` and ``kwargs`` as given: a caller's ``extra`` fields (the JSON access line's)
        reach the record (``LoggerAdapter`` would replace them with its own)."""
        return msg, kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log as ``logging.Logger.log`` does, the message escaped; a client's malformed request
        (``exc_info`` an ``HttpProcessingError`` or ``RequestPayloadError``) at INFO or below,
        without traceback."""
        error = kwargs.get("exc_info")
        client = isinstance(error, (HttpProcessingError, web.RequestPayloadError))
        if client:
            level = min(level, logging.INFO)
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        if client:
            kwargs = {k: v for k, v in kwargs.items() if k != "exc_info"}
            # Their text spans lines ("400, message:\n  Can not decode ..."): one line here.
            text = f"{text}: {' '.join(str(error).split())}"
        super().log(level, "%s", printable(text, 1000), **kwargs)


@dataclass(slots=True)
class Exchange:
    """What the log lines of one request share: its ``request_id``, the ``layer`` of its tile
    (once resolved) and the seconds its upstream calls took (``upstream_seconds``)."""

    request_id: str
    layer: str | None = None
    upstream_seconds: float = 0.0


EXCHANGES = web.RequestKey("exchange", Exchange)
"""The key of a request's ``Exchange`` on the request (for its access line)."""

EXCHANGE: ContextVar[Exchange | None] = ContextVar("exchange", default=None)
"""The request being answered, set by the root application's middleware for the handler and
every task it starts (a coalesced fetch, an upstream call)."""

# A client's (or proxy's) X-Request-Id is kept when it is this: short, no separators or
# controls that could forge a log line or a header (UUIDs, ULIDs, hex and base64url ids pass).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


# New request ids: a random part per process and a count, 32 hex digits in all; unique
# across processes and replicas as uuid4 is, without asking the OS for randomness per request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNT = itertools.count()


def request_id(given: str | None) -> str:
    """``given`` when it is a safe request id (1 to 128 letters, digits and ``._:+=/-``),
    else a new one (32 hex digits: this process's random half and a count)."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNT):016x}"


# The record attributes a JSON line carries besides the fixed ones, when a caller set them.
_FIELDS = (
    "method",
    "path",
    "status",
    "duration",
    "cache",
    "layer",
    "upstream_duration",
    "remote",
)


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object on one line: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message`` (with a traceback, when there is one, in ``exc_info``),
    ``request_id`` (the record's, else the current ``EXCHANGE``'s, else absent) and whichever
    of ``method``, ``path``, ``status``, ``duration`` (seconds), ``cache``, ``layer``,
    ``upstream_duration`` (seconds) and ``remote`` the caller passed in ``extra``. JSON
    escapes every control character, so a line stays one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (without the line break)."""
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is None:
            exchange = EXCHANGE.get()
            rid = exchange.request_id if exchange is not None else None
        if rid is not None:
            line["request_id"] = rid
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time as ISO 8601 in UTC with milliseconds, e.g.
        ``2024-05-01T12:00:00.123Z``."""
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{whole}.{int(record.msecs):03d}Z"


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The plain-text line of the command line's logs."""


def configure_logging(level: str, log_format: str = "text", text: str = TEXT_FORMAT) -> None:
    """Send the root logger's records to stderr at ``level``: as ``text`` lines (the
    ``logging`` format string ``text``) or, with ``log_format`` ``json``, as ``JsonFormatter``
    lines (``server.log_format``). Replaces the handlers set before."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text))
    logging.basicConfig(level=level, handlers=[handler], force=True)
