"""Access log lines without secrets.

aiohttp's default access log writes the request line with its query string, so a
``token=``/``password=`` parameter would land in the log. :class:`RedactingAccessLogger`
writes the same fields (Common Log Format plus Referer and User-Agent) with the values of
secret parameters replaced by ``***`` (see :func:`imageserver.security.redact_url`). Headers
that carry tokens (``X-Esri-Authorization``, ``Authorization``) are never logged.
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from imageserver.security import redact_url


class RedactingAccessLogger(AbstractAccessLogger):
    """``remote "METHOD path?query HTTP/x.y" status bytes "referer" "user-agent"``, redacted.

    The ``log_format`` aiohttp passes is ignored: the fields are fixed so that no format
    string can bring a secret back.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Write one line for ``request`` at INFO level (``time`` is the duration, seconds)."""
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d "%s" "%s" %.3fs',
            request.remote or "-",
            request.method,
            redact_url(request.path_qs),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            redact_url(request.headers.get("Referer", "-")),
            request.headers.get("User-Agent", "-"),
            time,
        )
