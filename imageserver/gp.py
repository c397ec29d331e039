"""The ``System/RasterAnalysisTools`` GP service: ``CreateImageCollection`` as asynchronous jobs.

Routes (GET and POST, each also with a trailing slash; ``docs/arcgis-rest.md`` §5.1)::

    /arcgis/rest/services/System/RasterAnalysisTools/GPServer                    service
    .../GPServer/CreateImageCollection                                           task
    .../GPServer/CreateImageCollection/submitJob                                 job JSON
    .../GPServer/CreateImageCollection/jobs/<jobId>[?returnMessages=true]        status
    .../GPServer/CreateImageCollection/jobs/<jobId>/results/result               result
    .../GPServer/CreateImageCollection/jobs/<jobId>/inputs/<param>               an input
    .../GPServer/CreateImageCollection/jobs/<jobId>/cancel                       cancel

A job goes esriJobSubmitted → esriJobWaiting (one job builds at a time) → esriJobExecuting →
esriJobSucceeded | esriJobFailed, or esriJobCancelling → esriJobCancelled. The mosaic is built
in the app's thread pool (:func:`imageserver.collection.build_mosaic`), never on the event
loop, then opened and published as a new ImageServer of this server in its ``Hosted`` folder,
answering at once; the result is ``{"url": ".../services/Hosted/<name>/ImageServer",
"itemId": ...}`` with the URL on the host the result was asked from (§5.2 gives that URL, the
folder ArcGIS Enterprise keeps hosted imagery layers in). With token security the GP service is
``System/RasterAnalysisTools`` in ``secured_services``; a collection made by a secured GP
service, or from a secured service's ``url``, is secured too.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from imageserver.collection import CollectionRequest, build_mosaic, parse_request
from imageserver.config import GP_FOLDER, HOSTED_FOLDER, JobsConfig, ServiceSpec
from imageserver.jobs import FINISHED, Job, JobCancelled, JobFailure, JobStatus, MessageType
from imageserver.metadata import CURRENT_VERSION
from imageserver.params import ParameterError
from imageserver.raster import RasterSource
from imageserver.responses import add_route, error_response, json_response, request_params
from imageserver.state import CONFIG, EXECUTOR, SOURCES, find_source
from imageserver.tokens import SECURED_AT_RUNTIME, guard, is_secured

log = logging.getLogger(__name__)

GP_SERVICE = f"{GP_FOLDER}/RasterAnalysisTools"
GP_ROOT = f"/arcgis/rest/services/{GP_SERVICE}/GPServer"
TASK = "CreateImageCollection"
_INVALID = "Invalid or missing input parameters."
_GP_STRING = "GPString"
_INPUTS = (
    ("inputRasters", "Input Rasters", "esriGPParameterTypeRequired"),
    ("imageCollection", "Output Image Collection", "esriGPParameterTypeRequired"),
    ("rasterType", "Raster Type", "esriGPParameterTypeRequired"),
    ("context", "Context", "esriGPParameterTypeOptional"),
)


class JobRunner:
    """The jobs of the GP service and the work folder their mosaics are written to.

    Attributes:
        jobs: job id -> job, kept for the life of the server.
        items: item id -> raster: the configured item registry plus the published
            collections, usable as ``itemIds`` of later jobs.
        work_dir: the folder the mosaics are written to.
    """

    def __init__(self, app: web.Application, config: JobsConfig, work_dir: Path) -> None:
        """Jobs of ``app`` run per ``config``; mosaics go to ``work_dir`` (which exists)."""
        self.jobs: dict[str, Job] = {}
        self.items: dict[str, Path] = dict(app[CONFIG].items)
        self._app = app
        self._config = config
        self.work_dir = work_dir
        self._slot = asyncio.Semaphore(1)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reserved: set[str] = set()

    def name_taken(self, name: str) -> bool:
        """Whether a collection ``name`` (in the ``Hosted`` folder) exists or a running job is
        about to publish it."""
        return (
            find_source(self._app, hosted_service(name)) is not None
            or name.casefold() in self._reserved
        )

    def submit(self, request: CollectionRequest, *, secured: bool) -> Job:
        """Create the job for ``request`` and start running it in the background; its
        collection will need a token when ``secured``."""
        # Steps known in advance: the inputs, overviews and publishing (strips are added
        # once the grid is known).
        job = Job(
            request.given,
            step_delay=self._config.step_delay,
            total_steps=len(request.inputs) + 2,
        )
        self.jobs[job.job_id] = job
        self._reserved.add(request.name.casefold())
        self._tasks[job.job_id] = asyncio.create_task(self._run(job, request, secured))
        return job

    def cancel(self, job: Job) -> bool:
        """Ask ``job`` to stop (see :meth:`Job.request_cancel`); a job still waiting for its
        turn is stopped at once, a running one at its next step."""
        waiting = job.status is JobStatus.WAITING
        if not job.request_cancel():
            return False
        task = self._tasks.get(job.job_id)
        if waiting and task is not None:
            task.cancel()
        return True

    async def close(self) -> None:
        """Cancel every unfinished job and wait until their workers have stopped."""
        for job in self.jobs.values():
            if job.status is JobStatus.SUBMITTED:
                self._tasks[job.job_id].cancel()
            else:
                self.cancel(job)
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, job: Job, request: CollectionRequest, secured: bool) -> None:
        delay = self._config.step_delay
        path = self.work_dir / f"{request.name}_{job.job_id}.tif"
        try:
            await asyncio.sleep(delay)
            job.set_status(JobStatus.WAITING)
            async with self._slot:
                await asyncio.sleep(delay)
                job.set_status(JobStatus.EXECUTING)
                job.message(
                    MessageType.INFORMATIVE,
                    f"Raster type {request.raster_type}, image collection type "
                    f"{request.collection_type}: recorded; georeferenced inputs are mosaicked "
                    "as they are (no photogrammetric adjustment)",
                )
                await self._publish(job, request, secured, path)
        except (JobCancelled, asyncio.CancelledError):
            job.cancelled()
            path.unlink(missing_ok=True)
        except JobFailure as exc:
            job.fail(str(exc), TASK)
            path.unlink(missing_ok=True)
        except Exception:
            # A fault of this server, not of the request: the client gets a short reason.
            log.exception("imageserver: job %s of %s failed", job.job_id, TASK)
            job.fail("the image collection could not be built (see the server log)", TASK)
            path.unlink(missing_ok=True)
        finally:
            self._reserved.discard(request.name.casefold())
            self._tasks.pop(job.job_id, None)

    async def _publish(
        self, job: Job, request: CollectionRequest, secured: bool, path: Path
    ) -> None:
        """Build the mosaic in the thread pool, open it as a service and register it."""
        loop = asyncio.get_running_loop()
        executor = self._app[EXECUTOR]
        mosaic = await loop.run_in_executor(
            executor,
            build_mosaic,
            request.inputs,
            request.out_crs,
            path,
            job,
            self._config.max_pixels,
        )
        service = hosted_service(request.name)
        await loop.run_in_executor(executor, job.step, f"Publishing {service}/ImageServer")
        spec = ServiceSpec(
            name=request.name,
            path=path,
            description=(
                f"Image collection of {len(request.inputs)} rasters ({mosaic.width} x "
                f"{mosaic.height} pixels) made by {TASK} job {job.job_id}; raster type "
                f"{request.raster_type}, image collection type {request.collection_type}"
            ),
        )
        source = await loop.run_in_executor(executor, RasterSource.open, spec)
        if job.cancel_requested.is_set():
            # Cancelled while the service opened: it is never published.
            source.close()
            raise JobCancelled
        item_id = request.item_id or job.job_id[1:]
        self._app[SOURCES][service] = source
        self.items[item_id] = path
        if secured:
            self._app[SECURED_AT_RUNTIME].add(service.casefold())
        job.succeed({"url": f"/arcgis/rest/services/{service}/ImageServer", "itemId": item_id})


def hosted_service(name: str) -> str:
    """The service name of collection ``name``: ``Hosted/<name>``."""
    return f"{HOSTED_FOLDER}/{name}"


RUNNER = web.AppKey("imageserver_jobs", JobRunner)


def add_gp_routes(app: web.Application) -> None:
    """Register the GP service's routes and its job runner's lifecycle on ``app`` (after the
    lifecycle that opens the services and the thread pool, so it stops before them)."""
    task = f"{GP_ROOT}/{{task}}"
    job = f"{task}/jobs/{{job_id}}"
    add_route(app, GP_ROOT, _handle_service)
    add_route(app, task, _handle_task)
    add_route(app, f"{task}/submitJob", _handle_submit)
    add_route(app, job, _handle_job)
    add_route(app, f"{job}/results/{{param}}", _handle_result)
    add_route(app, f"{job}/inputs/{{param}}", _handle_input)
    add_route(app, f"{job}/cancel", _handle_cancel)
    app.cleanup_ctx.append(_runner_lifecycle)


async def _runner_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the work folder (a temporary one unless configured) and the jobs."""
    config = app[CONFIG].jobs
    temporary = config.work_dir is None
    if config.work_dir is None:
        work_dir = Path(tempfile.mkdtemp(prefix="imageserver-collections-"))
    else:
        work_dir = config.work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
    runner = JobRunner(app, config, work_dir)
    app[RUNNER] = runner
    try:
        yield
    finally:
        await runner.close()
        if temporary:
            # The published services still hold their files open until the app's own
            # cleanup closes them; unlinking open files is fine on POSIX.
            shutil.rmtree(work_dir, ignore_errors=True)


