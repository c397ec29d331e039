"""CreateImageCollection on the reference ImageServer (docs/arcgis-rest.md §5): real jobs over a
real socket, on real rasters of tests/data copied into a raster store, and the published
service's exportImage compared with rasterio reads of the inputs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from aiohttp.test_utils import TestClient
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points

from imageserver.app import create_app
from imageserver.config import ImageServerConfig, JobsConfig, SecurityConfig, ServiceSpec
from imageserver.gp import RUNNER
from imageserver.jobs import JobStatus
from tests.imageserver.conftest import AiohttpClient, data_path
from tests.imageserver.helpers import SERVICES, pixel_centres, read_tiff, sample_source

GP = f"{SERVICES}/System/RasterAnalysisTools/GPServer"
# The folder the collections are published in, as on ArcGIS Enterprise (§5.2).
HOSTED = f"{SERVICES}/Hosted"
TASK = f"{GP}/CreateImageCollection"
COG1, COG2 = "mosaic_cog1.tif", "mosaic_cog2.tif"  # overlapping Landsat scenes, EPSG:32618
NAIP = "m_4709963_se_14_1_20100629.tif"  # EPSG:26914, 4 bands
RASTER_DATASET = json.dumps({"rasterTypeName": "Raster Dataset"})
FINISHED = {"esriJobSucceeded", "esriJobFailed", "esriJobCancelled"}
INVALID = "Invalid or missing input parameters."
PASSWORD = "test-password-gp"
# The task's documented example (Esri's Create Image Collection page, docs/arcgis-rest.md §5.2),
# with straight quotes.
EXAMPLE_IDS = [
    "1780d648db3545bba8661ad98df824a4",
    "1780d648db3545bba8661ad98df824a5",
    "1780d648db3545bba8661ad98df824a6",
]
EXAMPLE = {
    "inputRasters": '{"itemIds": ["1780d648db3545bba8661ad98df824a4", '
    '"1780d648db3545bba8661ad98df824a5", "1780d648db3545bba8661ad98df824a6"]}',
    "rasterType": '{"rasterTypeName": "UAV/UAS", "rasterTypeParameters": {"GPS": '
    '[["image1.jpg", "10", "2", "300"], ["image2.jpg", "10", "3", "300"], '
    '["image3.jpg", "10", "4", "300"]]}}',
    "imageCollection": '{"serviceProperties": {"name": "uavcollection"}}',
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raster store holding copies of the test rasters (copies: a link out of the store
    would be refused)."""
    folder = tmp_path_factory.mktemp("raster-store")
    for name in (COG1, COG2, NAIP):
        shutil.copyfile(data_path(name), folder / name)
    (folder / "notes.txt").write_text("not a raster\n")
    return folder


def gp_config(
    store: Path,
    work_dir: Path | None,
    *,
    step_delay: float = 0.0,
    max_pixels: int = 100_000_000,
    items: dict[str, Path] | None = None,
    security: SecurityConfig | None = None,
) -> ImageServerConfig:
    """``landsat`` (mosaic_cog1), ``naip`` and ``earth`` (the globe) as services, the store,
    the item registry."""
    services = {
        "landsat": ServiceSpec(name="landsat", path=data_path(COG1)),
        "naip": ServiceSpec(name="naip", path=data_path(NAIP)),
        "earth": ServiceSpec(name="earth", path=data_path("earth_day_UHD.tif")),
    }
    return ImageServerConfig(
        services=services,
        builtin=False,
        raster_store=store,
        items=items or {},
        jobs=JobsConfig(step_delay=step_delay, work_dir=work_dir, max_pixels=max_pixels),
        security=security or SecurityConfig(),
    )


@pytest.fixture
async def gp(aiohttp_client: AiohttpClient, store: Path, tmp_path: Path) -> TestClient:
    return await aiohttp_client(create_app(gp_config(store, tmp_path / "work")))


async def get_json(client: TestClient, path: str, **params: str) -> dict[str, Any]:
    response = await client.get(path, params={"f": "json", **params})
    assert response.status == 200
    return json.loads(await response.text())


