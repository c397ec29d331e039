"""Reading a secret where the configuration says it is: an environment variable or a file.

Read each time a token is asked for, so that a rotated Kubernetes Secret (a mounted file the
kubelet replaces) is picked up without a restart. Messages name where the secret was looked
for, never its value.
"""

from __future__ import annotations

import os

from gateway.config import SecretRef
from gateway.errors import UpstreamError


def read_secret(ref: SecretRef, owner: str) -> str:
    """The secret of ``ref``: the environment variable's value, or the file's text without
    its trailing line break (``echo secret > file`` adds one; a Secret mount has none).

    ``owner`` (e.g. ``credentials 'corp'``) starts the message of the ``UpstreamError``
    (502) raised when the variable is unset or empty, or the file cannot be read or is empty.
    """
    if ref.env is not None:
        value = os.environ.get(ref.env, "")
    else:
        assert ref.file is not None  # SecretRef holds exactly one of the two
        try:
            value = ref.file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UpstreamError(
                502, None, f"{owner}: cannot read {ref.source} ({reason})"
            ) from None
    if not value:
        raise UpstreamError(502, None, f"{owner}: {ref.source} is unset or empty")
    return value
