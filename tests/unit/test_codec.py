"""The cache entry format and the upstream answer checks, without I/O."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from gateway.cache.codec import TileEntry, decode_entry, encode_entry, strong_etag
from gateway.cache.redis_client import redact_url
from gateway.errors import UpstreamError
from gateway.sources.imageserver import validate_image


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (1, 2, 3, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def test_entry_round_trip() -> None:
    data = png_bytes()
    entry = TileEntry(data, "image/png", strong_etag(data), 1700000000.25, 1690000000.0)
    encoded = encode_entry(entry)
    assert encoded.startswith(b"TGC\x01")
    assert decode_entry(encoded) == entry
    assert decode_entry(encode_entry(TileEntry(data, "image/png", '"x"', 1.0))) == TileEntry(
        data, "image/png", '"x"', 1.0, None
    )


@pytest.mark.parametrize(
    "value",
    [b"", b"TGC", b"\x80\x04\x95pickle", b"TGC\x02" + b"\x00" * 40, png_bytes()],
)
def test_foreign_or_truncated_values_read_as_misses(value: bytes) -> None:
    assert decode_entry(value) is None


def test_strong_etag_depends_on_the_bytes() -> None:
    assert strong_etag(b"a") == strong_etag(b"a") != strong_etag(b"b")
    assert strong_etag(b"a").startswith('"')


def test_redact_url_hides_passwords() -> None:
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("rediss://:pw@h/0") == "rediss://:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_validate_image_accepts_real_images_only() -> None:
    validate_image(200, "image/png", png_bytes(), "png")
    error = json.dumps({"error": {"code": 499, "message": "Token Required"}}).encode()
    with pytest.raises(UpstreamError) as caught:
        validate_image(200, "image/png", error, "png")
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        502,
        499,
        "Token Required",
    )
    with pytest.raises(UpstreamError, match="not a valid JPG"):
        validate_image(200, "image/jpeg", png_bytes(), "jpg")
    with pytest.raises(UpstreamError, match="HTTP 503"):
        validate_image(503, "image/png", png_bytes(), "png")
