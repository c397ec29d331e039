"""A scripted ArcGIS GP upstream on a real socket for the jobs tests: CreateImageCollection
with the job JSON shapes and lifecycle of arcgis-rest.md section 5.1 (the job moves only when
a test moves it, ``GP.move``), a generateToken whose tokens a test can expire, and the
ImageServer a succeeded job made (service info and exportImage), all behind tokens."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from gateway.app import create_app
from gateway.config import parse_config

TASK_PATH = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/CreateImageCollection"
TASK = TASK_PATH  # the gateway serves the task at the same path
PASSWORD = "gp-password-0123456789"
ALICE_KEY, BOB_KEY = "alice-key-0123456789abcdef", "bob-key-fedcba9876543210"
INPUTS = '{"uris": ["/rasterStore/mosaic_cog1.tif", "/rasterStore/mosaic_cog2.tif"]}'
RASTER_TYPE = '{"rasterTypeName": "Raster Dataset"}'
NEW_COLLECTION = '{"serviceProperties": {"name": "landsat_mosaic"}}'
CONTEXT = '{"outSR": {"wkid": 3857}}'
# The colour of every image the published ImageServer exports.
EXPORT_COLOUR = (30, 160, 90)
SUBMISSION = {
    "inputRasters": INPUTS,
    "imageCollection": NEW_COLLECTION,
    "rasterType": RASTER_TYPE,
    "context": CONTEXT,
    "f": "json",
}


@dataclass
class Job:
    status: str = "esriJobSubmitted"
    messages: list[dict[str, str]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class GP:
    """The scripted GP upstream: ``jobs`` by id, ``status_calls`` (job id of each status
    request), the ``tokens`` it accepts now and how many it issued (``issued``)."""

    server: TestServer | None = None
    jobs: dict[str, Job] = field(default_factory=dict)
    status_calls: list[str] = field(default_factory=list)
    submissions: list[dict[str, str]] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    issued: int = 0
    seen_tokens: list[str] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        assert self.server is not None
        return f"http://localhost:{self.server.port}"

    def move(self, job_id: str, status: str) -> None:
        job = self.jobs[job_id]
        job.status = status
        job.messages.append({"type": "esriJobMessageTypeInformative", "description": status})

    def document(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        document: dict[str, Any] = {
            "jobId": job_id,
            "jobStatus": job.status,
            "messages": list(job.messages),
            "inputs": {"inputRasters": {"paramUrl": "inputs/inputRasters"}},
        }
        if job.status == "esriJobSucceeded":
            document["results"] = {"result": {"paramUrl": "results/result"}}
        return document


def _token_ok(gp: GP, form: dict[str, str]) -> bool:
    token = form.get("token", "")
    gp.seen_tokens.append(token)
    return token in gp.tokens


async def _gp_app(gp: GP) -> web.Application:
    app = web.Application()

    async def generate_token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        if form.get("password") != PASSWORD:
            return web.json_response({"error": {"code": 400, "message": "bad login"}})
        gp.issued += 1
        token = f"gp-token-{gp.issued}-{uuid.uuid4().hex}"
        gp.tokens.add(token)
        expires = int((time.time() + 3600) * 1000)
        return web.json_response({"token": token, "expires": expires})

    async def task(request: web.Request) -> web.Response:
        form = dict(await request.post())
        if not _token_ok(gp, form):
            return web.json_response({"error": {"code": 498, "message": "Invalid Token"}})
        tail = request.match_info["tail"]
        parts = [part for part in tail.split("/") if part]
        if not parts:
            return web.json_response(
                {
                    "name": "CreateImageCollection",
                    "executionType": "esriExecutionTypeAsynchronous",
                    "helpUrl": f"{gp.root}{TASK_PATH}/help?token={form['token']}",
                }
            )
        if parts == ["submitJob"]:
            job_id = f"j{uuid.uuid4().hex}"
            gp.jobs[job_id] = Job(params=form)
            gp.submissions.append(form)
            return web.json_response({"jobId": job_id, "jobStatus": "esriJobSubmitted"})
        if parts[0] != "jobs" or parts[1] not in gp.jobs:
            return web.json_response(
                {"error": {"code": 400, "message": "Invalid or missing input parameters."}}
            )
        job_id = parts[1]
        if len(parts) == 2:
            gp.status_calls.append(job_id)
            return web.json_response(gp.document(job_id))
        if parts[2:] == ["results", "result"]:
            name = json.loads(gp.jobs[job_id].params["imageCollection"])["serviceProperties"]
            service = f"{gp.root}/arcgis/rest/services/Hosted/{name['name']}/ImageServer"
            return web.json_response(
                {
                    "paramName": "result",
                    "dataType": "GPString",
                    "value": {"url": f"{service}?token={form['token']}", "itemId": "i1"},
                }
            )
        if parts[2:] == ["cancel"]:
            if gp.jobs[job_id].status in ("esriJobSucceeded", "esriJobFailed", "esriJobCancelled"):
                return web.json_response(
                    {"error": {"code": 400, "message": "Invalid or missing input parameters."}}
                )
            gp.move(job_id, "esriJobCancelling")
            return web.json_response({"jobId": job_id, "jobStatus": "esriJobCancelling"})
        return web.json_response({"error": {"code": 404, "message": "not found"}})

    async def image_service(request: web.Request) -> web.Response:
        if request.query.get("token") not in gp.tokens:
            return web.json_response({"error": {"code": 499, "message": "Token Required"}})
        # Web Mercator around the Bahamas, where the Landsat fixtures lie.
        extent = {
            "xmin": -8600000.0,
            "ymin": 2600000.0,
            "xmax": -8500000.0,
            "ymax": 2700000.0,
            "spatialReference": {"wkid": 3857},
        }
        return web.json_response(
            {
                "name": request.match_info["name"],
                "extent": extent,
                "fullExtent": extent,
                "maxImageWidth": 4096,
                "maxImageHeight": 4096,
            }
        )

    async def export_image(request: web.Request) -> web.Response:
        if request.query.get("token") not in gp.tokens:
            return web.json_response({"error": {"code": 499, "message": "Token Required"}})
        gp.exports.append(request.match_info["name"])
        width, height = (int(n) for n in request.query["size"].split(","))
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), EXPORT_COLOUR).save(buffer, "PNG")
        return web.Response(body=buffer.getvalue(), content_type="image/png")

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_post("/arcgis/tokens/generateToken", generate_token)
    app.router.add_route("*", TASK_PATH + "{tail:.*}", task)
    hosted = "/arcgis/rest/services/Hosted/{name}/ImageServer"
    app.router.add_get(hosted, image_service)
    app.router.add_get(hosted + "/exportImage", export_image)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


@pytest.fixture
async def gp(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> GP:
    upstream = GP()
    upstream.server = await aiohttp_server(await _gp_app(upstream))
    return upstream


def config_for(gp: GP, redis_url: str | None, key_prefix: str, **jobs: Any) -> Any:
    digest = {
        name: hashlib.sha256(key.encode()).hexdigest()
        for name, key in (("alice", ALICE_KEY), ("bob", BOB_KEY))
    }
    return parse_config(
        {
            "server": {"startup_timeout": 2, "upstream_timeout": 5, "trust_proxy": True},
            "cache": (
                {"redis_url": redis_url, "prefix": key_prefix, "purge_poll": 0.2}
                if redis_url
                else {}
            ),
            "credentials": {
                "gp": {
                    "type": "server",
                    "url": f"{gp.root}/arcgis/tokens/generateToken",
                    "username": "alice",
                    "password_env": "TG_TEST_GP_PASSWORD",
                }
            },
            "access": {
                "api_keys": digest,
                "groups": {"proxy": {"authenticate": ["api_key"], "anonymous": True}},
            },
            "layers": {"base": {"url": f"{gp.root}/arcgis/rest/services/base/ImageServer"}},
            "proxy": {
                "services": [
                    {
                        "url": f"{gp.root}/arcgis/rest/services",
                        "credentials": "gp",
                        "allow": ["Hosted", "System/RasterAnalysisTools/GPServer"],
                    }
                ]
            },
            "jobs": {
                "service": {
                    "url": f"{gp.root}/arcgis/rest/services/System/RasterAnalysisTools/GPServer",
                    "credentials": "gp",
                },
                "poll_min": 0.1,
                "poll_max": 0.2,
                "max_wait": 10,
                **jobs,
            },
        }
    )


Replicas = Callable[..., Awaitable[tuple[TestClient, TestClient]]]


@pytest.fixture
async def replicas(
    gp: GP,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
) -> Replicas:
    """``await replicas(**jobs)``: two gateway apps sharing one Redis (and key prefix)."""
    monkeypatch.setenv("TG_TEST_GP_PASSWORD", PASSWORD)

    async def make(**jobs: Any) -> tuple[TestClient, TestClient]:
        config = config_for(gp, redis_url, key_prefix, **jobs)
        return await aiohttp_client(create_app(config)), await aiohttp_client(create_app(config))

    return make


ALICE = {"X-API-Key": ALICE_KEY}
BOB = {"X-API-Key": BOB_KEY}


async def submit(client: TestClient, headers: dict[str, str] = ALICE) -> str:
    response = await client.post(f"{TASK}/submitJob", data=SUBMISSION, headers=headers)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["jobStatus"] == "esriJobSubmitted"
    return str(body["jobId"])
