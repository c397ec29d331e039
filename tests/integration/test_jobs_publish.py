"""Publishing a succeeded CreateImageCollection job as a tile layer: on submit
(``gatewayPublish=true``) or later through the admin API, served by a second replica within
seconds and by a gateway started afterwards (the layers live in Redis), listed in every
document, and unpublished again. The scripted GP upstream (``gp_upstream``) also serves the
ImageServer the job made, behind the same tokens."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.services.admin import ADMIN_TOKEN_ENV
from tests.integration.gp_upstream import (
    ALICE,
    EXPORT_COLOUR,
    GP,
    PASSWORD,
    SUBMISSION,
    TASK,
    Replicas,
    config_for,
    submit,
)

ADMIN = "admin-token-0123456789abcdef"
AUTHORISED = {"Authorization": f"Bearer {ADMIN}"}
LAYER = "landsat_mosaic"


async def _served(client: TestClient, name: str) -> bool:
    response = await client.get("/layers.json")
    return name in [layer["name"] for layer in (await response.json())["layers"]]


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Wait until ``check()`` holds, at most ``seconds`` (a bound, not a speed claim)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.05)


async def _assert_listed_everywhere(client: TestClient, name: str) -> None:
    response = await client.get(f"/tiles/{name}/0/0/0.png")
    assert response.status == 200
    with Image.open(io.BytesIO(await response.read())) as image:
        pixel = image.convert("RGBA").getpixel((128, 128))
    assert pixel == (*EXPORT_COLOUR, 255)
    response = await client.get(f"/tiles/{name}/tilejson.json")
    assert response.status == 200
    assert (await response.json())["tiles"][0].endswith(f"/tiles/{name}/{{z}}/{{x}}/{{y}}.png")
    response = await client.get("/wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    assert f"<ows:Identifier>{name}</ows:Identifier>" in await response.text()
    response = await client.get("/ogcapi/collections", params={"f": "json"})
    assert name in [c["id"] for c in (await response.json())["collections"]]


async def _assert_gone(client: TestClient, name: str) -> None:
    assert not await _served(client, name)
    assert (await client.get(f"/tiles/{name}/0/0/0.png")).status == 404
    response = await client.get("/wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    assert f"<ows:Identifier>{name}</ows:Identifier>" not in await response.text()
    response = await client.get("/ogcapi/collections", params={"f": "json"})
    assert name not in [c["id"] for c in (await response.json())["collections"]]


async def test_published_on_submit_served_by_every_replica_and_after_a_restart(
    gp: GP,
    replicas: Replicas,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    first, second = await replicas()
    response = await first.post(
        f"{TASK}/submitJob", data={**SUBMISSION, "gatewayPublish": "true"}, headers=ALICE
    )
    job_id = (await response.json())["jobId"]
    # Both replicas list their documents before the layer exists (so they are cached).
    for client in (first, second):
        assert not await _served(client, LAYER)
        await client.get("/wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
        await client.get("/ogcapi/collections", params={"f": "json"})
    gp.move(job_id, "esriJobSucceeded")
    # Published by the replica that took the submission, served by the other within seconds.
    await _eventually(lambda: _served(second, LAYER))
    await _assert_listed_everywhere(second, LAYER)
    await _assert_listed_everywhere(first, LAYER)
    assert gp.exports  # the tiles came from the job's ImageServer, with the gateway's token

    # A gateway started afterwards serves it from the start.
    config = config_for(gp, redis_url, key_prefix)
    third = await aiohttp_client(create_app(config))
    await _assert_listed_everywhere(third, LAYER)
    response = await third.get("/admin/layers", headers=AUTHORISED)
    assert [layer["name"] for layer in (await response.json())["layers"]] == [LAYER]

    # Unpublished on one replica, gone from every other within seconds.
    response = await second.delete(f"/admin/layers/{LAYER}", headers=AUTHORISED)
    assert response.status == 200
    await _assert_gone(second, LAYER)
    await _eventually(lambda: _not(_served(first, LAYER)))
    await _assert_gone(first, LAYER)
    await _eventually(lambda: _not(_served(third, LAYER)))


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_published_through_the_admin_api(
    gp: GP, replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    first, second = await replicas()
    job_id = await submit(first)

    async def publish(body: object, headers: dict[str, str] = AUTHORISED) -> tuple[int, dict]:
        response = await second.post("/admin/layers", data=json.dumps(body), headers=headers)
        return response.status, await response.json()

    assert (await publish({"jobId": job_id}, {}))[0] == 401
    status, body = await publish({"jobId": job_id})
    assert status == 409 and "esriJobSubmitted" in body["error"]["message"]
    gp.move(job_id, "esriJobSucceeded")
    assert (await publish({"jobId": "j-unknown"}))[0] == 404
    assert (await publish({"jobId": job_id, "name": "base"}))[0] == 409
    assert (await publish({"jobId": job_id, "name": "no/slash"}))[0] == 400
    assert (await publish({"name": "x"}))[0] == 400
    status, body = await publish({"jobId": job_id, "name": "mosaic2024"})
    assert status == 201 and body["name"] == "mosaic2024" and body["jobId"] == job_id
    assert "http" not in json.dumps(body)  # no upstream URL
    await _assert_listed_everywhere(second, "mosaic2024")
    await _eventually(lambda: _served(first, "mosaic2024"))
    response = await first.delete("/admin/layers/base", headers=AUTHORISED)
    assert response.status == 409
    response = await first.delete("/admin/layers/nothing", headers=AUTHORISED)
    assert response.status == 404


async def test_a_failed_job_is_not_published(
    gp: GP, replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TG_TEST_GP_PASSWORD", PASSWORD)
    first, second = await replicas()
    response = await first.post(
        f"{TASK}/submitJob", data={**SUBMISSION, "gatewayPublish": "true"}, headers=ALICE
    )
    job_id = (await response.json())["jobId"]
    gp.move(job_id, "esriJobFailed")
    response = await second.get(f"{TASK}/jobs/{job_id}", params={"wait": "5"}, headers=ALICE)
    assert (await response.json())["jobStatus"] == "esriJobFailed"
    await asyncio.sleep(0.5)
    assert not await _served(first, LAYER) and not await _served(second, LAYER)
