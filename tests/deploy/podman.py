"""Podman as the deploy tests drive it: a private store and configuration, runc, host network.

The recipe of issue 12 for a machine without a Docker daemon or registry: Debian's ``podman``
with ``runc`` (crun rejects this cgroup layout), ``cgroupfs``, a file events log, ulimits no
higher than the host's hard limits, storage of its own (so neither the machine's images nor
another user's are touched), and ``--network host`` everywhere (bridge networking rewrites the
host's network settings). The base image is made with ``debootstrap`` from the mirror apt uses
and ``podman import``; it is built once and kept with the layer cache between runs, under
``$XDG_CACHE_HOME/tile-gateway-tests/podman`` (``~/.cache`` by default).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/tile-gateway-test-base:bookworm"
# Debian bookworm's python3 is 3.11, the version the Dockerfile's default base pins too.
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The most a container may ask for; the host's hard limits cap it.
ULIMITS = {"nofile": (resource.RLIMIT_NOFILE, 20000), "nproc": (resource.RLIMIT_NPROC, 32768)}


def _missing(*programs: str) -> None:
    absent = [p for p in programs if shutil.which(p) is None]
    if absent:
        pytest.fail(
            f"the container tests need {', '.join(absent)}: run scripts/install-test-deps.sh "
            "(Debian: apt-get install podman runc debootstrap)"
        )


def _ulimit(kind: int, wanted: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 ``URIs:`` or a ``deb`` line), else
    deb.debian.org; debootstrap fetches the base image's packages from it."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in [*sources, Path("/etc/apt/sources.list")]:
        if not path.is_file():
            continue
        text = path.read_text()
        for pattern in (r"^URIs:\s*(\S+)", r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s"):
            for url in re.findall(pattern, text, re.MULTILINE):
                if "security" not in url:
                    return str(url)
    return "http://deb.debian.org/debian"


class Podman:
    """The ``podman`` CLI with the private configuration of this module under ``root``."""

    def __init__(self, root: Path) -> None:
        _missing("podman", "runc")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        limits = ", ".join(
            f'"{name}={_ulimit(kind, n)}:{_ulimit(kind, n)}"' for name, (kind, n) in ULIMITS.items()
        )
        (root / "containers.conf").write_text(
            f"[containers]\ndefault_ulimits = [{limits}]\n\n"
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
            f'events_logger = "file"\nevents_logfile_path = "{root / "events.log"}"\n'
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\n'
            f'runroot = "{root / "run"}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "TMPDIR": str(root / "tmp"),
        }
        (root / "tmp").mkdir(exist_ok=True)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman *args``; with ``check`` a non-zero status fails the test with its output."""
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=input is None,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"podman {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        """``podman <kind> inspect name`` as JSON (kind: image or container)."""
        return dict(json.loads(self(kind, "inspect", name).stdout)[0])

    def has_image(self, name: str) -> bool:
        """Whether the private store holds ``name``."""
        return self("image", "exists", name, check=False).returncode == 0

    def ensure_base_image(self) -> str:
        """The debootstrap base image, made and imported when the store lacks it (minutes)."""
        if not self.has_image(BASE_IMAGE):
            _missing("debootstrap")
            with tempfile.TemporaryDirectory(dir=self.root / "tmp") as folder:
                rootfs = Path(folder) / "rootfs"
                subprocess.run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--include={BASE_PACKAGES}",
                        "bookworm",
                        str(rootfs),
                        apt_mirror(),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=1200,
                )
                tar = subprocess.run(
                    ["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True
                ).stdout
                self(
                    "import",
                    "--change",
                    'CMD ["/bin/bash"]',
                    "-",
                    BASE_IMAGE,
                    input=tar,
                    timeout=600,
                )
        return BASE_IMAGE

    def build(self, target: str, tag: str) -> str:
        """Build the repository's Dockerfile ``target`` as ``tag`` from the imported base, with
        the layer cache of earlier runs; docker format keeps the HEALTHCHECK."""
        base = self.ensure_base_image()
        args = [
            "build",
            "--network",
            "host",
            "--format",
            "docker",
            "--layers",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--target",
            target,
            "--tag",
            tag,
        ]
        # pip in the build checks TLS against the host's CA bundle (a proxy's CA may be in it).
        if HOST_CA_BUNDLE.is_file():
            args += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        self(*args, str(REPO), timeout=1800)
        return tag


def podman_root() -> Path:
    """Where the private store and configuration live, kept between runs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tile-gateway-tests" / "podman"
