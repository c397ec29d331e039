"""The event loop the gateway runs on (``gateway.server.run``): uvloop where installed, asyncio's
otherwise or when asked, and no trace of the choice in an error's traceback."""

from __future__ import annotations

import subprocess
import sys

# The gateway's run() with uvloop hidden (an import of it fails, as where it is not installed),
# and a main coroutine that fails.
PROGRAM = """
import sys
sys.modules["uvloop"] = None
from gateway.server import event_loop, run
print(event_loop())
async def main():
    raise RuntimeError("the main coroutine failed")
run(main())
"""


def test_without_uvloop_asyncio_runs_and_a_traceback_holds_only_the_error() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.stdout == "asyncio\n"
    assert "RuntimeError: the main coroutine failed" in result.stderr
    # Before: the error was raised while handling uvloop's ImportError, and every traceback
    # began with "No module named 'uvloop'".
    assert "uvloop" not in result.stderr
    assert "During handling of the above exception" not in result.stderr


def test_uvloop_asked_where_it_is_missing_is_an_error() -> None:
    asked = (
        "import os\n"
        "os.environ['TILE_GATEWAY_LOOP'] = 'uvloop'\n"
        "try:\n"
        "    event_loop()\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(0)"
    )
    program = PROGRAM.replace("print(event_loop())", asked)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.stdout == "TILE_GATEWAY_LOOP=uvloop but uvloop is not installed\n"
