"""The command line as a new user meets it: ``make demo`` and its ports, busy ports, what the
install steps say, and ``--log-level`` anywhere on the line. Real processes and real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port

LEVELS = "'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'"


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


def fake_venv(root: Path) -> Path:
    """A ``VENV`` for the Makefile whose stamps are fresh and whose ``tile-gateway`` runs this
    checkout with the test's Python: make runs its real recipes without installing anything."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    script = bin_dir / "tile-gateway"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n')
    script.chmod(0o755)
    for stamp in (".demo-installed", ".test-installed"):
        (root / stamp).touch()
    return root


def make(*args: str) -> subprocess.Popen[str]:
    # A session of its own, so that stopping it stops the tile-gateway it started.
    return subprocess.Popen(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def read_until(process: subprocess.Popen[str], prefix: str, timeout: float = 90.0) -> list[str]:
    """The lines ``process`` printed up to the first starting with ``prefix``; its process
    group is killed when that takes longer than ``timeout`` seconds."""
    assert process.stdout is not None
    lines: list[str] = []
    timer = threading.Timer(timeout, kill_group, (process,))
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(prefix):
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"ended ({process.wait()}) before {prefix!r}:\n{''.join(lines)}")


def kill_group(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):  # all of them ended already
        os.killpg(process.pid, sig)


