"""``python -m gateway``: the same command line as ``tile-gateway``."""

from gateway.cli import main

main()
