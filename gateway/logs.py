"""Log lines that carry what a client sent: escaped, and one line without a traceback for a
request aiohttp could not parse.

A path, a header or a request line is the client's text: written raw, a line break or an
escape sequence in it would forge log lines or drive the terminal that shows them (CWE-117).
"""

from __future__ import annotations

import logging
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
