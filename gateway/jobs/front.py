"""The jobs front: the GP service ``<proxy prefix>/<jobs.path>`` and everything below it,
answered in ArcGIS error JSON (arcgis-rest.md sections 3 and 5.1).

    CreateImageCollection                                        GET        the task resource
    CreateImageCollection/submitJob                              GET, POST  checked, recorded
    CreateImageCollection/jobs/<jobId>[?wait=<s>]                GET, POST  status; long poll
    CreateImageCollection/jobs/<jobId>/events                    GET        Server-Sent Events
    CreateImageCollection/jobs/<jobId>/results/<paramName>       GET, POST  a result
    CreateImageCollection/jobs/<jobId>/cancel                    GET, POST  cancel

Job ids are the upstream's, returned as they are (opaque; one upstream per gateway, so they
cannot collide); a job not recorded, expired, or owned by another client is 404, the same
answer, so that nobody learns which job ids exist. Every other path below the GP service is
404 here: none falls through to the reverse proxy, which would skip the owner check — not
even the task's name in another case (ArcGIS reads names case-insensitively) or encoding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from gateway.access import admission_of, client_address
from gateway.cache.keys import KeyLayout
from gateway.config import GatewayConfig, JobsConfig
from gateway.errors import GPUnavailable, StoreUnavailable
from gateway.jobs.params import InvalidParameter, check_submission
from gateway.jobs.store import (
    JobRecord,
    JobState,
    JobStore,
    MemoryJobStore,
    RedisJobStore,
)
from gateway.jobs.upstream import GPAnswer, GPTask
from gateway.jobs.watch import Watches
from gateway.proxy.scrub import Scrubber, without_token
from gateway.services.http import CONFIG, NO_STORE, PIPELINE, cors_headers, front_app, public_base
from gateway.sources.http import Credentials, NoCredentials

log = logging.getLogger(__name__)

TASK = "CreateImageCollection"
SUCCEEDED = "esriJobSucceeded"
# The gateway's own submission parameter: publish the result as a tile layer.
PUBLISH = "gatewayPublish"
# Never forwarded: the client's token (the gateway sends its own), the format (always json
# upstream), the gateway's parameters.
_NOT_FORWARDED = frozenset(("token", "f", "wait", PUBLISH.lower()))
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_]{1,128}$")
METHODS = "GET, HEAD, POST, OPTIONS"
CredentialsLookup = Callable[[str], Credentials]
"""The credential provider of a named credential set (raises ``LookupError`` when unknown)."""


def mount_path(config: GatewayConfig) -> str:
    """Where the jobs front is mounted: the proxy's prefix (its default without a proxy) and
    ``jobs.path``, the GP service."""
    assert config.jobs is not None
    prefix = config.proxy.prefix if config.proxy is not None else "/arcgis/rest/services"
    return f"{prefix}/{config.jobs.path}"


def job_error(status: int, message: str, details: list[str] | None = None) -> web.Response:
    """ArcGIS error JSON ``{"error": {"code", "message", "details"}}`` under HTTP ``status``
    (arcgis-rest.md section 3), not to be stored by caches."""
    return web.json_response(
        {"error": {"code": status, "message": message, "details": details or []}},
        status=status,
        headers=NO_STORE,
    )


def _render_error(request: web.Request, status: int, message: str) -> web.Response:
    return job_error(status, message)


def _not_found(job_id: str) -> web.Response:
    return job_error(404, f"Job {job_id} not found")


class JobsRelay:
    """What the jobs front runs on: the ``task`` upstream, the ``store`` of records and
    states, and this replica's ``watches``; ``start`` gives them when the app starts."""

    task: GPTask
    store: JobStore
    watches: Watches

    def __init__(self, config: GatewayConfig) -> None:
        jobs = config.jobs
        assert jobs is not None
        self.config = config
        self.jobs: JobsConfig = jobs
        self.hops = config.access.client_hops(config.server)
        # Called with a job id when a job submitted with gatewayPublish=true succeeds.
        self.on_succeeded: Callable[[str], Awaitable[object]] | None = None
        self._followers: set[asyncio.Task[None]] = set()
        self._stopped = False

    def start(self, task: GPTask, store: JobStore) -> None:
        """Serve with ``task`` and ``store``."""
        jobs = self.jobs
        self.task = task
        self.store = store
        # A lapsed lease is taken over within about one poll of the slowest pace.
        self.watches = Watches(
            store,
            self.poll,
            jobs.poll_min,
            jobs.poll_max,
            lease=2 * jobs.poll_max + self.config.server.upstream_timeout,
            sync=min(jobs.poll_min, 0.25),
        )

    def follow(self, job_id: str) -> None:
        """Wait in the background for the job to finish (through the watches: no poller of
        its own), then hand a succeeded job to ``on_succeeded``; gives up after
        ``jobs.retention`` seconds."""
        task = asyncio.create_task(self._follow(job_id))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _follow(self, job_id: str) -> None:
        deadline = time.monotonic() + self.jobs.retention
        last: JobState | None = None
        while (
            not self._stopped
            and time.monotonic() < deadline
            and (last is None or not last.terminal)
        ):
            async for state in self.watches.states(job_id, self.jobs.max_wait):
                last = state
        if last is not None and last.status == SUCCEEDED and self.on_succeeded is not None:
            try:
                await self.on_succeeded(job_id)
            except (ValueError, LookupError, GPUnavailable, StoreUnavailable) as exc:
                log.warning("jobs: job %s succeeded but was not published: %s", job_id, exc)

    async def stop(self) -> None:
        """Stop the background followers and the watches (at shutdown)."""
        self._stopped = True
        for task in list(self._followers):
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        await self.watches.close()

    async def result_service(self, job_id: str) -> tuple[str | None, str]:
        """The collection name of a succeeded job (when known) and the ImageServer URL of
        its ``result`` (its
        ``value.url``, arcgis-rest.md section 5.2; no token). Raises ``LookupError`` for a job
        not recorded, ``ValueError`` for one not succeeded or without an ImageServer result,
        ``GPUnavailable``."""
        record = await self.store.load(job_id) if _JOB_ID.match(job_id) else None
        if record is None:
            raise LookupError(f"job {job_id} not found")
        answer = await self.task.call(("jobs", job_id), {})
        status = answer.document.get("jobStatus")
        if status != SUCCEEDED:
            raise ValueError(f"job {job_id} is {status or 'of unknown status'}, not {SUCCEEDED}")
        answer = await self.task.call(("jobs", job_id, "results", "result"), {})
        value = answer.document.get("value")
        url = value.get("url") if isinstance(value, dict) else None
        if not isinstance(url, str) or not url.split("?")[0].rstrip("/").endswith("/ImageServer"):
            raise ValueError(f"the result of job {job_id} names no ImageServer")
        return record.collection, without_token(url)

    async def poll(self, job_id: str) -> dict[str, Any]:
        """The job JSON upstream with its messages, tokens cut out. Raises ``GPUnavailable``,
        also for an ArcGIS error answer (a job the upstream no longer knows)."""
        answer = await self.task.call(("jobs", job_id), {"returnMessages": "true"})
        if answer.error or not isinstance(answer.document.get("jobStatus"), str):
            raise GPUnavailable(502, f"the upstream gave no status of job {job_id}")
        document: dict[str, Any] = Scrubber.of((), answer.sent).document(answer.document)
        return document

    def scrubber(self, request: web.Request, sent: frozenset[str]) -> Scrubber:
        """Upstream URLs mapped to the gateway: the GP service to this front's service, the
        proxied upstreams (and their output directories) to the proxy's paths."""
        base = public_base(request)
        prefix = mount_path(self.config).removesuffix(f"/{self.jobs.path}")
        bases = [(self.jobs.service.base_url, f"{base}{prefix}/{self.jobs.path}")]
        proxy = self.config.proxy
        for service in proxy.services if proxy is not None else ():
            gateway = "/".join(part for part in (f"{base}{prefix}", service.path) if part)
            bases.append((service.base_url, gateway))
            if service.outputs_base is not None:
                bases.append((service.outputs_base, f"{gateway}/_outputs"))
        return Scrubber.of(bases, sent)


