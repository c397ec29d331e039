"""The cache entry format: tile bytes behind a small, versioned, fixed-layout header.

No pickle: a Redis that someone else can write to must not mean code execution in the gateway
(architecture.md, "Cache entries"). Decoding is a ``struct.unpack`` and a few slices, so a
cache hit costs no JSON parsing or image decoding.

Layout (big-endian)::

    magic "TGC" | version u8 | created f64 | upstream_time f64 (NaN = unknown)
    | len(content_type) u8 | len(etag) u8 | content_type | etag | tile bytes
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Final

from aiocache.serializers import BaseSerializer

MAGIC: Final = b"TGC"
VERSION: Final = 1
_HEADER: Final = struct.Struct(">3sBddBB")


@dataclass(frozen=True, slots=True)
class TileEntry:
    """One cached tile: encoded image bytes and what its HTTP answer needs.

    ``etag`` is a strong entity tag with its quotes (RFC 9110 section 8.8.3); ``created`` and
    ``upstream_time`` are epoch seconds (the latter ``None`` when the upstream gave no date).
    """

    data: bytes
    content_type: str
    etag: str
    created: float
    upstream_time: float | None = None


def strong_etag(data: bytes, variant: str = "") -> str:
    """A strong ETag for ``data``: a quoted 128-bit BLAKE2b digest (hex) of the bytes, and of
    the ``variant`` token when there is one, so that two variants of a tile never share an
    ETag, even where their bytes happen to be equal."""
    digest = hashlib.blake2b(data, digest_size=16)
    if variant:
        digest.update(b"\0" + variant.encode())
    return '"' + digest.hexdigest() + '"'


def encode_entry(entry: TileEntry) -> bytes:
    """``entry`` as header + bytes. Raises ``ValueError`` when a text field exceeds 255 bytes."""
    content_type = entry.content_type.encode("ascii")
    etag = entry.etag.encode("ascii")
    if len(content_type) > 255 or len(etag) > 255:
        raise ValueError("content type and ETag must each fit in 255 bytes")
    upstream = math.nan if entry.upstream_time is None else entry.upstream_time
    header = _HEADER.pack(MAGIC, VERSION, entry.created, upstream, len(content_type), len(etag))
    return b"".join((header, content_type, etag, entry.data))


def decode_entry(value: bytes) -> TileEntry | None:
    """The entry in ``value``, or ``None`` when it is not one this version wrote.

    An unknown magic, version or a truncated value reads as a miss, so a format change or a
    foreign value in the key space never breaks a request.
    """
    if len(value) < _HEADER.size:
        return None
    magic, version, created, upstream, ct_len, etag_len = _HEADER.unpack_from(value)
    if magic != MAGIC or version != VERSION:
        return None
    start = _HEADER.size
    body = start + ct_len + etag_len
    if len(value) <= body:
        return None
    return TileEntry(
        data=value[body:],
        content_type=value[start : start + ct_len].decode("ascii"),
        etag=value[start + ct_len : body].decode("ascii"),
        created=created,
        upstream_time=None if math.isnan(upstream) else upstream,
    )


class TileEntrySerializer(BaseSerializer):
    """aiocache serializer for ``TileEntry`` values (bytes on the wire, no text encoding)."""

    DEFAULT_ENCODING = None

    def dumps(self, value: TileEntry) -> bytes:
        """Encode for storage (see ``encode_entry``)."""
        return encode_entry(value)

    def loads(self, value: bytes | None) -> TileEntry | None:
        """Decode a stored value; ``None`` (absent or unreadable) is a miss."""
        return None if value is None else decode_entry(value)
