"""``python -m tests.interop.proxy_gateway CONFIG``: the gateway of ``CONFIG`` with the test API
key of ``proxy_support`` as the credential set ``arcgis``, for real clients that block (GDAL,
browsers, the ArcGIS API for Python) and so need the gateway in a process of its own."""

from __future__ import annotations

import sys

from aiohttp import web

from gateway.app import create_app
from gateway.config import load_config
from gateway.sources.http import Credentials
from tests.interop.proxy_support import API_KEY, ApiKey


def credentials(name: str) -> Credentials:
    """The provider of credential set ``name``: only ``arcgis`` exists."""
    if name != "arcgis":
        raise LookupError(name)
    return ApiKey(API_KEY)


def main() -> None:
    """Serve until terminated."""
    config = load_config(sys.argv[1])
    web.run_app(
        create_app(config, credentials),
        host=config.server.host,
        port=config.server.port,
        print=None,
    )


if __name__ == "__main__":
    main()
