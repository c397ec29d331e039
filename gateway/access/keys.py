"""API keys: configured as SHA-256 digests by name, never as the keys themselves."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from gateway.config import AccessConfig


class ApiKeys:
    """The configured API keys: ``name(key)`` is the name whose digest is SHA-256 of ``key``.

    Every digest is compared, in constant time (``hmac.compare_digest``), so the time of a
    lookup tells nothing of which name, or how much of a digest, matched.
    """

    def __init__(self, digests: dict[str, bytes]) -> None:
        self._digests = list(digests.items())

    @classmethod
    def of(cls, config: AccessConfig) -> ApiKeys:
        """The keys of ``config.api_keys`` and of ``config.api_keys_file`` (``name sha256hex``
        per line, ``#`` comments and blank lines ignored). Raises ``ValueError`` for a file
        that cannot be read or a line that is not a name and 64 hex digits (naming the line,
        never its text)."""
        digests = {name: bytes.fromhex(digest) for name, digest in config.api_keys.items()}
        if config.api_keys_file is not None:
            digests.update(_read_file(config.api_keys_file))
        return cls(digests)

    @property
    def names(self) -> set[str]:
        """The configured key names."""
        return {name for name, _ in self._digests}

    def name(self, key: str) -> str | None:
        """The name of ``key``, or ``None`` for a key that is not configured."""
        digest = hashlib.sha256(key.encode("utf-8", errors="surrogateescape")).digest()
        found = None
        for name, expected in self._digests:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found


def _read_file(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"access.api_keys_file {path}: cannot read it ({exc.strerror})") from None
    digests = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) != 64:
            raise ValueError(
                f"access.api_keys_file {path}, line {number}: expected 'name sha256hex'"
            )
        try:
            digests[parts[0]] = bytes.fromhex(parts[1])
        except ValueError:
            raise ValueError(
                f"access.api_keys_file {path}, line {number}: the digest is not hex"
            ) from None
    return digests