def _refused(request: web.Request, params: Mapping[str, str]) -> web.Response | None:
    return guard(request, params, GP_SERVICE)


def _task_refusal(request: web.Request, params: Mapping[str, str]) -> web.Response | None:
    """The answer to give instead of the task's when the token is refused (``guard``) or the
    path names another task (404); ``None`` to go on."""
    refused = _refused(request, params)
    if refused is not None:
        return refused
    if request.match_info["task"].casefold() != TASK.casefold():
        return _task_not_found(request, params)
    return None


async def _handle_service(request: web.Request) -> web.Response:
    params = await request_params(request)
    refused = _refused(request, params)
    if refused is not None:
        return refused
    return json_response(
        {
            "currentVersion": CURRENT_VERSION,
            "serviceDescription": "Raster analysis tools of the reference ImageServer",
            "tasks": [TASK],
            "executionType": "esriExecutionTypeAsynchronous",
            "resultMapServerName": "",
            "maximumRecords": 1000,
            "capabilities": "",
        },
        params,
    )


async def _handle_task(request: web.Request) -> web.Response:
    params = await request_params(request)
    refused = _task_refusal(request, params)
    if refused is not None:
        return refused
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "dataType": _GP_STRING,
            "displayName": display,
            "direction": "esriGPParameterDirectionInput",
            "defaultValue": "",
            "parameterType": kind,
            "category": "",
        }
        for name, display, kind in _INPUTS
    ]
    parameters.append(
        {
            "name": "result",
            "dataType": _GP_STRING,
            "displayName": "Result",
            "direction": "esriGPParameterDirectionOutput",
            "defaultValue": "",
            "parameterType": "esriGPParameterTypeDerived",
            "category": "",
        }
    )
    return json_response(
        {
            "name": TASK,
            "displayName": "Create Image Collection",
            "description": (
                "Mosaics rasters of the raster store (uris), of this server's services "
                "(urls) or of its item registry (itemIds) into a new image service."
            ),
            "category": "",
            "helpUrl": "",
            "executionType": "esriExecutionTypeAsynchronous",
            "parameters": parameters,
        },
        params,
    )