RELAY = web.AppKey("jobs_relay", JobsRelay)


def _owner(request: web.Request, hops: int) -> str:
    """Who the client is: the gate's answer (API key name, JWT subject or address), else its
    address."""
    admission = admission_of(request)
    if admission is not None and admission.client:
        return admission.client
    return f"ip:{client_address(request, hops)}"


def _answer(request: web.Request, document: Any, status: int = 200) -> web.Response:
    """``document`` as JSON (indented for ``f=pjson``), not to be stored by caches."""
    pretty = request.query.get("f", "").lower() == "pjson"
    text = json.dumps(document, ensure_ascii=False, indent=2 if pretty else None)
    return web.Response(text=text, status=status, content_type="application/json", headers=NO_STORE)


def _relayed(request: web.Request, answer: GPAnswer) -> web.Response:
    relay = request.app[RELAY]
    return _answer(
        request, relay.scrubber(request, answer.sent).document(answer.document), answer.status
    )


async def _params(request: web.Request) -> dict[str, str]:
    """The query and form parameters (the form's win), without those never forwarded."""
    merged: dict[str, str] = dict(request.query)
    if request.method == "POST" and request.body_exists:
        if request.content_type != "application/x-www-form-urlencoded":
            raise web.HTTPUnsupportedMediaType()
        form = await request.post()
        merged.update({name: value for name, value in form.items() if isinstance(value, str)})
    return merged


