"""What the browser interop tests share: a static HTTP server of the test pages on an origin of
its own, so every request a page makes to the gateway crosses origins (CORS)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import NODE_MODULES

PAGES = Path(__file__).resolve().parent / "pages"


class PageHandler(SimpleHTTPRequestHandler):
    """``/node_modules/...`` from tests/browser/node_modules, anything else from pages/."""

    def translate_path(self, path: str) -> str:
        if path.startswith("/node_modules/"):
            self.directory = str(NODE_MODULES)
            path = path.removeprefix("/node_modules")
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the driver's report lists every request."""


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """Origin of a static HTTP server of the test pages: 127.0.0.1 on a port of its own."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(PageHandler, directory=str(PAGES)))
    thread = threading.Thread(target=server.serve_forever, name="test-pages", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