async def _handle_submit(request: web.Request) -> web.Response:
    params = await request_params(request)
    refused = _task_refusal(request, params)
    if refused is not None:
        return refused
    app = request.app
    runner = app[RUNNER]
    try:
        collection = parse_request(
            params,
            raster_store=app[CONFIG].raster_store,
            items=runner.items,
            find_service=lambda name: find_source(app, name),
        )
        if runner.name_taken(collection.name):
            raise ParameterError(
                [
                    f"imageCollection: a service named {hosted_service(collection.name)} "
                    "exists; this server only creates new image collections"
                ]
            )
    except ParameterError as exc:
        return error_response(params, 400, _INVALID, exc.details)
    services = [raster.service for raster in collection.inputs if raster.service is not None]
    for service in services:
        # Reading a secured service through the GP service needs that service's token too.
        refused = guard(request, params, service)
        if refused is not None:
            return refused
    secured = is_secured(app, GP_SERVICE) or any(is_secured(app, s) for s in services)
    job = runner.submit(collection, secured=secured)
    return json_response({"jobId": job.job_id, "jobStatus": job.status.value}, params)


def _find_job(request: web.Request, params: Mapping[str, str]) -> Job | web.Response:
    """The request's job, or the answer to give instead (token refused, unknown task or
    job: ArcGIS's "Invalid or missing input parameters")."""
    refused = _task_refusal(request, params)
    if refused is not None:
        return refused
    job_id = request.match_info["job_id"]
    job = request.app[RUNNER].jobs.get(job_id)
    if job is None:
        return error_response(params, 400, _INVALID, [f"Job {job_id} not found"])
    return job


