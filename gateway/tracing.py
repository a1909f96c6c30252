"""OpenTelemetry tracing, configured only by the standard OTEL_* environment variables.

Off by default, and then it costs nothing: every helper checks one boolean (or that its span is
None) and returns, without creating a span or touching a contextvar; the SDK and its exporters
are not even imported. Tracing turns on when an exporter is asked for:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (OTLP), or
- ``OTEL_TRACES_EXPORTER`` names one: ``otlp``, ``console``, a comma list of them, or the Python
  SDK's aliases ``otlp_proto_grpc`` / ``otlp_proto_http``. An explicit ``none`` wins over an
  endpoint, so a deployment can switch tracing off without unsetting its collector address;
- ``OTEL_SDK_DISABLED=true`` switches everything off.

The OTLP protocol comes from ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``grpc``, the default, or ``http/protobuf``). Everything else is read by the SDK itself: the
exporters' endpoint, headers, TLS, timeout and compression variables, ``OTEL_BSP_*`` for the
batch processor, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_SPAN_*_LIMIT`` and
``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` (which bounds captured prompts), ``OTEL_PROPAGATORS``
(default W3C ``tracecontext,baggage``) and ``OTEL_RESOURCE_ATTRIBUTES``. The service is called
``OTEL_SERVICE_NAME``, or "octogate".

Prompt and completion text goes into spans only when opted in (``OCTOGATE_TRACE_CONTENT=true``
or the constructor's ``capture_content``): it is user data, and the GenAI conventions make it
Opt-In. Without it no span carries any message text.

Spans of one request::

    SERVER   "POST /v1/chat/completions"   (HTTP server semconv, continues an incoming traceparent)
      INTERNAL "octogate.route", "octogate.history.read", ...   (child_span)
      CLIENT   "chat {model}"               (GenAI inference span, backend_span)
                 -> inject() puts its context in the upstream request's headers, so vLLM's or
                    SGLang's own spans join the same trace.

Conventions followed: HTTP server spans per semantic conventions v1.44.0 (stable HTTP:
``http.request.method``, ``url.path``, ``url.scheme``, ``http.route``, ``server.address/port``,
``client.address``, ``http.response.status_code``, ``error.type``; 5xx is an error, 4xx is not).
The GenAI attributes follow the "Client Inference" span of the OpenTelemetry GenAI semantic
conventions (the semantic-conventions-genai repository they moved to after v1.44.0, still in
Development): span name ``{gen_ai.operation.name} {gen_ai.request.model}``, kind CLIENT,
``gen_ai.provider.name`` (plus the deprecated ``gen_ai.system`` with the same value, which
collectors built for v1.36 and earlier still key on), ``gen_ai.request.*``,
``gen_ai.response.*``, ``gen_ai.usage.input_tokens/output_tokens``, and the opt-in
``gen_ai.input.messages`` / ``gen_ai.output.messages`` in their role/parts JSON schema, recorded as
JSON strings. Those conventions define no time-to-first-token event, only the span attribute
``gen_ai.response.time_to_first_chunk`` (seconds): ``first_token`` sets it and also adds an event
``gen_ai.first_token`` carrying it, so the moment shows on a trace timeline.

Contexts are attached with contextvars inside the context managers, which is right for ASGI: a
request is one task, so a span entered and left in the same coroutine nests everything awaited
in between. Do not hold one of these spans open across an async generator's ``yield``: the
generator may be closed from another context, where the detach cannot work.

Build ``Tracing`` in each worker (the app factory), never at import time, like ``Metrics``: the
batch processor's export thread does not survive a fork.
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

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from octogate.core.errors import OpenAIError

log = logging.getLogger("octogate")

CONTENT_ENV = "OCTOGATE_TRACE_CONTENT"
DEFAULT_SERVICE_NAME = "octogate"
FIRST_TOKEN_EVENT = "gen_ai.first_token"

# Attribute names. The GenAI ones are spelled out rather than imported: the semconv package keeps
# them in an "incubating" module that marks them deprecated (moved to the GenAI repository).
ERROR_TYPE = "error.type"
HTTP_STATUS = "http.response.status_code"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"

_OTLP_NAMES = {"otlp": None, "otlp_proto_grpc": "grpc", "otlp_proto_http": "http/protobuf"}
_EXPORTER_NAMES = {*_OTLP_NAMES, "console"}
_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY",
                            "TRACE"})
_TRUE = {"true", "1", "yes", "on"}

# OpenAI request fields -> GenAI request attributes, for the numeric sampling knobs copied as they are.
_FLOAT_PARAMS = (("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
                 ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                 ("presence_penalty", "gen_ai.request.presence_penalty"))
_INT_PARAMS = (("seed", "gen_ai.request.seed"), ("top_k", "gen_ai.request.top_k"))
_OUTPUT_TYPES = {"text": "text", "json_object": "json", "json_schema": "json"}
# OpenAI's finish reasons that the GenAI output-message schema spells differently.
_FINISH_REASONS = {"tool_calls": "tool_call", "function_call": "tool_call"}

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
        carrier: dict[str, str] = {}
        attributes: dict[str, Any] = {"http.route": route, "url.path": scope.get("path", ""),
                                      "url.scheme": scope.get("scheme", "http")}
        host = None
        for name, value in scope.get("headers", ()):
            if name in self._fields:
                carrier[name.decode("latin-1")] = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"user-agent":
                attributes["user_agent.original"] = value.decode("latin-1")
        method = scope.get("method", "GET")
        if method in _KNOWN_METHODS:
            attributes["http.request.method"] = method
            span_name = f"{method} {route}"
        else:  # semconv: unknown methods are one bucket, so a scanner cannot blow up cardinality
            attributes["http.request.method"] = "_OTHER"
            attributes["http.request.method_original"] = method
            span_name = f"HTTP {route}"
        if host:
            address, port = _split_host(host)
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        elif scope.get("server"):
            attributes["server.address"], server_port = scope["server"][0], scope["server"][1]
            if server_port is not None:
                attributes["server.port"] = server_port
        if scope.get("client"):
            attributes["client.address"] = scope["client"][0]
        if scope.get("http_version"):
            attributes["network.protocol.version"] = scope["http_version"]
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
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
                                      "gen_ai.system": provider, "gen_ai.request.model": request_model,
                                      "octogate.node": node, "octogate.stream": stream}
        if stream:  # semconv: set if and only if the request streams
            attributes["gen_ai.request.stream"] = True
        if server_address:
            attributes["server.address"] = server_address
            if server_port is not None:
                attributes["server.port"] = server_port
        _request_attributes(request, attributes)
        if self.capture_content and isinstance(request.get("messages"), list):
            attributes[INPUT_MESSAGES] = orjson.dumps(input_messages(request["messages"])).decode()
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
            # A finish reason that never came is "error" in the GenAI schema, where the field is required.
            reason = finish_reasons[0] if finish_reasons else "error"
            message = {"role": "assistant", "parts": [{"type": "text", "content": output_text}],
                       "finish_reason": _FINISH_REASONS.get(reason, reason)}
            span.set_attribute(OUTPUT_MESSAGES, orjson.dumps([message]).decode())

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


def _request_attributes(request: Mapping[str, Any], attributes: dict[str, Any]) -> None:
    """Copy the request's sampling parameters the GenAI conventions name; never any text."""
    for field, key in _FLOAT_PARAMS:
        value = request.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[key] = float(value)
    for field, key in _INT_PARAMS:
        value = request.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[key] = value
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        attributes["gen_ai.request.max_tokens"] = max_tokens
    n = request.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        attributes["gen_ai.request.choice.count"] = n
    stop = request.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in _OUTPUT_TYPES:
        attributes["gen_ai.output.type"] = _OUTPUT_TYPES[response_format["type"]]
    effort = request.get("reasoning_effort")
    if isinstance(effort, str):
        attributes["gen_ai.request.reasoning.level"] = effort


