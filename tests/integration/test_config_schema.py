"""``tile-gateway config-schema`` prints the configuration's JSON Schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

WORKTREE = Path(__file__).resolve().parents[2]


def test_config_schema_describes_every_section_of_the_example_config() -> None:
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "config-schema"],
        cwd=WORKTREE,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    schema = json.loads(done.stdout)
    example = yaml.safe_load((WORKTREE / "config" / "example.yaml").read_text())
    assert set(example) <= set(schema["properties"])
    server = schema["$defs"]["ServerConfig"]["properties"]
    assert set(example["server"]) <= set(server)
    assert server["log_format"]["enum"] == ["text", "json"]
