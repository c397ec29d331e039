"""CreateImageCollection end to end through the gateway, against the REAL reference ImageServer
as a process: token-secured (tokens living 1.5 s, shorter than a job), with a raster store in a
temporary folder holding copies of the repository's test rasters. Two gateway apps sharing
the test Redis are two replicas.

Submit -> wait (long poll and Server-Sent Events) -> result -> publish -> the published
layer's XYZ tiles, whose pixels at probe points inside each input's footprint (and, in the
overlap, the later input's) are compared with rasterio reads of the inputs reprojected to the
tile's grid: the two overlapping Landsat scenes, and the two NAIP scenes of one quarter-quad
ten years apart, where the 2020 one must show wherever the two years differ. Then the
failures: a bad rasterType, typographic quotes, a path outside the raster store, a missing
file, an upstream job failure, cancel, another client's reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pytest
import rasterio
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image
from rasterio.transform import from_bounds
from rasterio.warp import Resampling, reproject, transform_bounds

from gateway.app import create_app
from gateway.config import parse_config
from gateway.services.admin import ADMIN_TOKEN_ENV
from tests.conftest import DATA, free_port, wait_for_port
from tests.integration.gp_upstream import ALICE, ALICE_KEY, BOB, BOB_KEY, TASK

COG1, COG2 = "mosaic_cog1.tif", "mosaic_cog2.tif"  # overlapping Landsat scenes, 3 x uint16
# The same North Dakota quarter-quad ten years apart, 4 x uint8 (the grids 1 m apart).
NAIP, NAIP_2020 = "m_4709963_se_14_1_20100629.tif", "m_4709963_se_14_1_20200831.tif"
USER, PASSWORD = "gateway", "e2e-password-0123456789"
PASSWORD_ENV = "TG_E2E_IMAGESERVER_PASSWORD"
ADMIN = "admin-token-e2e-0123456789abcdef"
TOKEN_LIFETIME = 1.5  # seconds: every job below (7 steps of STEP_DELAY at least) outlives it
STEP_DELAY = 0.3  # seconds before each job step: statuses to watch, time to cancel
FINISHED = {"esriJobSucceeded", "esriJobFailed", "esriJobCancelled"}
RASTER_DATASET = '{"rasterTypeName": "Raster Dataset"}'
WEB_MERCATOR = '{"outSR": {"wkid": 3857}}'
# The folder the ImageServer publishes its collections in, as ArcGIS Enterprise does; the
# gateway's proxy allows it (and the GP service), so every collection made below is reachable.
HOSTED = "/arcgis/rest/services/Hosted"
GRID = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def raster_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ImageServer's raster store: copies of the test rasters, and ``link.tif``, a
    symbolic link to a raster outside the store (which a job refuses to read)."""
    folder = tmp_path_factory.mktemp("raster-store")
    for name in (COG1, COG2, NAIP, NAIP_2020):
        shutil.copyfile(DATA / name, folder / name)
    (folder / "link.tif").symlink_to(DATA / COG1)
    return folder