def input_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages in the GenAI conventions' input-message schema (role + typed parts)."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        parts: list[dict[str, Any]] = []
        content = message.get("content")
        if role == "tool":
            parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"),
                          "response": _text_of(content)})
        elif isinstance(content, str):
            parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            parts.extend(_content_part(part) for part in content if isinstance(part, dict))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name", ""),
                          "arguments": _arguments(function.get("arguments"))})
        entry: dict[str, Any] = {"role": role, "parts": parts}
        if message.get("name"):
            entry["name"] = message["name"]
        out.append(entry)
    return out


def _content_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "content": part.get("text", "")}
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        if url.startswith("data:"):  # data:image/png;base64,....
            header, _, data = url.partition(",")
            return {"type": "blob", "modality": "image", "mime_type": header[5:].split(";")[0] or None,
                    "content": data}
        return {"type": "uri", "modality": "image", "uri": url}
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        return {"type": "blob", "modality": "audio", "mime_type": f"audio/{audio.get('format', 'wav')}",
                "content": audio.get("data", "")}
    if kind == "file":
        file = part.get("file") or {}
        if file.get("file_id"):
            return {"type": "file", "modality": "document", "file_id": file["file_id"]}
        return {"type": "blob", "modality": "document", "content": file.get("file_data", "")}
    return part  # the schema's generic part: any object with a "type"


def _text_of(content: Any) -> Any:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def _split_host(host: str) -> tuple[str, int | None]:
    """``example.com:8080`` / ``[::1]:8080`` / ``example.com`` -> address, port."""
    address, sep, port = host.rpartition(":")
    if not sep or not port.isdigit():
        address, port = host, ""
    return address.strip("[]"), int(port) if port else None


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