async def _handle_job(request: web.Request) -> web.Response:
    params = await request_params(request)
    job = _find_job(request, params)
    if isinstance(job, web.Response):
        return job
    return_messages = params.get("returnmessages", "").strip().lower() == "true"
    return json_response(job.to_json(return_messages=return_messages), params)


async def _handle_result(request: web.Request) -> web.Response:
    params = await request_params(request)
    job = _find_job(request, params)
    if isinstance(job, web.Response):
        return job
    param = request.match_info["param"]
    if param.casefold() != "result":
        return error_response(params, 400, _INVALID, [f"{TASK} has no output {param}"])
    value = job.result
    if value is None:
        return error_response(
            params, 400, _INVALID, [f"Job {job.job_id} has no result: it is {job.status.value}"]
        )
    url = str(request.url.origin().with_path(value["url"]))
    return json_response(
        {"paramName": "result", "dataType": _GP_STRING, "value": {**value, "url": url}}, params
    )


async def _handle_input(request: web.Request) -> web.Response:
    params = await request_params(request)
    job = _find_job(request, params)
    if isinstance(job, web.Response):
        return job
    param = request.match_info["param"]
    names = {name.casefold(): name for name in job.inputs}
    if param.casefold() not in names:
        return error_response(params, 400, _INVALID, [f"Job {job.job_id} has no input {param}"])
    name = names[param.casefold()]
    return json_response(
        {"paramName": name, "dataType": _GP_STRING, "value": job.inputs[name]}, params
    )


async def _handle_cancel(request: web.Request) -> web.Response:
    params = await request_params(request)
    job = _find_job(request, params)
    if isinstance(job, web.Response):
        return job
    if not request.app[RUNNER].cancel(job):
        reason = "it has finished" if job.status in FINISHED else f"it is {job.status.value}"
        return error_response(
            params, 400, _INVALID, [f"Job {job.job_id} cannot be cancelled: {reason}"]
        )
    return json_response({"jobId": job.job_id, "jobStatus": job.status.value}, params)


def _task_not_found(request: web.Request, params: Mapping[str, str]) -> web.Response:
    return error_response(params, 404, f"Task {request.match_info['task']} not found")


def folder_json(visible: bool) -> dict[str, Any]:
    """``/arcgis/rest/services/System``: the folder holding the GP service, listed when
    ``visible`` (a secured GP service is listed only to a valid token, as the catalog does)."""
    services = [{"name": GP_SERVICE, "type": "GPServer"}] if visible else []
    return {"currentVersion": CURRENT_VERSION, "folders": [], "services": services}


def hosted_folder_json(service_names: Iterable[str]) -> dict[str, Any]:
    """``/arcgis/rest/services/Hosted``: the collections ``service_names`` (``Hosted/<name>``,
    those the caller may see) as ImageServers, named with their folder as ArcGIS lists a
    folder's services."""
    services = [{"name": name, "type": "ImageServer"} for name in sorted(service_names)]
    return {"currentVersion": CURRENT_VERSION, "folders": [], "services": services}
