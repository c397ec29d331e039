"""``make demo RASTER_STORE=<folder>``: the demo's ImageServer mosaics the GeoTIFFs dropped in
its raster store, and the README's curl example runs against it as written (only its ports and
folders moved to the test's own). Real processes, real sockets, real curl."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, REPO, free_port
from tests.integration.test_cli import fake_venv, make, read_until, stop


def readme_example() -> str:
    """The shell block of README.md that starts by copying the test scenes to the store."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
    found = [block for block in blocks if block.startswith("cp tests/data/mosaic_cog1.tif")]
    assert len(found) == 1, "README.md has no CreateImageCollection curl example"
    return found[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README example runs curl")
def test_make_demo_raster_store_runs_the_readme_example(tmp_path: Path) -> None:
    store = tmp_path / "new folder" / "store"  # missing: the demo makes it
    port, imageserver_port = free_port(), free_port()
    process = make(
        "demo",
        f"VENV={fake_venv(tmp_path / 'venv')}",
        f"PORT={port}",
        f"IMAGESERVER_PORT={imageserver_port}",
        f"RASTER_STORE={store}",
    )
    try:
        lines = read_until(process, "Viewer:")
        assert (
            f"Raster store: {store} (its GeoTIFFs are CreateImageCollection uris "
            "/rasterStore/<file>)\n"
        ) in lines, "".join(lines)
        assert store.is_dir()
        script = (
            readme_example()
            .replace("127.0.0.1:8081", f"127.0.0.1:{imageserver_port}")
            .replace("tests/data/", f"{DATA}/")
            .replace("raster-store/", f"'{store}/'")
        )
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        url = f"http://127.0.0.1:{imageserver_port}/arcgis/rest/services/stlawrence/ImageServer"
        assert f'"url": "{url}"' in run.stdout, run.stdout
        assert "esriJobSucceeded" in run.stdout
        with Image.open(tmp_path / "stlawrence.png") as image:
            assert (image.format, image.size) == ("PNG", (800, 500))
            pixels = np.asarray(image.convert("RGBA"))
        assert (pixels[..., 3] > 0).mean() > 0.3  # the mosaic shows
    finally:
        stop(process)
