"""Running the gateway: one process, or several worker processes sharing one port.

Workers bind the same address with SO_REUSEPORT, so the kernel spreads connections among them
(Linux 3.9+); each worker has its own event loop and L1, and they coalesce upstream calls and
share tiles through Redis. uvloop drives the event loop when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.access import access_logger
from gateway.app import create_app
from gateway.config import GatewayConfig, ServerConfig
from gateway.logs import ServerLog, configure_logging
from gateway.services.http import CONFIG

log = logging.getLogger("gateway")

# Seconds open connections get to finish at shutdown (within Kubernetes' default 30 s grace).
SHUTDOWN_TIMEOUT = 10.0


class PortInUse(Exception):
    """Nothing can listen on ``host``:``port``: another socket already holds the port."""

    def __init__(self, host: str, port: int) -> None:
        address = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {address}:{port}: the port is in use")
        self.host = host
        self.port = port


# The event loop: "uvloop" (the default where it is installed) or "asyncio"; see ``event_loop``.
LOOP_VARIABLE = "TILE_GATEWAY_LOOP"


def event_loop() -> str:
    """The event loop ``run`` uses: ``TILE_GATEWAY_LOOP`` (``uvloop`` or ``asyncio``) when set,
    else ``uvloop`` where it is installed, else ``asyncio``.

    Raises ``ValueError`` for another value, or for ``uvloop`` where it is not installed.
    """
    choice = os.environ.get(LOOP_VARIABLE, "").strip().lower()
    if choice not in ("", "uvloop", "asyncio"):
        raise ValueError(f"{LOOP_VARIABLE} must be uvloop or asyncio, not {choice!r}")
    if choice == "asyncio":
        return choice
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if choice == "uvloop":
        raise ValueError(f"{LOOP_VARIABLE}=uvloop but uvloop is not installed")
    return "asyncio"


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on the loop ``event_loop`` names. Raises its ``ValueError``."""
    if event_loop() == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


async def start_site(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host``:``port`` (0 = any free port); returns the runner and the port.

    Connections follow the app's configuration (``server.keepalive_timeout``,
    ``server.max_client_connections``; the defaults for an app without one): see
    ``ServerConfig``. Access lines go to the ``gateway.access`` logger (shown at INFO level),
    API key parameters and tokens redacted; a request aiohttp cannot parse is one INFO line of
    ``aiohttp.server`` without traceback; both escape what the client sent
    (``logs.ServerLog``). Raises ``PortInUse`` when the port is taken, ``OSError`` when binding
    fails otherwise; either way the app has been cleaned up again.
    """
    server = app[CONFIG].server if CONFIG in app else ServerConfig()
    runner = web.AppRunner(
        app,
        access_log=ServerLog(logging.getLogger("gateway.access")),
        # Without API keys and tokens in the request line and Referer.
        access_log_class=access_logger(
            app[CONFIG].access if CONFIG in app else None, fields=server.log_format == "json"
        ),
        logger=ServerLog(logging.getLogger("aiohttp.server")),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=server.keepalive_timeout,
    )
    await runner.setup()
    try:
        await LimitedSite(
            runner, host, port, limit=server.max_client_connections, reuse_port=reuse_port
        ).start()
    except OSError as exc:
        # The app has started (cache, sessions): left to the loop's shutdown, it would fail there.
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    return runner, runner.addresses[0][1]


class _Refused(asyncio.Protocol):
    """A connection beyond the limit: closed as soon as it is made, before any byte is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class LimitedSite(web.BaseSite):
    """A TCP site (aiohttp's ``BaseSite``) whose connections beyond ``limit`` open ones are
    closed as soon as they are accepted, so that clients holding connections cannot exhaust
    the process's file descriptors; the first of a run of refusals is logged.

    aiohttp has no such bound (aio-libs/aiohttp#675), and a connection only counts among its
    server's ``connections`` once its ``connection_made`` ran, after every connection accepted
    in the same turn of the event loop had its protocol made: the ones made and not yet counted
    are tracked here until then.
    """

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, limit: int, reuse_port: bool
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._limit = limit
        self._reuse_port = reuse_port or None
        self._uncounted: set[asyncio.BaseProtocol] = set()
        self._refusing = False

    @property
    def name(self) -> str:
        """``http://host:port`` as configured (see ``runner.addresses`` for the bound port)."""
        return f"http://{url_host(self._host)}:{self._port}"

    async def start(self) -> None:
        """Listen on the site's address."""
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port,
        )

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # BaseSite refuses a runner that is not set up
        if len(server.connections) + len(self._uncounted) >= self._limit:
            if not self._refusing:
                log.warning(
                    "%d client connections open (server.max_client_connections): closing new "
                    "ones until some end",
                    self._limit,
                )
            self._refusing = True
            return _Refused()
        self._refusing = False
        handler = server()
        # Scheduled before the transport schedules connection_made, so it runs just before it:
        # from then on the server counts the connection.
        loop = asyncio.get_running_loop()
        self._uncounted.add(handler)
        loop.call_soon(self._uncounted.discard, handler)
        return handler


