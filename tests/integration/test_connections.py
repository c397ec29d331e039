"""Client connections of a real gateway on a socket, seen through raw sockets: idle and
half-sent ones are closed after ``server.keepalive_timeout``, and connections beyond
``server.max_client_connections`` are closed at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.server import start_site
from tests.conftest import gateway_config
from tests.integration.conftest import FakeUpstream

KEEPALIVE = 0.5
# Generous: each wait ends as soon as the server acts.
MARGIN = 5.0
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve(fake_upstream: FakeUpstream) -> AsyncIterator[Serve]:
    """``await serve(**server) -> port`` of a gateway started as ``tile-gateway serve`` starts
    it (``start_site``)."""
    runners: list[web.AppRunner] = []

    async def start(**server: object) -> int:
        config = gateway_config({"fake": {"url": fake_upstream.url}}, **server)
        runner, port = await start_site(create_app(config), "127.0.0.1", 0)
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


async def connect(port: int) -> Streams:
    return await asyncio.open_connection("127.0.0.1", port)


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer's head and body (by its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the server closes the connection (reset counts as closed)."""
    try:
        async with asyncio.timeout(KEEPALIVE + MARGIN):
            return await reader.read()
    except ConnectionResetError:
        return b""


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(serve: Serve) -> None:
    port = await serve(keepalive_timeout=KEEPALIVE)
    never_asked, _ = await connect(port)
    assert await until_closed(never_asked) == b""
    reader, writer = await connect(port)
    writer.write(REQUEST)
    # The answer, then nothing more: the kept-alive connection is closed once idle too long.
    assert (await until_closed(reader)).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_request_whose_headers_trickle_in_is_dropped_after_the_timeout(
    serve: Serve,
) -> None:
    port = await serve(keepalive_timeout=KEEPALIVE)
    reader, writer = await connect(port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> None:
        # A header line every tenth of a second, never the blank line that ends them.
        for number in range(1000):
            writer.write(b"X-Slow-%d: 1\r\n" % number)
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    try:
        assert await until_closed(reader) == b""
    finally:
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await trickling
    writer.close()


async def test_connections_beyond_the_limit_are_closed_at_once(serve: Serve) -> None:
    port = await serve(max_client_connections=2)
    held = [await connect(port) for _ in range(2)]
    for reader, writer in held:
        writer.write(REQUEST)
        assert (await answer(reader)).startswith(b"HTTP/1.1 200 OK\r\n")
    extra_reader, extra_writer = await connect(port)
    extra_writer.write(REQUEST)
    assert await until_closed(extra_reader) == b""
    # A held connection is still served: only new ones were refused.
    held[0][1].write(REQUEST)
    assert (await answer(held[0][0])).startswith(b"HTTP/1.1 200 OK\r\n")

    held[1][1].close()
    # Once the server has seen that one go, a new connection is served again.
    async with asyncio.timeout(MARGIN):
        while True:
            reader, writer = await connect(port)
            writer.write(REQUEST)
            try:
                head = await answer(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                await asyncio.sleep(0.05)
                continue
            break
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()
    held[0][1].close()
