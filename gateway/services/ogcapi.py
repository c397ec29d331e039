"""Placeholder: filled in by the ogcapi work (returns no routes yet)."""

from __future__ import annotations

from aiohttp import web


def routes() -> list[web.RouteDef]:
    """The ogcapi route table."""
    return []
