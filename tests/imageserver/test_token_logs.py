"""No token, password or secret reaches the log of ``python -m imageserver``, while its
access log still records every request (with ``***`` in place of the secret values)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import DATA, free_port, wait_for_port

PASSWORD = "test-password-in-a-log-check"
APP_SECRET = "test-app-secret-in-a-log-check"
API_KEY = "test-api-key-in-a-log-check"


def call(url: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers.get_content_type(), response.read()


def test_secrets_stay_out_of_the_log(tmp_path: Path) -> None:
    config, log = tmp_path / "imageserver.yaml", tmp_path / "imageserver.log"
    config.write_text(
        "builtin: false\n"
        f"services:\n  rgb:\n    path: {DATA / 'RGB.byte.tif'}\n"
        "security:\n"
        "  enabled: true\n"
        f"  users: {{alice: {PASSWORD}}}\n"
        f"  apps: {{app: {APP_SECRET}}}\n"
        f"  api_keys: [{API_KEY}]\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "imageserver", "--config", str(config), "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log, timeout=60)
        root = f"http://127.0.0.1:{port}/arcgis"
        _, body = call(
            f"{root}/tokens/generateToken",
            {"username": "alice", "password": PASSWORD, "f": "json", "client": "requestip"},
        )
        token = json.loads(body)["token"]
        _, body = call(
            f"{root}/sharing/rest/oauth2/token",
            {"client_id": "app", "client_secret": APP_SECRET, "grant_type": "client_credentials"},
        )
        access_token = json.loads(body)["access_token"]
        export = (
            f"{root}/rest/services/rgb/ImageServer/exportImage"
            "?bbox=200000,2700000,210000,2710000&size=16,16&f=image&format=png"
        )
        for query, headers in (
            (f"&token={token}", {"Referer": f"http://app.example/?token={token}"}),
            (f"&Token={access_token}", {}),
            (f"&tok%65n={API_KEY}", {}),
            ("", {"X-Esri-Authorization": f"Bearer {token}"}),
            ("&token=an-invalid-test-token", {}),
        ):
            content_type, _ = call(export + query, headers=headers)
            assert content_type in ("image/png", "application/json")
        # Credentials in a query string are refused, and must not be logged either.
        call(f"{root}/tokens/generateToken?username=alice&password={PASSWORD}&f=json")
    finally:
        process.terminate()
        process.wait(10)
    text = log.read_text()
    for secret in (PASSWORD, APP_SECRET, API_KEY, token, access_token, "an-invalid-test-token"):
        assert secret not in text
    access_lines = [line for line in text.splitlines() if "/arcgis/" in line]
    assert len(access_lines) == 8, text
    # token, Token, tok%65n, the invalid token, the password; the Referer's token too.
    assert sum("=***" in line for line in access_lines) == 5, text
    assert sum('/?token=***"' in line for line in access_lines) == 1, text