def stop(process: subprocess.Popen[str]) -> None:
    """Ctrl-C to the process and what it started; a kill when that is not enough."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        kill_group(process, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
            return


def test_make_demo_listens_on_port_and_imageserver_port(tmp_path: Path) -> None:
    port, imageserver_port = free_port(), free_port()
    process = make(
        "demo",
        f"VENV={fake_venv(tmp_path / 'venv')}",
        f"PORT={port}",
        f"IMAGESERVER_PORT={imageserver_port}",
        f"RASTER_STORE={tmp_path / 'raster-store'}",  # not a folder in the checkout
    )
    try:
        lines = read_until(process, "Viewer:")
        assert lines[-1] == f"Viewer: http://127.0.0.1:{port}/\n", "".join(lines)
        assert (
            f"Reference ImageServer: http://127.0.0.1:{imageserver_port}/arcgis/rest/services\n"
            in lines
        )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/tiles/bluemarble/3/4/2.png", timeout=60
        ) as tile:
            assert tile.status == 200
            assert tile.read().startswith(b"\x89PNG")
        # shadedrelief is token-secured: the upstream refuses a request without a token...
        upstream = f"http://127.0.0.1:{imageserver_port}/arcgis/rest/services/shadedrelief"
        with urllib.request.urlopen(f"{upstream}/ImageServer?f=json", timeout=30) as refused:
            assert json.loads(refused.read())["error"]["code"] == 499
        # ...and the gateway, holding the credential, serves it as tiles and through its proxy.
        proxied = f"http://127.0.0.1:{port}/arcgis/rest/services/shadedrelief/ImageServer"
        assert f"ArcGIS REST through the gateway: {proxied} " in "".join(lines)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/tiles/shadedrelief/3/4/2.jpg", timeout=60
        ) as tile:
            assert (tile.status, tile.headers["Content-Type"]) == (200, "image/jpeg")
        with urllib.request.urlopen(f"{proxied}?f=json", timeout=60) as info:
            text = info.read().decode()
        assert json.loads(text)["name"] == "shadedrelief"
        assert "token" not in text.lower()
    finally:
        stop(process)
    # The password made for the run was never printed.
    assert process.stdout is not None
    assert "DEMO_IMAGESERVER_PASSWORD" not in "".join(lines) + process.stdout.read()


def test_make_demo_on_a_busy_port_says_how_to_choose_another(
    tmp_path: Path, busy_port: int
) -> None:
    process = make(
        "demo",
        f"VENV={fake_venv(tmp_path / 'venv')}",
        f"PORT={busy_port}",
        f"RASTER_STORE={tmp_path / 'raster-store'}",
    )
    try:
        output, _ = process.communicate(timeout=90)
    finally:
        stop(process)
    assert process.returncode != 0
    assert (
        f"tile-gateway demo: the gateway cannot listen on 127.0.0.1:{busy_port}: the port is in "
        "use; choose another with make demo PORT=<port> (or tile-gateway demo --port <port>)\n"
    ) in output
    assert "Traceback" not in output


def test_demo_with_a_busy_imageserver_port_says_how_to_choose_another(
    busy_port: int, tmp_path: Path
) -> None:
    result = cli(
        "demo",
        "--port",
        str(free_port()),
        "--imageserver-port",
        str(busy_port),
        "--raster-store",
        str(tmp_path / "raster-store"),
    )
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


def make_output(*args: str) -> list[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


@pytest.mark.parametrize("target", ["demo", "test"])
def test_make_says_what_it_installs_and_lets_pip_show_it(tmp_path: Path, target: str) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # A python that only says how it was called: the install step runs without a network.
    stub = venv / "bin" / "python"
    stub.write_text('#!/bin/sh\necho "python called with: $*"\n')
    stub.chmod(0o755)
    extra = {"demo": "imageserver", "test": "test"}[target]
    lines = make_output(f"VENV={venv}", f"{venv}/.{target}-installed")
    assert lines == [
        f"Installing tile-gateway with the [{extra}] extra into {venv} ...",
        f"python called with: -m pip install -e .[{extra}]",
    ]


def test_install_test_deps_says_it_runs_npm_ci(tmp_path: Path) -> None:
    # The script in a checkout of its own, where every program it looks for is a stub but node.
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "install-test-deps.sh", tmp_path / "scripts")
    browser = tmp_path / "tests" / "browser"
    browser.mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "browser" / "package.json", browser)
    shutil.copy2(REPO / "tests" / "browser" / "package-lock.json", browser)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    programs = ("redis-server", "gdal_translate", "gdalinfo", "chromium", "npm", "podman", "runc")
    for program in (*programs, "debootstrap"):
        (stubs / program).write_text(f'#!/bin/sh\necho "{program} called with: $*"\n')
        (stubs / program).chmod(0o755)
    checkov = tmp_path / ".venv" / "checkov" / "bin" / "checkov"
    checkov.parent.mkdir(parents=True)
    checkov.write_text("#!/bin/sh\necho 3.3.30\n")
    checkov.chmod(0o755)
    arcgis = tmp_path / ".venv" / "arcgis" / "bin" / "python"
    arcgis.parent.mkdir(parents=True)
    arcgis.write_text("#!/bin/sh\necho 2.4.4\n")
    arcgis.chmod(0o755)
    node = shutil.which("node")
    assert node, "the browser tests need node (Debian: apt-get install nodejs)"
    (stubs / "node").symlink_to(node)
    result = subprocess.run(
        [str(tmp_path / "scripts" / "install-test-deps.sh")],
        env={**environment(), "PATH": f"{stubs}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "install-test-deps: installing the browser tests' npm packages (esri-leaflet leaflet "
        "maplibre-gl ol playwright-core, with their dependencies) into tests/browser/node_modules "
        "with npm ci",
        "npm called with: ci --prefix tests/browser --no-audit --no-fund --loglevel=error",
    ]


def test_log_level_after_the_command(tmp_path: Path) -> None:
    assert cli("check-config", "config/demo.yaml", "--log-level", "warning").returncode == 0
    config = tmp_path / "gw.yaml"
    upstream = f"http://127.0.0.1:{free_port()}/arcgis/rest/services/a/ImageServer"
    config.write_text(yaml.safe_dump({"layers": {"a": {"url": upstream}}}))

    def startup_log(*args: str) -> str:
        """What serve logs until it listens; the unreachable upstream makes it warn."""
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args, "--port", str(port)],
            cwd=REPO,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            return "".join(read_until(process, "tile-gateway listening on"))
        finally:
            stop(process)

    assert "service info unavailable" in startup_log("serve", "--config", str(config))
    quiet = startup_log("serve", "--config", str(config), "--log-level", "ERROR")
    assert "service info unavailable" not in quiet, quiet
    # After the command it wins over one given before it.
    both = startup_log(
        "--log-level", "ERROR", "serve", "--config", str(config), "--log-level", "WARNING"
    )
    assert "service info unavailable" in both


@pytest.mark.parametrize(
    "args",
    [
        ("--log-level", "LOUD", "check-config", "config/demo.yaml"),
        ("check-config", "config/demo.yaml", "--log-level", "LOUD"),
    ],
)
def test_a_bad_log_level_is_a_usage_error(args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        f"error: argument --log-level: invalid choice: 'LOUD' (choose from {LEVELS})"
    )
    assert result.stderr.startswith("usage: tile-gateway")


def test_a_bad_log_level_variable_is_a_usage_error() -> None:
    result = cli("check-config", "config/demo.yaml", TILE_GATEWAY_LOG_LEVEL="LOUD")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "tile-gateway: error: environment variable TILE_GATEWAY_LOG_LEVEL: invalid level 'LOUD' "
        "(choose from DEBUG, INFO, WARNING, ERROR, CRITICAL)"
    )
    given = cli(
        "check-config", "config/demo.yaml", "--log-level", "info", TILE_GATEWAY_LOG_LEVEL="LOUD"
    )
    assert given.returncode == 0, given.stderr
    assert cli("check-config", "config/demo.yaml", TILE_GATEWAY_LOG_LEVEL="debug").returncode == 0