async def submit(client: TestClient, **params: str) -> dict[str, Any]:
    """POST submitJob with form fields, as the ArcGIS API for Python does."""
    response = await client.post(f"{TASK}/submitJob", data={"f": "json", **params})
    assert response.status == 200
    return json.loads(await response.text())


def uris(*names: str) -> str:
    return json.dumps({"uris": [f"/rasterStore/{name}" for name in names]})


def collection(name: str) -> str:
    return json.dumps({"serviceProperties": {"name": name}})


async def wait_for_job(
    client: TestClient, job_id: str, timeout: float = 120.0, **params: str
) -> tuple[dict[str, Any], list[str]]:
    """Poll the job until it finishes; return its last JSON (with messages) and every
    distinct status seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await get_json(client, f"{TASK}/jobs/{job_id}", returnMessages="true", **params)
        if not seen or seen[-1] != job["jobStatus"]:
            seen.append(job["jobStatus"])
        if job["jobStatus"] in FINISHED:
            return job, seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s: {seen}")


async def run_job(client: TestClient, **params: str) -> dict[str, Any]:
    """Submit, wait for esriJobSucceeded, return the result's ``value``."""
    submitted = await submit(client, **params)
    assert set(submitted) == {"jobId", "jobStatus"}, submitted
    job, _ = await wait_for_job(client, submitted["jobId"])
    assert job["jobStatus"] == "esriJobSucceeded", job["messages"]
    result = await get_json(client, f"{TASK}/jobs/{submitted['jobId']}/results/result")
    assert result["paramName"] == "result" and result["dataType"] == "GPString"
    return result["value"]