def _forwarded(params: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in params.items() if name.lower() not in _NOT_FORWARDED}


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = next((v for k, v in params.items() if k.lower() == name.lower()), "")
    return value.strip().lower() in ("true", "1", "yes")


async def _owned(request: web.Request) -> tuple[str, JobRecord] | web.Response:
    """The job id of the path and its record when the client owns it, else the 404."""
    relay = request.app[RELAY]
    job_id = request.match_info["job"]
    if not _JOB_ID.match(job_id):
        return _not_found(job_id)
    record = await relay.store.load(job_id)
    if record is None or record.owner != _owner(request, relay.hops):
        return _not_found(job_id)
    return job_id, record


async def task_resource(request: web.Request) -> web.Response:
    """The task's description, relayed."""
    return _relayed(request, await request.app[RELAY].task.call((), {}))


async def submit(request: web.Request) -> web.Response:
    """Check the parameters, submit upstream, record the job for its owner."""
    relay = request.app[RELAY]
    params = await _params(request)
    try:
        submission = check_submission(_forwarded(params))
    except InvalidParameter as exc:
        return job_error(400, f"Invalid or missing input parameters: {exc}", [str(exc)])
    answer = await relay.task.call(("submitJob",), submission.params)
    job_id = answer.document.get("jobId")
    if answer.error:
        return _relayed(request, answer)
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        return job_error(502, "the upstream GP service answered no usable jobId")
    now = time.time()
    await relay.store.save(
        JobRecord(
            job_id,
            _owner(request, relay.hops),
            f"{relay.task.url}/jobs/{job_id}",
            submission.digest,
            now,
            submission.collection_name,
            _flag(params, PUBLISH),
        )
    )
    await _record(relay, job_id, answer)
    if _flag(params, PUBLISH):
        relay.follow(job_id)
    return _relayed(request, answer)


async def _record(relay: JobsRelay, job_id: str, answer: GPAnswer) -> None:
    """Keep a job JSON the upstream answered (submit, status, cancel) as the job's last
    status: what a long poll's change is a change from."""
    if answer.document.get("jobId") == job_id and isinstance(answer.document.get("jobStatus"), str):
        job = Scrubber.of((), answer.sent).document(answer.document)
        await relay.watches.record(job_id, job)