async def serve_forever(runners: list[web.AppRunner]) -> None:
    """Wait until cancelled (Ctrl-C: ``asyncio.run`` cancels the main task) or until SIGTERM,
    then clean the runners up in reverse order: each stops listening and gives the requests in
    flight up to ``SHUTDOWN_TIMEOUT`` seconds to be answered (aiohttp ``AppRunner.cleanup``).

    SIGTERM is how Kubernetes, systemd and ``serve --workers`` stop a process; as a Python
    exception it would unwind the event loop and cancel every request mid-answer, so it is
    taken by the loop instead for the time of this call."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        try:
            for runner in reversed(runners):
                await runner.cleanup()
        finally:
            # Only now: a second SIGTERM (Ctrl-C reaches the workers and, through the parent,
            # again as SIGTERM) must not cut the drain short.
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL a user can open (a wildcard address becomes 127.0.0.1)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else (f"[{host}]" if ":" in host else host)


async def _serve(config: GatewayConfig, reuse_port: bool, announce: bool) -> None:
    runner, port = await start_site(
        create_app(config), config.server.host, config.server.port, reuse_port=reuse_port
    )
    if announce:
        print(
            f"tile-gateway listening on http://{url_host(config.server.host)}:{port}/", flush=True
        )
    await serve_forever([runner])


async def _check_port(host: str, port: int) -> None:
    runner, _ = await start_site(web.Application(), host, port, reuse_port=True)
    await runner.cleanup()


def _worker(config: GatewayConfig, log_level: str) -> None:
    configure_logging(
        log_level,
        config.server.log_format,
        "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    # The parent stops the workers with SIGTERM; end like Ctrl-C so cleanup runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(config, reuse_port=True, announce=False))


def serve(config: GatewayConfig, workers: int = 1, log_level: str = "INFO") -> int:
    """Serve ``config`` in this process (``workers`` 1) or in ``workers`` processes sharing
    the port through SO_REUSEPORT; returns the exit status.

    With several workers the port must be fixed (not 0), and a ``memory`` cache is one per
    worker: a warning says so. A worker that dies ends the others (a supervisor such as
    Kubernetes restarts the whole). SIGTERM stops gracefully, like Ctrl-C. The workers share
    their metrics through a fresh temporary folder (``PROMETHEUS_MULTIPROC_DIR``, made under
    ``TMPDIR`` for the run and removed after it: see ``gateway.metrics``).
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if workers <= 1:
        with contextlib.suppress(KeyboardInterrupt):
            run(_serve(config, reuse_port=False, announce=True))
        return 0
    if config.server.port == 0:
        print("tile-gateway: --workers needs a fixed port", file=sys.stderr)
        return 2
    # Workers that cannot bind would die one by one with a traceback each: find out here, once.
    run(_check_port(config.server.host, config.server.port))
    if config.cache.effective_backend == "memory":
        log.warning(
            "%d workers with the memory cache: each worker caches on its own; "
            "configure cache.redis_url to share tiles and coalesce misses",
            workers,
        )
    # Values from an earlier run must not count: a fresh folder per run, set before the workers
    # start (they import prometheus-client, which reads it then).
    os.environ[metrics.MULTIPROC_DIR] = tempfile.mkdtemp(prefix="tile-gateway-metrics-")
    try:
        return _run_workers(config, workers, log_level)
    finally:
        shutil.rmtree(os.environ.pop(metrics.MULTIPROC_DIR), ignore_errors=True)


def _run_workers(config: GatewayConfig, workers: int, log_level: str) -> int:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(config, log_level), name=f"worker-{n}")
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    print(
        f"tile-gateway listening on http://{url_host(config.server.host)}:"
        f"{config.server.port}/ with {workers} workers",
        flush=True,
    )
    status = 0
    try:
        sentinel = multiprocessing.connection.wait([p.sentinel for p in processes])
        ended = next(p for p in processes if p.sentinel in sentinel)
        # Its sentinel fires as it exits, possibly before it can be reaped: join, then read.
        ended.join()
        if ended.pid is not None:
            metrics.worker_ended(ended.pid)
        status = ended.exitcode or 0
        log.error("worker %s ended with status %s; stopping the others", ended.name, status)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
    return status
