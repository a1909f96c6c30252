"""OpenTelemetry tracing: the ``Tracing`` object, its exporters and the spans of one request.

Configured only by the standard ``OTEL_*`` variables (``docs/observability.md`` lists them). Off
by default, and then it costs nothing: every helper checks one boolean (or that its span is None)
and returns; the SDK is not even imported. It turns on when ``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``
is set or ``OTEL_TRACES_EXPORTER`` names ``otlp``/``console`` (an explicit ``none`` or
``OTEL_SDK_DISABLED=true`` wins). Message text goes into spans only when opted in
(``OCTOGATE_TRACE_CONTENT=true`` or ``capture_content``). Attributes: ``trace_attributes.py``.

Spans of one request: SERVER "POST /v1/chat/completions" (continues an incoming traceparent) >
INTERNAL "octogate.route", "octogate.history.read", ... (``child_span``) and CLIENT "chat {model}"
(``backend_span``; ``inject`` carries its context to vLLM or SGLang, whose spans join the trace).

Contexts are attached with contextvars inside the context managers (an ASGI request is one task);
do not hold a span open across an async generator's ``yield``. Build ``Tracing`` in each worker,
never at import time: the batch processor's export thread does not survive a fork.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from octogate.core.errors import OpenAIError
from octogate.gateway.trace_attributes import (
    ERROR_TYPE,
    FIRST_TOKEN_EVENT,
    HTTP_STATUS,
    OUTPUT_MESSAGES,
    TIME_TO_FIRST_CHUNK,
    backend_attributes,
    input_messages,
    output_messages,
    server_attributes,
)

log = logging.getLogger("octogate")

CONTENT_ENV = "OCTOGATE_TRACE_CONTENT"
DEFAULT_SERVICE_NAME = "octogate"
__all__ = ["CONTENT_ENV", "FIRST_TOKEN_EVENT", "Tracing", "input_messages", "otlp_protocol", "wanted_exporters"]

_OTLP_NAMES = {"otlp": None, "otlp_proto_grpc": "grpc", "otlp_proto_http": "http/protobuf"}
_EXPORTER_NAMES = {*_OTLP_NAMES, "console"}
_TRUE = {"true", "1", "yes", "on"}

# What every helper hands out while tracing is off: one shared, reusable do-nothing context manager.
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def wanted_exporters(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The trace exporters the environment asks for; empty means tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if raw:
        names = [name.strip().lower() for name in raw.split(",") if name.strip()]
        if "none" in names:
            return []
        for name in names:
            if name not in _EXPORTER_NAMES:
                log.warning("tracing: OTEL_TRACES_EXPORTER names %r, which octogate does not ship; ignored", name)
        return list(dict.fromkeys(name for name in names if name in _EXPORTER_NAMES))
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def otlp_protocol(environ: Mapping[str, str] = os.environ) -> str:
    return (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc").strip().lower()


class Tracing:
    """The gateway's tracer. ``enabled`` is False unless the environment asks for an exporter.

    ``capture_content`` is True only when tracing is on and content capture was opted into, so a
    caller may gate work that only feeds content attributes (assembling a streamed answer) on it.
    """

    def __init__(self, capture_content: bool | None = None) -> None:
        self.enabled = False
        self.capture_content = False
        self._provider: Any = None
        self._tracer: trace.Tracer | None = None
        self._propagator: Any = None
        self._fields: frozenset[bytes] = frozenset()
        names = wanted_exporters()
        if not names:
            return
        exporters = [exporter for exporter in map(_make_exporter, names) if exporter is not None]
        if not exporters:
            return
        from opentelemetry.propagate import get_global_textmap
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        version = _package_version()
        self._provider = TracerProvider(resource=_resource(version))
        for exporter in exporters:
            self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("octogate", version)
        # Other instrumentation in the process (HTTP clients, litellm) joins ours, unless something
        # else installed a provider first. The SDK allows setting the global one once per process.
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(self._provider)
        self._propagator = get_global_textmap()
        self._fields = frozenset(field.lower().encode("latin-1") for field in self._propagator.fields)
        if capture_content is None:
            capture_content = os.environ.get(CONTENT_ENV, "").strip().lower() in _TRUE
        self.capture_content = bool(capture_content)
        self.enabled = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every finished span now (tests; a worker about to exit)."""
        return self._provider.force_flush(timeout_millis) if self._provider is not None else True

    def shutdown(self) -> None:
        """Flush what is buffered and stop the export threads. Safe to call more than once."""
        provider, self._provider = self._provider, None
        self.enabled = False
        self.capture_content = False
        if provider is not None:
            provider.shutdown()

    # ----------------------------------------------------------------- spans
    def server_span(self, scope: dict[str, Any], route: str) -> AbstractContextManager[Span | None]:
        """The SERVER span of one HTTP request, the parent of everything the request does.

        Continues the trace of an incoming W3C ``traceparent``/``tracestate``. The caller reports
        the answer with ``set_http_status``.
        """
        if not self.enabled:
            return _NO_SPAN
        span_name, carrier, attributes = server_attributes(scope, route, self._fields)
        parent = self._propagator.extract(carrier)
        span = self._tracer.start_span(span_name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        return _activate(span, parent)

    def set_http_status(self, span: Span | None, status: int) -> None:
        """The answer's HTTP status; a 5xx marks the span as failed (a 4xx is the client's doing)."""
        if not _live(span):
            return
        span.set_attribute(HTTP_STATUS, status)
        if status >= 500:
            if not _has_error(span):
                span.set_attribute(ERROR_TYPE, str(status))
            span.set_status(Status(StatusCode.ERROR))

    def child_span(self, name: str, attributes: dict[str, Any] | None = None) -> AbstractContextManager[Span | None]:
        """An INTERNAL span under the current one: a routing decision, a history read or write."""
        if not self.enabled:
            return _NO_SPAN
        span = self._tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
        return _activate(span)

    def backend_span(self, *, operation: str, provider: str, request_model: str, server_address: str | None,
                     server_port: int | None, node: str, stream: bool,
                     request: dict[str, Any]) -> AbstractContextManager[Span | None]:
        """The CLIENT span of one call to a backend (GenAI inference span). Call ``inject`` inside it."""
        if not self.enabled:
            return _NO_SPAN
        attributes = backend_attributes(
            operation=operation, provider=provider, request_model=request_model, server_address=server_address,
            server_port=server_port, node=node, stream=stream, request=request, capture_content=self.capture_content)
        name = f"{operation} {request_model}" if request_model else operation
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        return _activate(span)

    # ----------------------------------------------------------------- recording
    def record_response(self, span: Span | None, *, response_model: str | None, input_tokens: int | None,
                        output_tokens: int | None, finish_reasons: list[str] | None, response_id: str | None,
                        output_text: str | None = None) -> None:
        if not _live(span):
            return
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        if response_id:
            span.set_attribute("gen_ai.response.id", response_id)
        if input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", [str(reason) for reason in finish_reasons])
        if output_text is not None and self.capture_content:
            span.set_attribute(OUTPUT_MESSAGES, output_messages(output_text, finish_reasons))

    def first_token(self, span: Span | None) -> None:
        """Mark a stream's first chunk: ``gen_ai.response.time_to_first_chunk`` on the span, and an event.

        Only the first call counts, so calling it for every chunk is harmless (if wasteful).
        """
        if not _live(span) or span.attributes.get(TIME_TO_FIRST_CHUNK) is not None:
            return
        now = time.time_ns()  # the clock the SDK stamps spans with
        seconds = max(0, now - span.start_time) / 1e9
        span.set_attribute(TIME_TO_FIRST_CHUNK, seconds)
        span.add_event(FIRST_TOKEN_EVENT, {TIME_TO_FIRST_CHUNK: seconds}, timestamp=now)

    def record_error(self, span: Span | None, status: int, message: str, error_type: str) -> None:
        """The operation failed: ``error.type`` (a low-cardinality class, e.g. "upstream_timeout") and ERROR."""
        if not _live(span):
            return
        span.set_attribute(ERROR_TYPE, error_type or str(status))
        span.set_attribute("octogate.error.status", status)
        span.set_status(Status(StatusCode.ERROR, message))

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` plus the current span's ``traceparent``/``tracestate``, in a new dict.

        The given dict is never changed (backends share theirs across requests); with tracing off,
        or no span active, it is returned as it is.
        """
        if not self.enabled or not trace.get_current_span().get_span_context().is_valid:
            return headers
        carrier = dict(headers)
        self._propagator.inject(carrier)
        return carrier


@contextmanager
def _activate(span: Span, context: otel_context.Context | None = None) -> Iterator[Span]:
    """Make ``span`` current until the block ends, then end it; an exception escaping marks it failed."""
    token = otel_context.attach(trace.set_span_in_context(span, context))
    try:
        yield span
    except asyncio.CancelledError:
        # The client went away or the server is stopping: worth knowing, but not a failure.
        if span.is_recording() and not _has_error(span):
            span.set_attribute(ERROR_TYPE, "cancelled")
        raise
    except Exception as exc:
        if span.is_recording() and span.status.status_code is not StatusCode.ERROR:
            error_type = (exc.code or exc.type) if isinstance(exc, OpenAIError) else None
            span.set_attribute(ERROR_TYPE, error_type or type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()


def _live(span: Span | None) -> bool:
    """A span to record on: tracing is on and the sampler kept it (a dropped one is non-recording)."""
    return span is not None and span.is_recording()


def _has_error(span: Span) -> bool:
    return span.attributes.get(ERROR_TYPE) is not None


def _make_exporter(name: str) -> Any:
    """One span exporter; a configuration the SDK refuses is logged and skipped, never fatal."""
    try:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter
            return ConsoleSpanExporter(out=sys.stdout)  # today's stdout, not the one when the SDK was imported
        protocol = _OTLP_NAMES[name] or otlp_protocol()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        else:
            log.warning("tracing: OTLP protocol %r is not supported (grpc, http/protobuf); no OTLP export", protocol)
            return None
        return OTLPSpanExporter()
    except Exception:
        log.exception("tracing: cannot build the %s span exporter; continuing without it", name)
        return None


def _resource(version: str | None) -> Any:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, SDK facts), named octogate by default."""
    from opentelemetry.sdk.resources import Resource

    detected = Resource.create()
    attributes = dict(detected.attributes)
    if str(attributes.get("service.name", "")).startswith("unknown_service"):
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    if version:
        attributes.setdefault("service.version", version)
    return Resource(attributes, detected.schema_url)


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("octogate")
    except PackageNotFoundError:
        return None
