"""CreateImageCollection jobs through the gateway against a scripted GP upstream on a real
socket (the job JSON shapes and lifecycle of arcgis-rest.md section 5.1), with a real Redis
shared by two gateway apps as two replicas: submit, long poll, Server-Sent Events, results,
cancel, owner isolation, one poller for many waiters, and a token that expires mid-job.

The upstream's job moves only when a test moves it (``GP.move``), so every wait below ends
on a change the test made, never on a clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from gateway.app import create_app
from tests.integration.gp_upstream import (
    ALICE,
    BOB,
    GP,
    INPUTS,
    PASSWORD,
    SUBMISSION,
    TASK,
    Replicas,
    config_for,
    submit,
)


async def _events(client: TestClient, job_id: str, headers: dict[str, str]) -> AsyncIterator[dict]:
    response = await client.get(f"{TASK}/jobs/{job_id}/events", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    event: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            yield {"event": event["event"], "id": event["id"], "data": json.loads(event["data"])}
            event = {}
            continue
        name, _, value = line.partition(": ")
        event[name] = value


def _no_secret(text: str, gp: GP) -> None:
    assert "gp-token-" not in text
    assert PASSWORD not in text


def _statuses() -> dict[str, float]:
    """The jobs counted by status so far (this process's ``tile_gateway_job_statuses_total``)."""
    return {
        status: REGISTRY.get_sample_value("tile_gateway_job_statuses_total", {"status": status})
        or 0.0
        for status in ("esriJobSubmitted", "esriJobExecuting", "esriJobSucceeded", "other")
    }


async def test_submit_long_poll_events_and_result_across_replicas(
    gp: GP, replicas: Replicas
) -> None:
    first, second = await replicas()
    before = _statuses()
    job_id = await submit(first)
    assert gp.submissions[0]["inputRasters"] == json.dumps(
        json.loads(INPUTS), separators=(",", ":")
    )
    assert "gatewayPublish" not in gp.submissions[0]

    # A long poll on the other replica returns at the next change, not before.
    waiting = asyncio.create_task(
        second.get(f"{TASK}/jobs/{job_id}", params={"f": "json", "wait": "10"}, headers=ALICE)
    )
    await asyncio.sleep(0.5)
    assert not waiting.done()
    gp.move(job_id, "esriJobExecuting")
    response = await asyncio.wait_for(waiting, 5)
    assert response.status == 200
    body = await response.json()
    assert body["jobStatus"] == "esriJobExecuting"
    assert body["messages"][-1]["description"] == "esriJobExecuting"

    # The event stream: the current status at once, each change, then it ends.
    seen: list[str] = []

    async def follow() -> None:
        async for event in _events(first, job_id, ALICE):
            assert event["event"] == "status"
            seen.append(event["data"]["jobStatus"])

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    assert seen == ["esriJobExecuting"]
    gp.move(job_id, "esriJobSucceeded")
    await asyncio.wait_for(follower, 5)
    assert seen == ["esriJobExecuting", "esriJobSucceeded"]

    # Each change counted once, whichever replica saw it first and however many relayed it.
    after = _statuses()
    assert {status: after[status] - before[status] for status in after} == {
        "esriJobSubmitted": 1,
        "esriJobExecuting": 1,
        "esriJobSucceeded": 1,
        "other": 0,
    }

    # A long poll on a finished job answers at once.
    response = await second.get(
        f"{TASK}/jobs/{job_id}", params={"f": "pjson", "wait": "10"}, headers=ALICE
    )
    text = await response.text()
    assert json.loads(text)["results"] == {"result": {"paramUrl": "results/result"}}
    assert "\n  " in text  # pjson is indented

    # The result's service URL is the gateway's proxy URL, without the upstream token.
    response = await second.get(
        f"{TASK}/jobs/{job_id}/results/result", params={"f": "json"}, headers=ALICE
    )
    text = await response.text()
    _no_secret(text, gp)
    value = json.loads(text)["value"]
    base = str(second.make_url("/arcgis/rest/services"))
    assert value == {"url": f"{base}/Hosted/landsat_mosaic/ImageServer", "itemId": "i1"}

    # The plain status relay and the task resource, scrubbed too.
    response = await first.get(f"{TASK}/jobs/{job_id}", params={"f": "json"}, headers=ALICE)
    assert (await response.json())["jobStatus"] == "esriJobSucceeded"
    response = await first.get(TASK, params={"f": "json"})
    text = await response.text()
    _no_secret(text, gp)
    assert json.loads(text)["helpUrl"] == f"{first.make_url(TASK)}/help"


async def test_a_job_is_invisible_to_other_clients(gp: GP, replicas: Replicas) -> None:
    first, second = await replicas()
    job_id = await submit(first, ALICE)
    anonymous_id = await submit(first, {"X-Forwarded-For": "198.51.100.7"})
    calls = len(gp.status_calls)
    for client in (first, second):
        for path in ("", "/results/result", "/cancel", "/events"):
            for headers in (BOB, {}, {"X-Forwarded-For": "198.51.100.7"}):
                response = await client.get(f"{TASK}/jobs/{job_id}{path}", headers=headers)
                assert response.status == 404, (path, headers)
                error = (await response.json())["error"]
                assert error["code"] == 404 and error["message"] == f"Job {job_id} not found"
            response = await client.get(
                f"{TASK}/jobs/{anonymous_id}", headers={"X-Forwarded-For": "198.51.100.8"}
            )
            assert response.status == 404
    response = await second.get(f"{TASK}/jobs/unknown-job", headers=ALICE)
    assert response.status == 404
    # Nothing of it reached the upstream; its owners still read it.
    assert len(gp.status_calls) == calls
    response = await second.get(
        f"{TASK}/jobs/{anonymous_id}", headers={"X-Forwarded-For": "198.51.100.7"}
    )
    assert response.status == 200
    response = await second.get(f"{TASK}/jobs/{job_id}", headers=ALICE)
    assert response.status == 200
    # Paths below the task never fall through to the proxy.
    response = await first.get(f"{TASK}/jobs/{job_id}/inputs/inputRasters", headers=BOB)
    assert response.status == 404


async def test_a_hundred_waiters_cause_one_poller(gp: GP, replicas: Replicas) -> None:
    # A steady pace: one poller makes one call per 0.2 s, two would make twice as many.
    first, second = await replicas(poll_min=0.2, poll_max=0.2)
    job_id = await submit(first)
    gp.move(job_id, "esriJobExecuting")
    # Seen by the gateway: the waiters below wait for the change after it.
    response = await first.get(f"{TASK}/jobs/{job_id}", headers=ALICE)
    assert (await response.json())["jobStatus"] == "esriJobExecuting"
    waiters = [
        asyncio.create_task(
            (first if index % 2 else second).get(
                f"{TASK}/jobs/{job_id}", params={"wait": "10"}, headers=ALICE
            )
        )
        for index in range(100)
    ]
    await asyncio.sleep(0.3)
    start = len(gp.status_calls)
    window = 1.5
    await asyncio.sleep(window)
    polled = len(gp.status_calls) - start
    # One poller, 0.2 s between calls: at most window / 0.2 + 1 calls, where a poller per
    # waiter would make hundreds, and one per replica twice as many.
    assert 1 <= polled <= window / 0.2 + 1, polled
    assert not any(waiter.done() for waiter in waiters)
    gp.move(job_id, "esriJobSucceeded")
    answers = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    for answer in answers:
        assert answer.status == 200
        assert (await answer.json())["jobStatus"] == "esriJobSucceeded"


async def test_cancel(gp: GP, replicas: Replicas) -> None:
    first, second = await replicas()
    job_id = await submit(first)
    gp.move(job_id, "esriJobExecuting")
    response = await second.post(f"{TASK}/jobs/{job_id}/cancel", data={"f": "json"}, headers=ALICE)
    assert response.status == 200
    assert await response.json() == {"jobId": job_id, "jobStatus": "esriJobCancelling"}
    waiting = asyncio.create_task(
        first.get(f"{TASK}/jobs/{job_id}", params={"wait": "10"}, headers=ALICE)
    )
    await asyncio.sleep(0.3)
    gp.move(job_id, "esriJobCancelled")
    body = await (await asyncio.wait_for(waiting, 5)).json()
    assert body["jobStatus"] == "esriJobCancelled"
    # Cancelling a finished job is the upstream's error, relayed.
    response = await first.get(f"{TASK}/jobs/{job_id}/cancel", headers=ALICE)
    assert (await response.json())["error"]["code"] == 400


async def test_a_token_expiring_during_the_job_is_renewed(gp: GP, replicas: Replicas) -> None:
    first, second = await replicas()
    job_id = await submit(first)
    assert gp.issued == 1
    waiting = asyncio.create_task(
        second.get(f"{TASK}/jobs/{job_id}", params={"wait": "10"}, headers=ALICE)
    )
    await asyncio.sleep(0.3)
    # The token expires upstream: the poller's next call is refused with 498.
    gp.tokens.clear()
    gp.move(job_id, "esriJobExecuting")
    body = await (await asyncio.wait_for(waiting, 5)).json()
    assert body["jobStatus"] == "esriJobExecuting"
    assert gp.issued >= 2
    response = await first.get(f"{TASK}/jobs/{job_id}", headers=ALICE)
    assert (await response.json())["jobStatus"] == "esriJobExecuting"

    # Expired again while the client waits for the end, and once more before it asks for
    # the result: the client, which never held a token, still gets both.
    waiting = asyncio.create_task(
        first.get(f"{TASK}/jobs/{job_id}", params={"wait": "10"}, headers=ALICE)
    )
    await asyncio.sleep(0.3)
    issued = gp.issued
    gp.tokens.clear()
    gp.move(job_id, "esriJobSucceeded")
    body = await (await asyncio.wait_for(waiting, 5)).json()
    assert body["jobStatus"] == "esriJobSucceeded"
    assert gp.issued > issued
    issued = gp.issued
    gp.tokens.clear()
    response = await second.get(f"{TASK}/jobs/{job_id}/results/result", headers=ALICE)
    text = await response.text()
    assert response.status == 200, text
    _no_secret(text, gp)
    base = str(second.make_url("/arcgis/rest/services"))
    assert json.loads(text)["value"]["url"] == f"{base}/Hosted/landsat_mosaic/ImageServer"
    assert gp.issued > issued


@pytest.mark.parametrize(
    ("changes", "wanted"),
    [
        ({"inputRasters": None}, "inputRasters: is required"),
        ({"inputRasters": "{}"}, "inputRasters: give one of folderId"),
        ({"inputRasters": '{"uris": []}'}, "inputRasters.uris: must be a non-empty array"),
        ({"inputRasters": '{"Uris": ["/a.tif"]}'}, "'Uris' should be 'uris'"),
        ({"inputRasters": '{"uris": ["/a.tif"], "byref": "yes"}'}, "inputRasters.byref"),
        ({"imageCollection": '{"ItemId": "abc"}'}, "case-sensitive: 'ItemId' should be 'itemId'"),
        ({"imageCollection": '{"URL": "x"}'}, "'URL' should be 'url'"),
        ({"imageCollection": "{}"}, "imageCollection: give an existing collection's itemId"),
        ({"imageCollection": '{"serviceProperties": {}}'}, "serviceProperties.name"),
        ({"rasterType": '{"rasterTypeName": "Drone"}'}, "'Drone' is not one of"),
        ({"rasterType": "{}"}, "rasterType.rasterTypeName: is required"),
        (
            {
                "rasterType": '{"rasterTypeName": "UAV/UAS", '
                '"imageCollectionProps": {"imageCollectionType": "Space"}}'
            },
            "imageCollectionType: 'Space' is not one of UAV/UAS, Aerial, ScannedAerial, Satellite",
        ),
        (
            {
                "rasterType": '{"rasterTypeName": "UAV/UAS", '
                '"rasterTypeParameters": {"GPS": [["a.jpg", "1"]]}}'
            },
            "rasterType.rasterTypeParameters.GPS[0]",
        ),
        (
            {
                "rasterType": '{"rasterTypeName": "UAV/UAS", '
                '"rasterTypeParameters": {"dem": {"path": "x"}}}'
            },
            "rasterTypeParameters.dem: give exactly one of url, itemId or uri",
        ),
        ({"context": None}, "context.outSR: is required when the task creates the collection"),
        ({"context": '{"outSR": {"wkid": "x"}}'}, "context.outSR: must be"),
        ({"rasterType": '{"rasterTypeName": "UAV/UAS",}'}, "at line 1 column 30 (character 30)"),
        (
            {"inputRasters": "{“uris”: [“/a.tif”]}"},
            "inputRasters: typographic quotes (“ at character 2) are not JSON quotes",
        ),
    ],
)
async def test_parameters_are_checked_before_forwarding(
    gp: GP, replicas: Replicas, changes: dict[str, str | None], wanted: str
) -> None:
    first, _ = await replicas()
    form = {**SUBMISSION, **changes}
    form = {name: value for name, value in form.items() if value is not None}
    response = await first.post(f"{TASK}/submitJob", data=form, headers=ALICE)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == 400
    assert wanted in error["message"] and wanted in error["details"][0], error
    assert gp.submissions == []


async def test_item_ids_win_and_existing_collections_need_no_out_sr(
    gp: GP, replicas: Replicas
) -> None:
    first, _ = await replicas()
    form = {
        **SUBMISSION,
        "inputRasters": '{"itemIds": ["a1", "a2"], "uris": ["/x.tif"], "byref": true}',
        "imageCollection": '{"url": "https://gis.example/arcgis/rest/services/Hosted/c/ImageServer"}',
        "gatewayPublish": "true",
    }
    del form["context"]
    response = await first.get(f"{TASK}/submitJob", params=form, headers=ALICE)
    assert response.status == 200, await response.text()
    sent = gp.submissions[0]
    assert json.loads(sent["inputRasters"]) == {"itemIds": ["a1", "a2"], "byref": True}
    assert "context" not in sent and "gatewayPublish" not in sent


async def test_without_redis_jobs_are_kept_in_memory(
    gp: GP, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> None:
    monkeypatch.setenv("TG_TEST_GP_PASSWORD", PASSWORD)
    client = await aiohttp_client(create_app(config_for(gp, None, "tg")))
    job_id = await submit(client)
    response = await client.get(f"{TASK}/jobs/{job_id}", headers=BOB)
    assert response.status == 404
    waiting = asyncio.create_task(
        client.get(f"{TASK}/jobs/{job_id}", params={"wait": "10"}, headers=ALICE)
    )
    await asyncio.sleep(0.3)
    gp.move(job_id, "esriJobFailed")
    body = await (await asyncio.wait_for(waiting, 5)).json()
    assert body["jobStatus"] == "esriJobFailed"


async def test_a_failing_token_service_is_an_arcgis_error(
    gp: GP, replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = await replicas()
    monkeypatch.setenv("TG_TEST_GP_PASSWORD", "not-the-password")
    for method, path in (("POST", "/submitJob"), ("GET", "")):
        response = await first.request(method, f"{TASK}{path}", data=SUBMISSION, headers=ALICE)
        assert response.status == 502
        error = (await response.json())["error"]
        assert error["code"] == 502 and "credentials 'gp'" in error["message"]
        assert "not-the-password" not in json.dumps(error)
    assert gp.submissions == []


async def _raw_get(client: TestClient, target: str, headers: dict[str, str]) -> int:
    """The status of a GET of ``target`` written to the socket as it is (no normalising)."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])


async def test_no_spelling_of_a_job_path_reaches_the_upstream_past_the_owner_check(
    gp: GP, replicas: Replicas
) -> None:
    """The proxy allows the GP service too: the task's paths in another case or encoding
    (ArcGIS reads names case-insensitively) are still answered by the jobs front alone."""
    first, _ = await replicas()
    job_id = await submit(first, ALICE)
    service = TASK.removesuffix("/CreateImageCollection")
    for target in (
        f"{service}/createimagecollection/jobs/{job_id}",
        f"{service}/CREATEIMAGECOLLECTION/jobs/{job_id}/results/result",
        f"{service}/CreateImageCollectio%6E/jobs/{job_id}",
        f"{service}/CreateImageCollection/Jobs/{job_id}",
        f"{service}/CreateImageCollection/jobs/{job_id}/../{job_id}",
        f"{TASK}//jobs/{job_id}",
    ):
        assert await _raw_get(first, target, BOB) in (403, 404), target
    assert gp.status_calls == []
