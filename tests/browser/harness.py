"""What the browser tests share (tests/browser, tests/interop/browser): finding Node.js, the
system Chromium and the npm packages of ``package-lock.json`` here, and running a node driver
script that prints one JSON report.

Missing tools make the tests fail, never skip: a skipped browser test looks the same as a
passing one in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
MIN_NODE_MAJOR = 18  # playwright-core 1.61, pinned in package.json, runs on Debian 12's node 18
DRIVER_TIMEOUT = 90.0
INSTALL_HINT = "On Debian/Ubuntu: sudo apt-get install -y nodejs npm chromium"


def _stale_packages() -> list[str]:
    """The dependencies of package.json that node_modules lacks or holds in another version."""
    pinned: dict[str, str] = json.loads((HERE / "package.json").read_text())["dependencies"]
    stale = []
    for name, version in pinned.items():
        manifest = NODE_MODULES / name / "package.json"
        found = json.loads(manifest.read_text()).get("version") if manifest.is_file() else None
        if found != version:
            stale.append(f"{name}@{version} (found {found or 'nothing'})")
    return stale


@cache
def browser_tools() -> str:
    """The ``node`` binary, once node, the npm packages and Chromium are known to be there.

    Installs the lock file's packages with ``npm ci`` when node_modules is missing or stale.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"the browser tests need Node.js >= {MIN_NODE_MAJOR}. {INSTALL_HINT}")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(f"the browser tests need Node.js >= {MIN_NODE_MAJOR}, found {version!r}")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"the browser tests drive the system Chromium at {CHROMIUM} (or $CHROMIUM_PATH), "
            f"which is missing. {INSTALL_HINT}"
        )
    stale = _stale_packages()
    if stale:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                f"{NODE_MODULES} lacks {', '.join(stale)} and npm is not installed to fetch "
                f"them. {INSTALL_HINT}"
            )
        # npm ci installs exactly the committed lock file; playwright-core downloads no browser.
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0 or _stale_packages():
            pytest.fail(
                f"`npm ci` in {HERE} failed (exit {result.returncode}) to install "
                f"{', '.join(stale)}; it needs the npm registry:\n{result.stdout}\n{result.stderr}"
            )
    return node


def run_driver(
    script: Path, args: list[str], context: Callable[[], str] = lambda: ""
) -> dict[str, Any]:
    """Run the node driver ``script`` with ``args`` and return its JSON report.

    ``context`` adds what explains a crash (e.g. the gateway's output) to the failure message.
    """
    command = [browser_tools(), str(script), *args]
    try:
        result = subprocess.run(
            command,
            cwd=script.parent,
            env={**os.environ, "CHROMIUM_PATH": str(CHROMIUM)},
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} hung for {DRIVER_TIMEOUT:.0f} s:\n{exc.stdout}\n{exc.stderr}")
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        pytest.fail(
            f"{command} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}\n"
            f"{context()}"
        )
    report: dict[str, Any] = json.loads(lines[-1])
    return report
