"""The command line as a new user meets it: busy ports and port numbers. Real processes and
real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port


def environment(**extra: str) -> dict[str, str]:
    """The test's environment for a child: the checkout's own package first on the path, and
    no make variables of an enclosing ``make test`` (its jobserver, its directory messages)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a plain listening socket (no SO_REUSEPORT) holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_demo_with_a_busy_imageserver_port_says_how_to_choose_another(busy_port: int) -> None:
    result = cli("demo", "--port", str(free_port()), "--imageserver-port", str(busy_port))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"tile-gateway demo: the reference ImageServer cannot listen on 127.0.0.1:{busy_port}: "
        "the port is in use; choose another with make demo IMAGESERVER_PORT=<port> "
        "(or tile-gateway demo --imageserver-port <port>)"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_busy_port_says_how_to_choose_another(
    tmp_path: Path, busy_port: int, workers: str
) -> None:
    config = tmp_path / "gw.yaml"
    upstream = f"http://127.0.0.1:{free_port()}/arcgis/rest/services/a/ImageServer"
    config.write_text(
        yaml.safe_dump({"server": {"port": busy_port}, "layers": {"a": {"url": upstream}}})
    )
    result = cli("serve", "--config", str(config), "--workers", workers)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"tile-gateway serve: cannot listen on 127.0.0.1:{busy_port}: the port is in use; "
        f"choose another with --port <port> (or server.port in {config})"
    )
    assert "Traceback" not in result.stderr


def test_a_port_out_of_range_is_a_usage_error() -> None:
    result = cli("demo", "--port", "99999")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "tile-gateway demo: error: argument --port: '99999' is not a port number from 0 to 65535"
    )
