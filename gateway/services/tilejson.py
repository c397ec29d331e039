"""Placeholder: filled in by the tilejson work (returns no routes yet)."""

from __future__ import annotations

from aiohttp import web


def routes() -> list[web.RouteDef]:
    """The tilejson route table."""
    return []