async def native_export(
    client: TestClient, service_url: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The published service's whole raster at its own grid (nearest neighbour, TIFF): pixels,
    mask and profile, as its clients get them."""
    info = await get_json(client, service_url)
    extent = info["extent"]
    width = round((extent["xmax"] - extent["xmin"]) / info["pixelSizeX"])
    height = round((extent["ymax"] - extent["ymin"]) / info["pixelSizeY"])
    bbox = ",".join(repr(extent[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    response = await client.get(
        f"{service_url}/exportImage",
        params={
            "bbox": bbox,
            "size": f"{width},{height}",
            "format": "tiff",
            "interpolation": "RSP_NearestNeighbor",
            "f": "image",
        },
    )
    assert response.status == 200 and response.content_type == "image/tiff"
    return read_tiff(await response.read())


def expected_mosaic(
    profile: dict[str, Any], inputs: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the mosaic of ``inputs`` (bottom first) holds under each pixel centre of the
    ``profile`` grid, read from the inputs with rasterio: values, validity, and the index of
    the input on top (-1 where none)."""
    height, width = profile["height"], profile["width"]
    transform = profile["transform"]
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * width, top + transform.e * height
    xs, ys = pixel_centres((left, bottom, right, top), width, height)
    values = np.zeros((profile["count"], height, width), profile["dtype"])
    valid = np.zeros((height, width), bool)
    top = np.full((height, width), -1)
    for index, name in enumerate(inputs):
        path = data_path(name)
        with rasterio.open(path) as dataset:
            sx, sy = transform_points(profile["crs"], dataset.crs, xs.ravel(), ys.ravel())
            sx, sy = np.reshape(sx, xs.shape), np.reshape(sy, ys.shape)
            source = dataset.bounds
            count = dataset.count
        sampled = sample_source(path, profile["crs"], xs, ys, list(range(count)))
        inside = (sx >= source.left) & (sx < source.right)
        inside &= (sy > source.bottom) & (sy <= source.top)
        # Nodata 0 in every band: a pixel is data when any band is not 0 (GDAL's dataset mask).
        covered = inside & (sampled != 0).any(axis=0)
        values[:, covered] = sampled[:, covered]
        valid |= covered
        top[covered] = index
    return values, valid, top


def neighbour_match(
    data: np.ndarray, profile: dict[str, Any], name: str, where: np.ndarray
) -> tuple[float, float]:
    """Of the pixels ``where``, the fraction equal to the input ``name`` under their centre,
    and the fraction equal to it or to one of its 8 neighbours."""
    height, width = profile["height"], profile["width"]
    transform = profile["transform"]
    left, top = transform.c, transform.f
    xs, ys = pixel_centres(
        (left, top + transform.e * height, left + transform.a * width, top), width, height
    )
    bands = list(range(profile["count"]))
    actual = data[:, where]
    exact = actual == sample_source(data_path(name), profile["crs"], xs, ys, bands)[:, where]
    near = np.zeros(actual.shape[1], bool)
    for shift in [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]:
        shifted = sample_source(data_path(name), profile["crs"], xs, ys, bands, shift)
        near |= (actual == shifted[:, where]).all(axis=0)
    return float(exact.all(axis=0).mean()), float(near.mean())


# ---------------------------------------------------------------------------------------------
# The mosaic


async def test_two_overlapping_scenes_later_on_top(gp: TestClient) -> None:
    value = await run_job(
        gp,
        inputRasters=uris(COG1, COG2),
        imageCollection=collection("stlawrence"),
        rasterType=RASTER_DATASET,
    )
    origin = f"http://{gp.server.host}:{gp.server.port}"
    assert value["url"] == f"{origin}{HOSTED}/stlawrence/ImageServer"
    assert re.fullmatch(r"[0-9a-f]{32}", value["itemId"])
    info = await get_json(gp, f"{HOSTED}/stlawrence/ImageServer")
    assert info["spatialReference"]["latestWkid"] == 32618  # the first input's CRS
    assert (info["bandCount"], info["pixelType"]) == (3, "U16")
    data, mask, profile = await native_export(gp, f"{HOSTED}/stlawrence/ImageServer")
    values, valid, top = expected_mosaic(profile, [COG1, COG2])
    assert (top == 1).sum() > 100_000 and (top == 0).sum() > 100_000
    # mosaic_cog1 is the grid's origin: its pixels are copied as they are.
    only_cog1 = top == 0
    assert (data[:, only_cog1] == values[:, only_cog1]).all()
    # mosaic_cog2 is resampled (nearest) onto that grid, a fraction of a pixel off its own.
    on_cog2 = top == 1
    assert (data[:, on_cog2] == values[:, on_cog2]).all(axis=0).mean() > 0.98
    # In the overlap the later input wins.
    cog1, on_cog1, _ = expected_mosaic(profile, [COG1])
    overlap = on_cog2 & on_cog1 & (cog1 != values).any(axis=0)
    assert overlap.sum() > 50_000
    assert (data[:, overlap] == values[:, overlap]).all(axis=0).mean() > 0.98
    assert ((mask > 0) == valid).mean() > 0.995


async def test_reprojected_to_out_sr_with_the_first_input_on_top(gp: TestClient) -> None:
    value = await run_job(
        gp,
        inputRasters=uris(COG2, COG1),
        imageCollection=collection("stlawrence_3857"),
        rasterType=RASTER_DATASET,
        context=json.dumps({"outSR": {"wkid": 102100}}),
    )
    service = value["url"].removeprefix(f"http://{gp.server.host}:{gp.server.port}")
    info = await get_json(gp, service)
    assert info["spatialReference"] == {"wkid": 102100, "latestWkid": 3857}
    data, mask, profile = await native_export(gp, service)
    assert profile["crs"] == CRS.from_epsg(3857)
    _, valid, top = expected_mosaic(profile, [COG2, COG1])
    assert ((mask > 0) == valid).mean() > 0.99
    # Warped with nearest neighbour: GDAL approximates the transformation to a fraction of a
    # pixel, so pixels on source pixel edges may take their neighbour.
    for index, name in enumerate([COG2, COG1]):
        where = (top == index) & (mask > 0)
        assert where.sum() > 50_000
        exact, near = neighbour_match(data, profile, name, where)
        assert exact > 0.9 and near > 0.995, (name, exact, near)


async def test_naip_reprojected_to_wgs84_keeps_its_four_bands(gp: TestClient) -> None:
    value = await run_job(
        gp,
        inputRasters=uris(NAIP),
        imageCollection=collection("naip_4326"),
        rasterType=json.dumps({"rasterTypeName": "Aerial"}),
        context=json.dumps({"outSR": {"wkid": 4326}}),
    )
    service = value["url"].removeprefix(f"http://{gp.server.host}:{gp.server.port}")
    info = await get_json(gp, service)
    assert (info["bandCount"], info["pixelType"]) == (4, "U8")
    data, mask, profile = await native_export(gp, service)
    _, valid, _ = expected_mosaic(profile, [NAIP])
    assert valid.mean() > 0.9 and ((mask > 0) == valid).mean() > 0.99
    exact, near = neighbour_match(data, profile, NAIP, valid & (mask > 0))
    assert exact > 0.9 and near > 0.995, (exact, near)


async def test_urls_of_own_services_by_reference(gp: TestClient) -> None:
    origin = f"http://{gp.server.host}:{gp.server.port}"
    inputs = {"urls": [f"{origin}{SERVICES}/landsat/ImageServer"], "byref": True}
    value = await run_job(
        gp,
        inputRasters=json.dumps(inputs),
        imageCollection=collection("landsat_copy"),
        rasterType=RASTER_DATASET,
    )
    assert value["url"] == f"{origin}{HOSTED}/landsat_copy/ImageServer"
    data, mask, profile = await native_export(gp, value["url"].removeprefix(origin))
    with rasterio.open(data_path(COG1)) as source:
        assert (profile["width"], profile["height"]) == (source.width, source.height)
        assert (data == source.read()).all()
        assert ((mask > 0) == (source.dataset_mask() > 0)).all()
    # A collection is an input like any service of this server, by its Hosted URL; its name
    # is taken in the Hosted folder (while "landsat" at the root does not take it there).
    again = {"inputRasters": json.dumps({"urls": [value["url"]]}), "rasterType": RASTER_DATASET}
    copy = await run_job(gp, **again, imageCollection=collection("landsat"))
    data, _, _ = await native_export(gp, copy["url"].removeprefix(origin))
    with rasterio.open(data_path(COG1)) as source:
        assert (data == source.read()).all()
    refused = await submit(gp, **again, imageCollection=collection("landsat_copy"))
    assert refused["error"]["details"] == [
        "imageCollection: a service named Hosted/landsat_copy exists; this server only "
        "creates new image collections"
    ]
    catalog = await get_json(gp, SERVICES)
    assert "Hosted/landsat" not in [s["name"] for s in catalog["services"]]
    folder = await get_json(gp, HOSTED)
    assert [s["name"] for s in folder["services"]] == ["Hosted/landsat", "Hosted/landsat_copy"]
    # exportImage?f=json writes its image in the collection's own output folder.
    export = await get_json(gp, f"{HOSTED}/landsat/ImageServer/exportImage", size="64,64")
    href = export["href"].removeprefix(origin)
    assert href.startswith("/arcgis/rest/directories/arcgisoutput/Hosted/landsat_ImageServer/")
    response = await gp.get(href)
    assert response.status == 200 and response.content_type == "image/png"


async def test_the_documented_example_runs_through_the_item_registry(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    # Three items: the two scenes, and the first again, so that it ends up on top.
    items = dict(zip(EXAMPLE_IDS, [data_path(COG1), data_path(COG2), data_path(COG1)], strict=True))
    client = await aiohttp_client(create_app(gp_config(store, tmp_path, items=items)))
    # The page's example is a GET with the JSON values in the query string.
    response = await client.get(f"{TASK}/submitJob", params={**EXAMPLE, "f": "json"})
    submitted = json.loads(await response.text())
    job, _ = await wait_for_job(client, submitted["jobId"])
    assert job["jobStatus"] == "esriJobSucceeded", job["messages"]
    descriptions = [m["description"] for m in job["messages"]]
    assert any("Raster type UAV/UAS" in d and "recorded" in d for d in descriptions)
    recorded = await get_json(client, f"{TASK}/jobs/{submitted['jobId']}/inputs/rasterType")
    assert recorded == {
        "paramName": "rasterType",
        "dataType": "GPString",
        "value": json.loads(EXAMPLE["rasterType"]),
    }
    info = await get_json(client, f"{HOSTED}/uavcollection/ImageServer")
    assert "UAV/UAS" in info["description"]
    data, mask, profile = await native_export(client, f"{HOSTED}/uavcollection/ImageServer")
    values, valid, top = expected_mosaic(profile, [COG1, COG2, COG1])
    assert ((mask > 0) == valid).mean() > 0.995
    on_cog1 = top == 2
    assert (data[:, on_cog1] == values[:, on_cog1]).all()  # cog1 on top, copied unchanged
    on_cog2 = top == 1  # where cog1 has no data
    assert on_cog2.sum() > 100_000
    assert (data[:, on_cog2] == values[:, on_cog2]).all(axis=0).mean() > 0.98


# ---------------------------------------------------------------------------------------------
# The job lifecycle


async def test_statuses_go_by_in_order_with_progress_and_messages(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(gp_config(store, tmp_path, step_delay=0.4)))
    submitted = await submit(
        client, inputRasters=uris(COG1), imageCollection=collection("one"), rasterType="Landsat 8"
    )
    assert submitted["jobStatus"] == "esriJobSubmitted"
    assert re.fullmatch(r"j[0-9a-f]{32}", submitted["jobId"])
    percents: list[int] = []
    seen: list[str] = []
    while not seen or seen[-1] not in FINISHED:
        job = await get_json(client, f"{TASK}/jobs/{submitted['jobId']}")
        if not seen or seen[-1] != job["jobStatus"]:
            seen.append(job["jobStatus"])
        if "progress" in job:
            assert job["jobStatus"] == "esriJobExecuting"
            percents.append(job["progress"]["percent"])
        assert job["messages"] == []  # without returnMessages=true
        await asyncio.sleep(0.05)
    assert seen == ["esriJobSubmitted", "esriJobWaiting", "esriJobExecuting", "esriJobSucceeded"]
    assert percents == sorted(percents) and percents[0] < percents[-1] <= 100
    job = await get_json(client, f"{TASK}/jobs/{submitted['jobId']}", returnMessages="true")
    assert job["results"] == {"result": {"paramUrl": "results/result"}}
    assert job["inputs"] == {
        name: {"paramUrl": f"inputs/{name}"}
        for name in ("inputRasters", "imageCollection", "rasterType")
    }
    descriptions = [m["description"] for m in job["messages"]]
    assert descriptions[0] == "Submitted."
    assert any(d.startswith("Start Time: ") for d in descriptions)
    assert f"Reading input 1 of 1: /rasterStore/{COG1}" in descriptions
    assert descriptions[-1].startswith("Succeeded")
    assert {m["type"] for m in job["messages"]} == {"esriJobMessageTypeInformative"}


async def test_cancel_while_executing(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    client = await aiohttp_client(create_app(gp_config(store, work, step_delay=0.3)))
    submitted = await submit(
        client,
        inputRasters=uris(COG1, COG2),
        imageCollection=collection("cancelled"),
        rasterType=RASTER_DATASET,
    )
    job_url = f"{TASK}/jobs/{submitted['jobId']}"
    while (await get_json(client, job_url))["jobStatus"] != "esriJobExecuting":
        await asyncio.sleep(0.02)
    answer = await get_json(client, f"{job_url}/cancel")
    assert answer == {"jobId": submitted["jobId"], "jobStatus": "esriJobCancelling"}
    job, seen = await wait_for_job(client, submitted["jobId"])
    assert seen[-1] == "esriJobCancelled" and set(seen) <= {
        "esriJobCancelling",
        "esriJobCancelled",
    }
    assert job["messages"][-1]["description"] == "Cancelled."
    assert "results" not in job
    # Nothing was published, no file is left, and the job cannot be cancelled again.
    missing = await get_json(client, f"{HOSTED}/cancelled/ImageServer")
    assert missing["error"]["code"] == 404
    assert list(work.iterdir()) == []
    again = await get_json(client, f"{job_url}/cancel")
    assert again["error"]["message"] == INVALID
    assert again["error"]["details"] == [
        f"Job {submitted['jobId']} cannot be cancelled: it has finished"
    ]
    result = await get_json(client, f"{job_url}/results/result")
    assert result["error"]["code"] == 400


async def test_a_job_waits_for_the_running_one_and_can_be_cancelled_while_waiting(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(gp_config(store, tmp_path, step_delay=0.2)))
    params = {"inputRasters": uris(COG1), "rasterType": RASTER_DATASET}
    first = await submit(client, **params, imageCollection=collection("first"))
    second = await submit(client, **params, imageCollection=collection("second"))
    while (await get_json(client, f"{TASK}/jobs/{first['jobId']}"))["jobStatus"] != (
        "esriJobExecuting"
    ):
        await asyncio.sleep(0.02)
    second_url = f"{TASK}/jobs/{second['jobId']}"
    while (await get_json(client, second_url))["jobStatus"] != "esriJobWaiting":
        await asyncio.sleep(0.02)
    assert (await get_json(client, f"{second_url}/cancel"))["jobStatus"] == "esriJobCancelling"
    job, _ = await wait_for_job(client, second["jobId"])
    assert job["jobStatus"] == "esriJobCancelled"
    job, _ = await wait_for_job(client, first["jobId"])
    assert job["jobStatus"] == "esriJobSucceeded"


async def test_stopping_the_server_cancels_its_jobs_and_removes_the_work_folder(
    aiohttp_client: AiohttpClient, store: Path
) -> None:
    app = create_app(gp_config(store, None, step_delay=0.3))
    client = await aiohttp_client(app)
    runner = app[RUNNER]
    assert runner.work_dir.is_dir()  # a temporary folder: jobs.work_dir is not set
    params = {"inputRasters": uris(COG1, COG2), "rasterType": RASTER_DATASET}
    running = await submit(client, **params, imageCollection=collection("running"))
    waiting = await submit(client, **params, imageCollection=collection("waiting"))
    while runner.jobs[running["jobId"]].status is not JobStatus.EXECUTING:
        await asyncio.sleep(0.02)
    # Bounded: the worker stops at its next step, well within the step delay.
    await asyncio.wait_for(client.close(), timeout=10)
    assert runner.jobs[running["jobId"]].status is JobStatus.CANCELLED
    assert runner.jobs[waiting["jobId"]].status is JobStatus.CANCELLED
    assert not runner.work_dir.exists()


async def test_a_submitted_job_cannot_be_cancelled_yet(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    # ArcGIS refuses to cancel a job that is only submitted (docs/arcgis-rest.md §5.1).
    client = await aiohttp_client(create_app(gp_config(store, tmp_path, step_delay=0.5)))
    submitted = await submit(
        client, inputRasters=uris(COG1), imageCollection=collection("x"), rasterType="Aerial"
    )
    answer = await get_json(client, f"{TASK}/jobs/{submitted['jobId']}/cancel")
    assert answer["error"]["details"] == [
        f"Job {submitted['jobId']} cannot be cancelled: it is esriJobSubmitted"
    ]


# ---------------------------------------------------------------------------------------------
# Refused on submit, and failures while running


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"inputRasters": json.dumps({"uris": ["/etc/passwd"]})}, "outside the raster store"),
        ({"inputRasters": json.dumps({"uris": [f"/data/{COG1}"]})}, "outside the raster store"),
        (
            {"inputRasters": json.dumps({"uris": [f"/rasterStore/../{COG1}"]})},
            "'..' and '\\' are not allowed",
        ),
        ({"inputRasters": json.dumps({"uris": ["../../etc/passwd"]})}, "'..' and '\\'"),
        ({"inputRasters": json.dumps({"uris": ["s3://bucket/a.tif"]})}, "only paths in the"),
        ({"inputRasters": json.dumps({"itemIds": ["nope"]})}, "unknown item nope"),
        ({"inputRasters": json.dumps({"folderId": "abc"})}, "folderId is not supported"),
        (
            {"inputRasters": json.dumps({"urls": ["http://elsewhere/x/ImageServer"]})},
            "is not an ImageServer of this server",
        ),
        ({"rasterType": json.dumps({"rasterTypeName": "Holiday Photos"})}, "unknown rasterType"),
        ({"context": json.dumps({"outSR": {"wkid": 999999}})}, "outSR: unknown spatial"),
        ({"context": json.dumps({"outSR": "UTM"})}, "outSR must be spatial-reference JSON"),
        ({"imageCollection": collection("a/b")}, "imageCollection needs serviceProperties"),
        ({"inputRasters": '{"uris": [}'}, "inputRasters: invalid JSON"),
        (
            # As pasted from Esri's page (docs/arcgis-rest.md §5.2).
            {"inputRasters": "{\u201curis\u201d: [\u201c/rasterStore/mosaic_cog1.tif\u201d]}"},
            "inputRasters: typographic quotes",
        ),
        (
            {"imageCollection": "{\u201cserviceProperties\u201d: {}}"},
            "imageCollection: typographic quotes",
        ),
        ({"inputRasters": None}, "inputRasters is required"),
    ],
)
async def test_bad_parameters_are_refused_on_submit(
    gp: TestClient, params: dict[str, str | None], detail: str
) -> None:
    fields = {
        "inputRasters": uris(COG1),
        "imageCollection": collection("refused"),
        "rasterType": RASTER_DATASET,
        **params,
    }
    answer = await submit(gp, **{k: v for k, v in fields.items() if v is not None})
    assert answer["error"]["code"] == 400
    assert answer["error"]["message"] == INVALID
    assert any(detail in d for d in answer["error"]["details"]), answer


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        (uris("missing.tif"), "/rasterStore/missing.tif: no such raster in the raster store"),
        (
            uris("link.tif"),
            "/rasterStore/link.tif is outside the raster store (a link leads out of it)",
        ),
        (uris("notes.txt"), "/rasterStore/notes.txt: not a raster this server can read"),
        (
            uris(COG1, NAIP),
            "the inputs have different band counts (3, 4); an image collection needs the same "
            "bands in every raster",
        ),
    ],
)
async def test_failures_found_while_running_say_why(
    gp: TestClient, store: Path, tmp_path: Path, inputs: str, reason: str
) -> None:
    link = store / "link.tif"
    if not link.is_symlink():
        link.symlink_to(data_path(COG1))  # a raster, but outside the store
    submitted = await submit(
        gp, inputRasters=inputs, imageCollection=collection("failed"), rasterType=RASTER_DATASET
    )
    job, seen = await wait_for_job(gp, submitted["jobId"])
    assert seen[-1] == "esriJobFailed"
    errors = [m for m in job["messages"] if m["type"] == "esriJobMessageTypeError"]
    assert [m["description"] for m in errors] == [
        reason,
        "Failed to execute (CreateImageCollection).",
    ]
    assert str(store) not in json.dumps(job)  # the server's own paths stay on the server
    missing = await get_json(gp, f"{HOSTED}/failed/ImageServer")
    assert missing["error"]["code"] == 404


