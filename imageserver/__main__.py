"""Command line: ``python -m imageserver [--config FILE] [--host HOST] [--port PORT]``.

Without ``--config`` only the built-in services (bluemarble, shadedrelief, etopo) are served.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from imageserver.accesslog import RedactingAccessLogger
from imageserver.app import create_app
from imageserver.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load the configuration and serve until interrupted.

    Returns the process exit status: 0 after a normal shutdown, 2 for a bad configuration.
    """
    parser = argparse.ArgumentParser(
        prog="python -m imageserver",
        description="Reference ArcGIS ImageServer (exportImage) over local rasters.",
    )
    parser.add_argument("--config", type=Path, help="YAML service list (default: built-ins)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="TCP port (8081)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"imageserver: {exc}", file=sys.stderr)
        return 2
    web.run_app(
        create_app(config),
        host=args.host,
        port=args.port,
        access_log_class=RedactingAccessLogger,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
