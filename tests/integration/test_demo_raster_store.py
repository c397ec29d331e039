"""``make demo RASTER_STORE=<folder>``: the demo's ImageServer mosaics the GeoTIFFs dropped in
its raster store, and the README's curl example runs against it as written (only its ports and
folders moved to the test's own): the job submitted through the gateway, waited on, its result
URL followed through the gateway's proxy (service JSON, exportImage), published as a tile layer
and its tile compared with rasterio reads of the inputs. Real processes, real sockets, real
curl."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, REPO, free_port
from tests.integration.test_cli import fake_venv, make, read_until, stop
from tests.integration.test_jobs_e2e import (
    close_fraction,
    expected_tile,
    inner,
    percent_clip_ranges,
    probes,
    statistics_query,
    stretch_tolerance,
)


def readme_example() -> str:
    """The shell block of README.md that starts by copying the test scenes to the store."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
    found = [block for block in blocks if block.startswith("cp tests/data/mosaic_cog1.tif")]
    assert len(found) == 1, "README.md has no CreateImageCollection curl example"
    return found[0]


def followed_through_the_gateway(
    url: str, port: int, tile: morecantile.Tile
) -> tuple[dict[str, Any], np.ndarray]:
    """Follow a job's result ``url`` (the gateway's own) and the service's exportImage of the
    WebMercatorQuad ``tile``'s bbox at 256 x 256 (as an image, and as JSON whose ``href``
    leads to the output file, through the gateway too): the service JSON and the image as
    ``(256, 256, 4)`` RGBA."""
    with urllib.request.urlopen(f"{url}?f=json", timeout=30) as response:
        assert response.status == 200
        info: dict[str, Any] = json.load(response)
    assert "error" not in info, info
    assert (info["name"], info["type"], info["bandCount"]) == (
        "Hosted/stlawrence",
        "ImageServer",
        3,
    )
    bounds = morecantile.tms.get("WebMercatorQuad").xy_bounds(tile)
    query = urllib.parse.urlencode(
        {
            "bbox": ",".join(repr(value) for value in bounds),
            "bboxSR": "3857",
            "imageSR": "3857",
            "size": "256,256",
            "format": "png32",
        }
    )
    with urllib.request.urlopen(f"{url}/exportImage?{query}&f=image", timeout=30) as response:
        assert response.headers["Content-Type"] == "image/png"
        with Image.open(io.BytesIO(response.read())) as image:
            assert image.size == (256, 256)
            pixels = np.asarray(image.convert("RGBA"))
    with urllib.request.urlopen(f"{url}/exportImage?{query}&f=json", timeout=30) as response:
        href = json.load(response)["href"]
    assert href.startswith(f"http://127.0.0.1:{port}/arcgis/rest/services/_outputs/Hosted/")
    with urllib.request.urlopen(href, timeout=30) as response:
        assert response.headers["Content-Type"] == "image/png"
    return info, pixels


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
            .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
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
        # The result names the new service at the gateway, not the ImageServer, in the
        # Hosted folder the demo's proxy allows: following it through the gateway works.
        url = f"http://127.0.0.1:{port}/arcgis/rest/services/Hosted/stlawrence/ImageServer"
        assert f'"url": "{url}"' in run.stdout, run.stdout
        assert "esriJobSucceeded" in run.stdout
        assert f"127.0.0.1:{imageserver_port}" not in run.stdout
        # The tile the example fetched shows the mosaic: the later scene in the overlap.
        found = re.search(r"/tiles/stlawrence/(\d+)/(\d+)/(\d+)\.png", script)
        assert found is not None
        tile = morecantile.Tile(int(found[2]), int(found[3]), int(found[1]))
        info, exported = followed_through_the_gateway(url, port, tile)
        query = urllib.parse.urlencode(statistics_query(info))
        with urllib.request.urlopen(
            f"{url}/computeStatisticsHistograms?{query}", timeout=30
        ) as response:
            ranges = percent_clip_ranges(json.load(response))
        tolerance = stretch_tolerance(info, ranges)
        inputs = [store / "mosaic_cog1.tif", store / "mosaic_cog2.tif"]
        expected, footprints, _ = expected_tile(tile, inputs, ranges)
        with Image.open(tmp_path / "stlawrence.png") as image:
            assert (image.format, image.size) == ("PNG", (256, 256))
            pixels = np.asarray(image.convert("RGBA"))
        overlap = probes(inner(footprints[0] & footprints[1]))
        assert overlap.sum() > 100
        assert (pixels[overlap][:, 3] == 255).all()
        assert close_fraction(pixels[..., :3], expected, overlap, tolerance) > 0.9
        # The exportImage of that tile's bbox through the gateway's proxy shows the same.
        assert (exported[overlap][:, 3] == 255).all()
        assert close_fraction(exported[..., :3], expected, overlap, tolerance) > 0.9
    finally:
        stop(process)