async def test_a_mosaic_larger_than_max_pixels_fails(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(gp_config(store, tmp_path, max_pixels=100_000)))
    submitted = await submit(
        client, inputRasters=uris(COG1), imageCollection=collection("big"), rasterType="Aerial"
    )
    job, _ = await wait_for_job(client, submitted["jobId"])
    assert job["jobStatus"] == "esriJobFailed"
    assert job["messages"][-2]["description"] == (
        "the mosaic would be 779 x 790 pixels, more than the 100000 this server allows "
        "(jobs.max_pixels)"
    )


async def test_inputs_that_cannot_be_reprojected_fail(gp: TestClient) -> None:
    # Half of the globe has no place in an orthographic view of the North Pole.
    submitted = await submit(
        gp,
        inputRasters=json.dumps({"urls": [f"{SERVICES}/earth/ImageServer"]}),
        imageCollection=collection("nowhere"),
        rasterType=RASTER_DATASET,
        context=json.dumps({"outSR": {"wkid": 102035}}),
    )
    job, _ = await wait_for_job(gp, submitted["jobId"])
    assert job["jobStatus"] == "esriJobFailed"
    assert job["messages"][-2] == {
        "type": "esriJobMessageTypeError",
        "description": (f"{SERVICES}/earth/ImageServer cannot be reprojected to ESRI:102035"),
    }


