"""A user's clone has nothing beside it: no tracked file may reach for the sibling folder
(named ``shared``) that the project's developers and CI have next to the repository."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO

# The sibling as a relative path, or joined onto a parent directory in Python.
SIBLING = re.compile(r"\.\.[/\\]shared\b|[\"']shared[\"']\s*/|/\s*[\"']shared[\"']")


def test_no_tracked_file_refers_to_the_sibling_folder() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    offenders = []
    for name in filter(None, tracked):
        path = REPO / name.decode()
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        offenders += [
            f"{name.decode()}:{number}: {line.strip()}"
            for number, line in enumerate(text.splitlines(), 1)
            if SIBLING.search(line)
        ]
    assert not offenders, "\n".join(offenders)
