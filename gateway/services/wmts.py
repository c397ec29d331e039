"""Placeholder: filled in by the wmts work (returns no routes yet)."""

from __future__ import annotations

from aiohttp import web


def routes() -> list[web.RouteDef]:
    """The wmts route table."""
    return []
