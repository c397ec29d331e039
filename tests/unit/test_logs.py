"""ServerLog: aiohttp's server lines escaped; a client's malformed request one line without
traceback; every other error kept as it was logged."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadStatusLine

from gateway.logs import ServerLog, printable


def test_printable_escapes_and_cuts() -> None:
    assert printable("a\r\nb\x1b[31m\udcff\x85é") == "a\\r\\nb\\x1b[31m\\udcff\\x85é"
    assert printable("x" * 300, 10) == "x" * 10 + "..."


def test_other_errors_keep_their_level_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.server")
    caplog.set_level(logging.WARNING, logger="test.server")
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        ServerLog(logger).exception("Unhandled exception on %s", "/a\nb", exc_info=exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "Unhandled exception on /a\\nb"


def test_a_malformed_request_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.server")
    caplog.set_level(logging.INFO, logger="test.server")
    ServerLog(logger).exception(
        "Error handling request from %s", "127.0.0.1", exc_info=BadStatusLine("GET\x00\n/ x")
    )
    (record,) = caplog.records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage().startswith("Error handling request from 127.0.0.1: 400, message:")
    assert record.getMessage().isprintable()
    # At WARNING, the line is not shown at all.
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="test.server")
    ServerLog(logger).exception("Error", exc_info=BadStatusLine("x"))
    assert not caplog.records
