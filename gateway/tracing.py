"""OpenTelemetry traces, off unless ``server.tracing.enabled`` (``config.TracingConfig``).

Only imported when tracing is on, so the gateway runs without the ``otel`` extra and a
gateway without tracing does no per-request work for it. When on, the OpenTelemetry
instrumentations of the libraries the gateway uses make the spans:

- a SERVER span per request (opentelemetry-instrumentation-aiohttp-server), around every
  middleware of the root application, so answers from the in-process cache have one too;
- a CLIENT child per upstream HTTP call (exportImage, service info, token services, the
  reverse proxy's calls: opentelemetry-instrumentation-aiohttp-client), which also sends the
  W3C ``traceparent`` header upstream;
- a CLIENT child per Redis command, script or pipeline, a cache round trip
  (opentelemetry-instrumentation-redis; arguments are never recorded, only ``GET ?``).

Spans go in batches to the OTLP/HTTP endpoint (https://opentelemetry.io/docs/specs/otlp/).
A token or API key is never in a span: the value of every credential query parameter
(``access.secret_params``: ``token`` and ``access.api_key_param``) in a span's attributes is
replaced by ``[redacted]`` as the span starts, before any exporter sees it; headers are not
recorded (the instrumentations record none unless told to by environment variables).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from gateway.access import redactor, secret_params
from gateway.config import GatewayConfig

# One provider a process, made by the first ``traced`` (a test process may make several apps).
_PROVIDER: TracerProvider | None = None
# Seconds a shutting-down app waits for its last spans to be sent.
_FLUSH_TIMEOUT = 5.0


class _Redacting(SpanProcessor):
    """Replaces the values of the credential query parameters ``names`` in every string
    attribute of a span as it starts (URLs and queries are set at its creation)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._redact = redactor(names)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for key, value in list((span.attributes or {}).items()):
            if isinstance(value, str):
                redacted = self._redact(value)
                if redacted != value:
                    span.set_attribute(key, redacted)


def _provider(config: GatewayConfig) -> TracerProvider:
    """This process's tracer provider: the OTLP/HTTP exporter behind a batch processor, the
    client instrumentations (aiohttp, Redis) on, made on the first call."""
    global _PROVIDER
    if _PROVIDER is None:
        tracing = config.server.tracing
        # OTEL_SERVICE_NAME, when set, is the operator's choice (the SDK reads it).
        named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: tracing.service_name}
        provider = TracerProvider(resource=Resource.create(named))
        provider.add_span_processor(_Redacting(secret_params(config.access)))
        endpoint = str(tracing.endpoint) if tracing.endpoint is not None else None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        AioHttpClientInstrumentor().instrument(tracer_provider=provider)
        RedisInstrumentor().instrument(tracer_provider=provider)
        _PROVIDER = provider
    return _PROVIDER


@contextmanager
def traced(config: GatewayConfig) -> Iterator[None]:
    """Trace every request of the root application made in the body of the ``with`` (see the
    module docstring), and send the spans left when it shuts down.

    The server instrumentation adds its middleware to every ``web.Application`` made while it
    is on: it is on only for the body, where the root application alone is made, so that the
    fronts mounted on it (sub-applications, made before) do not open a second server span.
    """
    provider = _provider(config)
    instrumentor = AioHttpServerInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


async def flushed(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: at shutdown, send the spans not yet sent (in a thread: the exporter
    blocks), at most ``_FLUSH_TIMEOUT`` seconds."""
    yield
    if _PROVIDER is not None:
        await asyncio.to_thread(_PROVIDER.force_flush, int(_FLUSH_TIMEOUT * 1000))