# ---------------------------------------------------------------------------------------------
# The REST resources and security


async def test_service_task_catalog_and_folder_json(gp: TestClient) -> None:
    service = await get_json(gp, GP)
    assert service["tasks"] == ["CreateImageCollection"]
    assert service["executionType"] == "esriExecutionTypeAsynchronous"
    task = await get_json(gp, TASK)
    assert [p["name"] for p in task["parameters"]] == [
        "inputRasters",
        "imageCollection",
        "rasterType",
        "context",
        "result",
    ]
    assert (await get_json(gp, SERVICES))["folders"] == ["Hosted", "System"]
    assert (await get_json(gp, HOSTED))["services"] == []
    folder = await get_json(gp, f"{SERVICES}/System")
    assert folder["services"] == [{"name": "System/RasterAnalysisTools", "type": "GPServer"}]
    pretty = await gp.get(GP, params={"f": "pjson"})
    assert "\n  " in await pretty.text()
    unknown = await get_json(gp, f"{GP}/GenerateRaster/submitJob")
    assert unknown["error"]["code"] == 404
    no_job = await get_json(gp, f"{TASK}/jobs/j{'0' * 32}")
    assert no_job["error"]["details"] == [f"Job j{'0' * 32} not found"]


async def test_token_required_when_the_gp_service_is_secured(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    security = SecurityConfig(
        enabled=True,
        users={"alice": PASSWORD},
        secured_services=("System/RasterAnalysisTools",),
    )
    client = await aiohttp_client(create_app(gp_config(store, tmp_path, security=security)))
    fields = {
        "inputRasters": uris(COG1),
        "imageCollection": collection("private"),
        "rasterType": RASTER_DATASET,
    }
    refused = await submit(client, **fields)
    assert refused["error"]["code"] == 499
    assert (await get_json(client, f"{SERVICES}/System"))["services"] == []
    response = await client.post(
        "/arcgis/tokens/generateToken",
        data={"username": "alice", "password": PASSWORD, "f": "json"},
    )
    token = json.loads(await response.text())["token"]
    submitted = await submit(client, **fields, token=token)
    job_id = submitted["jobId"]
    assert (await get_json(client, f"{TASK}/jobs/{job_id}"))["error"]["code"] == 499
    job, _ = await wait_for_job(client, job_id, token=token)
    assert job["jobStatus"] == "esriJobSucceeded"
    # The collection made by a secured GP service is secured too.
    private = f"{HOSTED}/private/ImageServer"
    assert (await get_json(client, private))["error"]["code"] == 499
    assert (await get_json(client, private, token=token))["name"] == "Hosted/private"
    # Listed in its folder only to a valid token.
    assert (await get_json(client, HOSTED))["services"] == []
    folder = await get_json(client, HOSTED, token=token)
    assert folder["services"] == [{"name": "Hosted/private", "type": "ImageServer"}]


async def test_a_secured_service_given_by_url_needs_its_token(
    aiohttp_client: AiohttpClient, store: Path, tmp_path: Path
) -> None:
    security = SecurityConfig(enabled=True, users={"alice": PASSWORD}, secured_services=("naip",))
    client = await aiohttp_client(create_app(gp_config(store, tmp_path, security=security)))
    answer = await submit(
        client,
        inputRasters=json.dumps({"urls": [f"{SERVICES}/naip/ImageServer"]}),
        imageCollection=collection("leak"),
        rasterType=RASTER_DATASET,
    )
    assert answer["error"]["code"] == 499