@pytest.fixture(scope="module")
def imageserver(raster_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Origin (``http://127.0.0.1:<port>``) of ``python -m imageserver`` with the raster store,
    every service token-secured (the GP service and the collections it makes too), tokens of
    ``TOKEN_LIFETIME`` seconds, the token counters at ``/_test/stats``, and one service of
    its own (``rgb``) for the gateway's configured layer."""
    workdir = tmp_path_factory.mktemp("imageserver-e2e")
    config = {
        "builtin": False,
        "services": {"rgb": {"path": str(DATA / "RGB.byte.tif")}},
        "raster_store": str(raster_store),
        "security": {
            "enabled": True,
            "users": {USER: PASSWORD},
            "token_lifetime": TOKEN_LIFETIME,
            "secured_services": ["*"],
            "stats_endpoint": True,
        },
        "jobs": {"step_delay": STEP_DELAY, "work_dir": str(workdir / "work")},
    }
    path, log = workdir / "imageserver.yaml", workdir / "imageserver.log"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [sys.executable, "-m", "imageserver", "--config", str(path), "--port", str(port)]
    # Output goes to a file: an unread pipe would fill with access-log lines and stall it.
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def gateway_config(origin: str, redis_url: str, key_prefix: str) -> Any:
    """A gateway in front of the ImageServer at ``origin``: the jobs relay and the proxy with
    the credential set ``is`` (found through ``/arcgis/rest/info``), API keys ``alice`` and
    ``bob`` (the proxy group admits anonymous clients too), Redis shared by the replicas."""
    services = f"{origin}/arcgis/rest/services"
    return parse_config(
        {
            "server": {"startup_timeout": 10, "upstream_timeout": 10, "trust_proxy": True},
            "cache": {"redis_url": redis_url, "prefix": key_prefix, "purge_poll": 0.2},
            "credentials": {
                "is": {"type": "server", "username": USER, "password_env": PASSWORD_ENV}
            },
            "access": {
                "api_keys": {
                    name: hashlib.sha256(key.encode()).hexdigest()
                    for name, key in (("alice", ALICE_KEY), ("bob", BOB_KEY))
                },
                "groups": {"proxy": {"authenticate": ["api_key"], "anonymous": True}},
            },
            "layers": {
                "rgb": {"url": f"{services}/rgb/ImageServer", "credentials": "is"},
            },
            "proxy": {
                "services": [
                    {
                        "url": services,
                        "credentials": "is",
                        "allow": ["System/RasterAnalysisTools/GPServer", "Hosted"],
                    }
                ]
            },
            "jobs": {
                "service": {
                    "url": f"{services}/System/RasterAnalysisTools/GPServer",
                    "credentials": "is",
                },
                "poll_min": 0.1,
                "poll_max": 0.3,
                "max_wait": 20,
            },
        }
    )


Replicas = Callable[[], Awaitable[tuple[TestClient, TestClient]]]


@pytest.fixture
async def replicas(
    imageserver: str,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
) -> Replicas:
    """``await replicas()``: two gateway apps on sockets sharing the test Redis (one key
    prefix of this test's own), admin token ``ADMIN``."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)

    async def make() -> tuple[TestClient, TestClient]:
        config = gateway_config(imageserver, redis_url, key_prefix)
        return await aiohttp_client(create_app(config)), await aiohttp_client(create_app(config))

    return make


def submission(inputs: list[str], name: str, **more: str) -> dict[str, str]:
    """submitJob's form: ``inputs`` as raster-store uris, a new collection ``name`` in Web
    Mercator."""
    uris = json.dumps({"uris": [f"/rasterStore/{file}" for file in inputs]})
    return {
        "inputRasters": uris,
        "imageCollection": json.dumps({"serviceProperties": {"name": name}}),
        "rasterType": RASTER_DATASET,
        "context": WEB_MERCATOR,
        "f": "json",
        **more,
    }


async def submit(client: TestClient, form: dict[str, str], headers: dict[str, str] = ALICE) -> str:
    response = await client.post(f"{TASK}/submitJob", data=form, headers=headers)
    body = await response.json()
    assert response.status == 200 and body.get("jobStatus") == "esriJobSubmitted", body
    return str(body["jobId"])


# Seconds a long poll of these tests waits for a change (jobs.max_wait is above it).
LONG_POLL_WAIT = 15


async def long_polls(
    client: TestClient,
    job_id: str,
    headers: dict[str, str] = ALICE,
    durations: list[float] | None = None,
) -> list[dict[str, Any]]:
    """Long polls (``wait=LONG_POLL_WAIT``) one after the other until the job finishes: the
    job JSON each answered; the seconds each took are added to ``durations`` when given."""
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while not answers or answers[-1]["jobStatus"] not in FINISHED:
        assert time.monotonic() < deadline, answers
        asked = time.monotonic()
        response = await client.get(
            f"{TASK}/jobs/{job_id}",
            params={"f": "json", "wait": str(LONG_POLL_WAIT)},
            headers=headers,
        )
        assert response.status == 200, await response.text()
        answers.append(await response.json())
        if durations is not None:
            durations.append(time.monotonic() - asked)
    return answers


async def events(
    client: TestClient, job_id: str, headers: dict[str, str] = ALICE
) -> list[tuple[int, dict[str, Any]]]:
    """The ``status`` events of the job's event stream, until it ends: (id, job JSON)."""
    response = await client.get(f"{TASK}/jobs/{job_id}/events", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    seen: list[tuple[int, dict[str, Any]]] = []
    event: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line:
            name, _, value = line.partition(": ")
            event[name] = value
            continue
        assert event["event"] == "status"
        seen.append((int(event["id"]), json.loads(event["data"])))
        event = {}
    return seen


async def token_stats(origin: str, client: TestClient) -> dict[str, Any]:
    """The ImageServer's token counters (``/_test/stats``)."""
    async with client.session.get(f"{origin}/_test/stats") as response:
        stats: dict[str, Any] = await response.json()
    return stats


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Wait until ``check()`` holds, at most ``seconds`` (a bound, not a speed claim)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.05)


async def served(client: TestClient, name: str) -> bool:
    response = await client.get("/layers.json")
    return name in [layer["name"] for layer in (await response.json())["layers"]]


# ---------------------------------------------------------------------------------------------
# What a published layer's tiles must show


def expected_tile(
    tile: morecantile.Tile, inputs: list[Path], ranges: list[tuple[float, float]] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 256 x 256 WebMercatorQuad ``tile`` of the mosaic of ``inputs`` (bottom first), from
    rasterio reads of the inputs reprojected to the tile's grid (bilinear, nodata 0): RGB
    ``(256, 256, 3)`` uint8 after the ImageServer's linear stretch between ``ranges`` per band
    (``None``: 8-bit data, unstretched), each input's footprint ``(len(inputs), 256, 256)``
    bool, and the index of the input on top (-1 where none)."""
    left, bottom, right, top = GRID.xy_bounds(tile)
    transform = from_bounds(left, bottom, right, top, 256, 256)
    mosaic = np.zeros((3, 256, 256), np.float64)
    footprints = np.zeros((len(inputs), 256, 256), bool)
    on_top = np.full((256, 256), -1)
    for index, path in enumerate(inputs):
        with rasterio.open(path) as dataset:
            warped = np.zeros((3, 256, 256), np.float64)
            reproject(
                dataset.read([1, 2, 3]).astype(np.float64),
                warped,
                src_transform=dataset.transform,
                src_crs=dataset.crs,
                src_nodata=0,
                dst_transform=transform,
                dst_crs="EPSG:3857",
                dst_nodata=0,
                resampling=Resampling.bilinear,
            )
        footprints[index] = (warped != 0).any(axis=0)
        mosaic[:, footprints[index]] = warped[:, footprints[index]]
        on_top[footprints[index]] = index
    if ranges is not None:
        low = np.array([r[0] for r in ranges]).reshape(3, 1, 1)
        span = np.array([r[1] - r[0] for r in ranges]).reshape(3, 1, 1)
        mosaic = (mosaic - low) * 255.0 / span
    rgb = np.clip(np.rint(mosaic), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return rgb, footprints, on_top


def inner(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    """``mask`` without the pixels within ``margin`` pixels of its edge (or the tile's): probe
    points where resampling never mixes in a neighbouring input or nodata."""
    kept = mask.copy()
    for _ in range(margin):
        shrunk = kept.copy()
        shrunk[1:, :] &= kept[:-1, :]
        shrunk[:-1, :] &= kept[1:, :]
        shrunk[:, 1:] &= kept[:, :-1]
        shrunk[:, :-1] &= kept[:, 1:]
        shrunk[[0, -1], :] = False
        shrunk[:, [0, -1]] = False
        kept = shrunk
    return kept


def probes(mask: np.ndarray, step: int = 4) -> np.ndarray:
    """Probe points: every ``step``-th pixel of ``mask`` in both directions."""
    grid = np.zeros_like(mask)
    grid[::step, ::step] = True
    return mask & grid


# Levels of 255 a tile pixel may differ from the rasterio read: the ImageServer reads the
# mosaic's overviews and resamples its own way. For 8-bit data as is; stretched data scale it
# by the stretch's gain (see stretch_tolerance), as the differences are in data units.
TOLERANCE = 24


def close_fraction(
    tile: np.ndarray,
    expected: np.ndarray,
    where: np.ndarray,
    tolerance: float | np.ndarray = TOLERANCE,
) -> float:
    """Of the probe points ``where``, the fraction whose three channels all lie within
    ``tolerance`` (one value, or one per channel) of ``expected``."""
    difference = np.abs(tile[where].astype(int) - expected[where].astype(int))
    return float((difference <= tolerance).all(axis=1).mean())


async def fetch_tile(client: TestClient, layer: str, tile: morecantile.Tile) -> np.ndarray:
    """The layer's XYZ PNG tile as ``(256, 256, 4)`` RGBA."""
    response = await client.get(f"/tiles/{layer}/{tile.z}/{tile.x}/{tile.y}.png")
    assert response.status == 200, await response.text()
    assert response.content_type == "image/png"
    with Image.open(io.BytesIO(await response.read())) as image:
        assert image.size == (256, 256)
        return np.asarray(image.convert("RGBA"))


# The ImageServer's default stretch of non-8-bit data: a percent clip of this much at each
# end, from the dataset's statistics (imageserver.functions.DEFAULT_STRETCH).
CLIP_PERCENT = 0.5


def statistics_query(info: dict[str, Any]) -> dict[str, str]:
    """computeStatisticsHistograms parameters covering a service's whole extent (from its
    root ``info``), sampled about 512 pixels across as the ImageServer's own statistics are."""
    extent = info["extent"]
    side = max(extent["xmax"] - extent["xmin"], extent["ymax"] - extent["ymin"]) / 512
    return {
        "f": "json",
        "geometry": json.dumps(extent),
        "geometryType": "esriGeometryEnvelope",
        "pixelSize": f"{side},{side}",
    }


def percent_clip_ranges(answer: dict[str, Any]) -> list[tuple[float, float]]:
    """The (low, high) per band (first three) of the default stretch, from the histograms of
    a computeStatisticsHistograms ``answer``: the CLIP_PERCENT and 100 - CLIP_PERCENT points
    of each band's cumulative histogram, interpolated in their bins (a bin is 1/256 of the
    data's range, well inside the tiles' tolerance)."""
    ranges = []
    for histogram in answer["histograms"][:3]:
        counts = np.asarray(histogram["counts"], np.float64)
        edges = np.linspace(histogram["min"], histogram["max"], counts.size + 1)
        cumulative = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
        low, high = np.interp([CLIP_PERCENT / 100, 1 - CLIP_PERCENT / 100], cumulative, edges)
        ranges.append((float(low), float(high)))
    return ranges


async def service_stretch(
    client: TestClient, name: str
) -> tuple[list[tuple[float, float]], np.ndarray]:
    """The (low, high) per band the ImageServer stretches ``name`` with by default, from its
    histograms read through the gateway's proxy (which adds the token), and the tolerance
    per channel for its tiles (:func:`stretch_tolerance`)."""
    service = f"{HOSTED}/{name}/ImageServer"
    response = await client.get(service, params={"f": "json"})
    info = await response.json()
    assert response.status == 200 and "error" not in info, info
    response = await client.get(
        f"{service}/computeStatisticsHistograms", params=statistics_query(info)
    )
    answer = await response.json()
    assert response.status == 200 and "error" not in answer, answer
    ranges = percent_clip_ranges(answer)
    return ranges, stretch_tolerance(info, ranges)


def stretch_tolerance(info: dict[str, Any], ranges: list[tuple[float, float]]) -> np.ndarray:
    """Per channel, TOLERANCE levels of a stretch over the data's whole range (``minValues``
    to ``maxValues`` of the service ``info``) expressed in levels of the ``ranges`` stretch:
    the same difference in data units, amplified by the narrower stretch."""
    spans = [
        (high - low) / (maximum - minimum)
        for (low, high), minimum, maximum in zip(
            ranges, info["minValues"], info["maxValues"], strict=False
        )
    ]
    return TOLERANCE / np.array(spans)


def covering_tiles(inputs: list[Path], zoom: int) -> list[morecantile.Tile]:
    """The WebMercatorQuad tiles at ``zoom`` that the inputs' footprints touch."""
    tiles: set[morecantile.Tile] = set()
    for path in inputs:
        with rasterio.open(path) as dataset:
            west, south, east, north = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
        tiles.update(GRID.tiles(west, south, east, north, [zoom]))
    return sorted(tiles, key=lambda t: (t.y, t.x))


# ---------------------------------------------------------------------------------------------
# The whole path


async def test_two_scenes_submitted_waited_on_published_and_tiled_on_both_replicas(
    replicas: Replicas, imageserver: str, raster_store: Path
) -> None:
    first, second = await replicas()
    issued_before = (await token_stats(imageserver, first))["tokensIssued"]["tokens/generateToken"]
    started = time.monotonic()
    job_id = await submit(first, submission([COG1, COG2], "stlawrence"))

    # Waited on both ways at once, each on another replica: one poller upstream for both.
    durations: list[float] = []
    polled, streamed = await asyncio.gather(
        long_polls(first, job_id, durations=durations), events(second, job_id)
    )
    lasted = time.monotonic() - started
    statuses = [answer["jobStatus"] for answer in polled]
    assert statuses[-1] == "esriJobSucceeded"
    # Each long poll answered at a change, or at its timeout when a step outlasts it (a
    # loaded machine): a status is repeated only after a whole wait, never early.
    for (before, after), seconds in zip(itertools.pairwise(statuses), durations[1:], strict=True):
        assert after != before or seconds >= LONG_POLL_WAIT - 1, (statuses, durations)
    assert [job["jobStatus"] for _, job in streamed][-1] == "esriJobSucceeded"
    assert "esriJobExecuting" in [job["jobStatus"] for _, job in streamed]
    versions = [version for version, _ in streamed]
    assert versions == sorted(set(versions)), versions
    assert streamed[-1][1]["results"] == {"result": {"paramUrl": "results/result"}}

    # The job outlived the gateway's first token: the gateway renewed it, the job went on.
    assert lasted > TOKEN_LIFETIME
    stats = await token_stats(imageserver, first)
    assert stats["tokensIssued"]["tokens/generateToken"] > issued_before

    # Messages relayed, then the result: the new service at the gateway's proxy URL, no token.
    response = await second.get(
        f"{TASK}/jobs/{job_id}", params={"f": "json", "returnMessages": "true"}, headers=ALICE
    )
    descriptions = [m["description"] for m in (await response.json())["messages"]]
    assert f"Reading input 2 of 2: /rasterStore/{COG2}" in descriptions
    response = await first.get(f"{TASK}/jobs/{job_id}/results/result", headers=ALICE)
    text = await response.text()
    assert "token" not in text and imageserver not in text
    value = json.loads(text)["value"]
    service = str(first.make_url(f"{HOSTED}/stlawrence/ImageServer"))
    assert value["url"] == service

    # Another client, or an anonymous one, never sees the job.
    for headers in (BOB, {}):
        for path in ("", "/results/result", "/events", "/cancel"):
            response = await second.get(f"{TASK}/jobs/{job_id}{path}", headers=headers)
            assert response.status == 404, (path, headers)
            assert (await response.json())["error"]["message"] == f"Job {job_id} not found"

    # Published by the admin call on one replica, served by the other within seconds.
    admin = {"Authorization": f"Bearer {ADMIN}"}
    response = await second.post("/admin/layers", data=json.dumps({"jobId": job_id}), headers=admin)
    assert response.status == 201, await response.text()
    assert (await response.json())["name"] == "stlawrence"
    await eventually(lambda: served(first, "stlawrence"))

    # Its tiles show each input where it lies, and the later input in the overlap.
    ranges, tolerance = await service_stretch(first, "stlawrence")
    inputs = [raster_store / COG1, raster_store / COG2]
    checked = {"cog1 only": 0, "cog2 only": 0, "overlap": 0}
    for tile in covering_tiles(inputs, 7):
        pixels = await fetch_tile(first, "stlawrence", tile)
        expected, footprints, on_top = expected_tile(tile, inputs, ranges)
        opaque = pixels[..., 3] == 255
        # Transparent off the mosaic, opaque on it (edges aside).
        assert not (inner(on_top == -1) & opaque).any()
        inside = inner(on_top >= 0)
        assert (inside & ~opaque).sum() <= 0.01 * inside.sum()
        rgb = pixels[..., :3]
        regions = {
            "cog1 only": footprints[0] & ~footprints[1],
            "cog2 only": footprints[1] & ~footprints[0],
            "overlap": footprints[0] & footprints[1],
        }
        for region, mask in regions.items():
            where = probes(inner(mask))
            if where.sum() < 20:
                continue
            checked[region] += int(where.sum())
            assert close_fraction(rgb, expected, where, tolerance) > 0.9, (tile, region)
        # In the overlap, where the two scenes differ, the later one shows.
        cog1_alone, _, _ = expected_tile(tile, inputs[:1], ranges)
        apart = (np.abs(cog1_alone.astype(int) - expected.astype(int)) > 3 * tolerance).any(axis=2)
        where = probes(inner(regions["overlap"]), 1) & apart
        if where.sum() >= 20:
            assert close_fraction(rgb, expected, where, tolerance) > 0.9
            assert close_fraction(rgb, cog1_alone, where, tolerance) < 0.1
    assert all(count >= 100 for count in checked.values()), checked

    # The configured layer still serves beside the published one.
    response = await first.get("/tiles/rgb/0/0/0.png")
    assert response.status == 200


async def test_naip_ten_years_apart_published_on_submit_with_the_later_scene_on_top(
    replicas: Replicas, raster_store: Path
) -> None:
    first, second = await replicas()
    form = submission([NAIP, NAIP_2020], "naip_mosaic", gatewayPublish="true")
    job_id = await submit(second, form)
    polled, streamed = await asyncio.gather(long_polls(first, job_id), events(second, job_id))
    assert polled[-1]["jobStatus"] == "esriJobSucceeded", polled
    assert [job["jobStatus"] for _, job in streamed][-1] == "esriJobSucceeded", streamed
    response = await first.get(f"{TASK}/jobs/{job_id}/results/result", headers=ALICE)
    value = (await response.json())["value"]
    assert value["url"] == str(first.make_url(f"{HOSTED}/naip_mosaic/ImageServer"))
    # The replica that took the submission publishes; the other serves it within seconds.
    await eventually(lambda: served(first, "naip_mosaic"))

    # The two scenes cover the same ground: everywhere the 2020 one shows, and where the
    # two years differ clearly (fields sown otherwise, other light) the 2010 one does not.
    inputs = [raster_store / NAIP, raster_store / NAIP_2020]
    inside = apart = 0
    for tile in covering_tiles(inputs, 14):
        pixels = await fetch_tile(first, "naip_mosaic", tile)
        expected, footprints, on_top = expected_tile(tile, inputs, None)
        where = probes(inner(footprints[0] & footprints[1]))
        if where.sum() < 20:
            continue
        assert (on_top[where] == 1).all()
        inside += int(where.sum())
        assert (pixels[where][:, 3] == 255).all()
        assert close_fraction(pixels[..., :3], expected, where) > 0.9, tile
        naip_2010, _, _ = expected_tile(tile, inputs[:1], None)
        differ = np.abs(naip_2010.astype(int) - expected.astype(int)).max(axis=2) > 3 * TOLERANCE
        where &= differ
        if where.sum() < 20:
            continue
        apart += int(where.sum())
        assert close_fraction(pixels[..., :3], expected, where) > 0.9, tile
        assert close_fraction(pixels[..., :3], naip_2010, where) < 0.1, tile
    assert inside >= 500 and apart >= 200, (inside, apart)


# ---------------------------------------------------------------------------------------------
# Failures


@pytest.mark.parametrize(
    ("changes", "wanted"),
    [
        ({"rasterType": '{"rasterTypeName": "Drone"}'}, "'Drone' is not one of"),
        (
            {"inputRasters": "{“uris”: [“/rasterStore/mosaic_cog1.tif”]}"},
            "inputRasters: typographic quotes (“ at character 2) are not JSON quotes",
        ),
    ],
)
async def test_refused_by_the_gateway_before_forwarding(
    replicas: Replicas, changes: dict[str, str], wanted: str
) -> None:
    first, _ = await replicas()
    form = {**submission([COG1], "refused"), **changes}
    response = await first.post(f"{TASK}/submitJob", data=form, headers=ALICE)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == 400 and wanted in error["message"], error


@pytest.mark.parametrize("path", ["/rasterStore/../outside.tif", "/etc/hostname"])
async def test_a_path_outside_the_raster_store_is_refused_upstream(
    replicas: Replicas, path: str
) -> None:
    first, _ = await replicas()
    form = {**submission([COG1], "outside"), "inputRasters": json.dumps({"uris": [path]})}
    response = await first.post(f"{TASK}/submitJob", data=form, headers=ALICE)
    # The ImageServer's ArcGIS error, relayed as ArcGIS relays it (under HTTP 200).
    error = (await response.json())["error"]
    assert error["code"] == 400, error
    assert any(path in detail for detail in error["details"]), error


@pytest.mark.parametrize(
    ("inputs", "wanted"),
    [
        (["missing.tif"], "/rasterStore/missing.tif: no such raster in the raster store"),
        (["link.tif"], "/rasterStore/link.tif is outside the raster store"),
        ([COG1, NAIP], "different band counts (3, 4)"),  # the job fails upstream
    ],
)
async def test_a_failing_job_says_why_and_is_not_published(
    replicas: Replicas, inputs: list[str], wanted: str
) -> None:
    first, second = await replicas()
    job_id = await submit(first, submission(inputs, "failing", gatewayPublish="true"))
    answers = await long_polls(second, job_id)
    assert answers[-1]["jobStatus"] == "esriJobFailed", answers
    response = await first.get(
        f"{TASK}/jobs/{job_id}", params={"returnMessages": "true"}, headers=ALICE
    )
    messages = (await response.json())["messages"]
    errors = [m["description"] for m in messages if m["type"] == "esriJobMessageTypeError"]
    assert any(wanted in error for error in errors), messages
    admin = {"Authorization": f"Bearer {ADMIN}"}
    response = await second.post("/admin/layers", data=json.dumps({"jobId": job_id}), headers=admin)
    assert response.status == 409
    await asyncio.sleep(0.5)  # a follower that would publish has had its turn
    assert not await served(first, "failing") and not await served(second, "failing")


async def test_cancel_through_the_gateway(replicas: Replicas) -> None:
    first, second = await replicas()
    job_id = await submit(first, submission([COG1, COG2], "cancelled", gatewayPublish="true"))
    # Waited on until it executes, then cancelled on the other replica.
    statuses: list[str] = []
    while "esriJobExecuting" not in statuses:
        response = await first.get(f"{TASK}/jobs/{job_id}", params={"wait": "15"}, headers=ALICE)
        statuses.append((await response.json())["jobStatus"])
        assert statuses[-1] not in FINISHED, statuses
    response = await second.post(f"{TASK}/jobs/{job_id}/cancel", data={"f": "json"}, headers=ALICE)
    assert await response.json() == {"jobId": job_id, "jobStatus": "esriJobCancelling"}
    answers = await long_polls(first, job_id)
    assert answers[-1]["jobStatus"] == "esriJobCancelled", answers
    assert "results" not in answers[-1]
    # Finished: cancelling again is the upstream's error, relayed; nothing is published.
    response = await first.get(f"{TASK}/jobs/{job_id}/cancel", headers=ALICE)
    assert (await response.json())["error"]["code"] == 400
    admin = {"Authorization": f"Bearer {ADMIN}"}
    response = await first.post("/admin/layers", data=json.dumps({"jobId": job_id}), headers=admin)
    assert response.status == 409
    assert "esriJobCancelled" in (await response.json())["error"]["message"]
    assert not await served(second, "cancelled")