async def status(request: web.Request) -> web.Response:
    """The job's status: relayed at once, or with ``wait=<seconds>`` at its next change
    (bounded by ``jobs.max_wait``)."""
    owned = await _owned(request)
    if isinstance(owned, web.Response):
        return owned
    job_id = owned[0]
    relay = request.app[RELAY]
    params = await _params(request)
    wait_text = next((v for k, v in params.items() if k.lower() == "wait"), "").strip()
    if not wait_text:
        answer = await relay.task.call(("jobs", job_id), _forwarded(params))
        await _record(relay, job_id, answer)
        return _relayed(request, answer)
    try:
        wait = float(wait_text)
    except ValueError:
        wait = -1.0
    if not 0 <= wait < float("inf"):
        return job_error(400, "Invalid or missing input parameters: wait: seconds, 0 or more")
    state = await relay.watches.wait_change(job_id, min(wait, relay.jobs.max_wait))
    if state is None:
        return job_error(504, f"no status of job {job_id} could be had in time")
    return _answer(request, relay.scrubber(request, frozenset()).document(state.job))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events (HTML Living Standard, "Server-sent events"): one ``status`` event
    with the job JSON at once and at each change; the stream ends at a finished status, or
    after ``jobs.max_wait`` seconds without a change (an ``EventSource`` then reconnects)."""
    owned = await _owned(request)
    if isinstance(owned, web.Response):
        return owned
    job_id = owned[0]
    relay = request.app[RELAY]
    scrubber = relay.scrubber(request, frozenset())
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            # nginx would otherwise hold the events back in its buffer.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    async for state in relay.watches.states(job_id, relay.jobs.max_wait):
        data = json.dumps(scrubber.document(state.job), ensure_ascii=False)
        await response.write(f"event: status\nid: {state.version}\ndata: {data}\n\n".encode())
    await response.write_eof()
    return response


async def result(request: web.Request) -> web.Response:
    """A result parameter of the job, relayed (URLs mapped to the gateway)."""
    owned = await _owned(request)
    if isinstance(owned, web.Response):
        return owned
    job_id = owned[0]
    name = request.match_info["param"]
    if not _PARAM_NAME.match(name):
        return job_error(404, f"Result {name} not found")
    params = _forwarded(await _params(request))
    answer = await request.app[RELAY].task.call(("jobs", job_id, "results", name), params)
    return _relayed(request, answer)


async def cancel(request: web.Request) -> web.Response:
    """Cancel the job upstream (the answer is ``esriJobCancelling``, then the status goes on
    to ``esriJobCancelled``)."""
    owned = await _owned(request)
    if isinstance(owned, web.Response):
        return owned
    job_id = owned[0]
    params = _forwarded(await _params(request))
    relay = request.app[RELAY]
    answer = await relay.task.call(("jobs", job_id, "cancel"), params)
    await _record(relay, job_id, answer)
    return _relayed(request, answer)


async def _elsewhere(request: web.Request) -> web.Response:
    return job_error(404, f"not a resource of this gateway's {TASK} relay")


@web.middleware
async def _failures(request: web.Request, handler: Any) -> web.StreamResponse:
    """Upstream and store failures as ArcGIS error JSON (502/504, 503)."""
    try:
        response: web.StreamResponse = await handler(request)
    except GPUnavailable as exc:
        return job_error(exc.status, exc.message)
    except StoreUnavailable as exc:
        return job_error(503, str(exc))
    except web.HTTPUnsupportedMediaType:
        return job_error(415, "a POST body must be an urlencoded form")
    return response


def jobs_app(
    config: GatewayConfig, credentials: CredentialsLookup | None = None
) -> web.Application:
    """The jobs front of ``config`` (which has a ``jobs`` section), to be mounted at
    ``mount_path(config)``.

    The upstream gets the tokens of the credential set ``jobs.service.credentials`` from the
    configured providers (shared with the tile layers and the proxy), or from
    ``credentials(name)`` when given; none without a set.
    """
    task = f"/{TASK}"
    routes = [
        web.get(task, task_resource),
        web.get(f"{task}/", task_resource),
        *(web.route(m, f"{task}/submitJob", submit) for m in ("GET", "POST")),
        *(web.route(m, f"{task}/jobs/{{job}}", status) for m in ("GET", "POST")),
        web.get(f"{task}/jobs/{{job}}/events", events),
        *(web.route(m, f"{task}/jobs/{{job}}/results/{{param}}", result) for m in ("GET", "POST")),
        *(web.route(m, f"{task}/jobs/{{job}}/cancel", cancel) for m in ("GET", "POST")),
        # The GP service is the relay's alone: any other path, other tasks and other
        # spellings included, is 404 here rather than the proxy's.
        web.route("*", "/{tail:.*}", _elsewhere),
        web.route("*", "", _elsewhere),
    ]
    app = front_app(config, routes, _render_error, METHODS, streams=True)
    app[RELAY] = JobsRelay(config)
    app.middlewares.append(_failures)
    app.on_response_prepare.append(_cors_before_sending)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        jobs = config.jobs
        assert jobs is not None
        name = jobs.service.credentials
        provider: Credentials
        if name is None:
            provider = NoCredentials()
        elif credentials is not None:
            provider = credentials(name)
        else:
            providers = app[PIPELINE].credentials
            assert providers is not None  # open_pipeline sets them before the app serves
            provider = providers.for_service(name, jobs.service.base_url + "/")
        cache = config.cache
        store: JobStore = (
            RedisJobStore(cache.redis_url, KeyLayout(cache.prefix), jobs.retention, cache.timeout)
            if cache.effective_backend == "redis" and cache.redis_url
            else MemoryJobStore(jobs.retention, jobs.max_memory_jobs)
        )
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "tile-gateway/0.1"},
            trust_env=False,
        )
        task = GPTask(
            f"{jobs.service.base_url}/{TASK}", provider, session, config.server.upstream_timeout
        )
        app[RELAY].start(task, store)
        try:
            yield
        finally:
            await app[RELAY].stop()
            await session.close()
            await store.close()

    app.cleanup_ctx.append(resources)
    return app


async def _cors_before_sending(request: web.Request, response: web.StreamResponse) -> None:
    """The front's CORS headers as the headers are sent: an event stream is prepared before
    the middleware would add them."""
    response.headers.update(cors_headers(request.config_dict[CONFIG].server.cors_allow_origin))
