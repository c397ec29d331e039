"""What the tile pipeline and its sources raise, in one place.

Every protocol front catches these and answers in its own language (architecture.md, "Errors,
each in its client's own language"): the gateway's JSON for ``/tiles``, ``/ogcapi`` and the
admin API, an OWS ExceptionReport for ``/wmts``. The errors carry the facts (which part of a
tile address, its value, the allowed range) so that each front can word them its own way;
``str()`` of each is the plain wording the JSON fronts use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The three parts of a tile address, spelled as WMTS spells its parameters (07-057r7
# Table 29), which is also the exception locator WMTS reports.
AddressPart = Literal["TileMatrix", "TileRow", "TileCol"]
_MAX_MESSAGE = 300


class UnknownLayer(LookupError):
    """No layer of that name is configured. ``layer`` is the name asked for."""

    def __init__(self, layer: str) -> None:
        super().__init__(f"unknown layer {layer!r}")
        self.layer = layer


@dataclass(eq=False)
class NotOffered(Exception):
    """What was ``asked`` for is not among what the layer offers (``offered``, in order)."""

    layer: str
    asked: str
    offered: tuple[str, ...]


class UnknownTileMatrixSet(NotOffered, LookupError):
    """The layer is not served in the TileMatrixSet ``asked`` (or, where TileMatrixSetLimits
    count, has no tile with data in it); ``offered`` are the sets it is served in."""

    def __str__(self) -> str:
        return f"layer {self.layer!r} is not served in TileMatrixSet {self.asked!r}"


class UnsupportedFormat(NotOffered, ValueError):
    """The tile format ``asked`` (``png``/``jpg``) is not one the layer ``offered``."""

    def __str__(self) -> str:
        return f"layer {self.layer!r} offers {', '.join(self.offered)}, not {self.asked!r}"


@dataclass(eq=False)
class InvalidTileAddress(ValueError):
    """A TileMatrix, TileRow or TileCol that is not a whole number (``text`` as given)."""

    part: AddressPart
    text: str

    def __str__(self) -> str:
        return f"{self.part} must be an integer, not {self.text!r}"


class TileOutOfRange(LookupError):
    """A TileMatrix, TileRow or TileCol outside what the layer serves.

    ``part`` is the offending part (also the WMTS exception locator), ``value`` its value and
    ``low``..``high`` the inclusive range allowed. ``scope`` says which range: ``matrix`` (the
    TileMatrixSet's own matrix, or the layer's zoom range for ``TileMatrix``) or ``limits``
    (the layer's TileMatrixSetLimits: the tiles that hold data, WMTS 07-057r7 section
    7.2.4.6.3); ``z`` is the TileMatrix of a TileRow/TileCol.
    """

    def __init__(
        self,
        message: str,
        part: AddressPart,
        *,
        value: int | None = None,
        low: int = 0,
        high: int = -1,
        z: int | None = None,
        scope: Literal["matrix", "limits"] = "matrix",
    ) -> None:
        super().__init__(message)
        self.part = part
        self.value = value
        self.low = low
        self.high = high
        self.z = z
        self.scope = scope

    @property
    def locator(self) -> str:
        """The WMTS exception locator: the parameter at fault."""
        return self.part


class VariantRefused(ValueError):
    """A style or time a layer does not offer, or a variant beyond the layer's
    ``max_variants``: always a client mistake (400).

    ``part`` is the offending parameter as WMTS spells its locator (``Style``, or ``Time``, the
    Dimension identifier; 07-057r7 section 8.2.3); ``value`` what was sent, clipped;
    ``offered`` the values the layer offers (empty when the variant count is the fault).
    """

    def __init__(
        self, message: str, part: Literal["Style", "Time"], value: str, offered: tuple[str, ...]
    ) -> None:
        super().__init__(message[:_MAX_MESSAGE])
        self.part = part
        self.value = value[:80]
        self.offered = offered


class UpstreamError(Exception):
    """The upstream failed to give a usable answer.

    ``status`` is the HTTP status for the gateway's client (502, or 504 on timeout);
    ``code`` is the upstream's own code (its ArcGIS error code or HTTP status) when it gave one;
    ``message`` is safe to show to a client: it never holds the upstream URL or a token.
    """

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message[:_MAX_MESSAGE]

    @property
    def outcome(self) -> str:
        """The call's outcome in ``metrics.upstream_call``: ``timeout`` (504) or ``error``."""
        return "timeout" if self.status == 504 else "error"


class UpstreamBusy(UpstreamError):
    """The upstream's concurrency limit is reached: no exportImage slot came free within the
    wait bound, or the queue of requests waiting for one is full (``sources.http.ExportSlots``).

    Always HTTP 503 (RFC 9110 section 15.6.4, "Service Unavailable") with ``retry_after``, the
    whole seconds a client should wait before asking again, for the ``Retry-After`` header
    (RFC 9110 section 10.2.3). An ``UpstreamError``, so that a stale copy inside
    ``stale_if_error`` stands in for it and nothing is cached.
    """

    @property
    def outcome(self) -> str:
        """``busy``: the call never reached the upstream."""
        return "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(503, None, message)
        self.retry_after = retry_after


class StoreUnavailable(Exception):
    """The job store (Redis) cannot be reached: no job can be checked for its owner now
    (``gateway.jobs``)."""


class GPUnavailable(Exception):
    """A GP upstream cannot be reached or did not answer JSON: HTTP ``status`` (502, 504) for
    the client and a ``message`` naming no URL or token (``gateway.jobs``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
