"""A real OTLP trace receiver on loopback, for testing what the gateway exports.

It is what a collector is to the SDK: a gRPC server implementing
``opentelemetry.proto.collector.trace.v1.TraceService`` (``endpoint``), and beside it the OTLP/HTTP
protobuf endpoint ``POST /v1/traces`` (``http_endpoint``), so both of the SDK's real exporters can
be pointed at it. Every span received is decoded into a ``ReceivedSpan`` (ids as hex, attributes
and events as plain Python values) and kept in a thread-safe list; ``wait_for`` blocks until the
spans satisfy a test's predicate, since exporters deliver from their own threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

_KINDS = {trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED", trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
          trace_pb2.Span.SPAN_KIND_SERVER: "SERVER", trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
          trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER", trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER"}
_STATUSES = {trace_pb2.Status.STATUS_CODE_UNSET: "UNSET", trace_pb2.Status.STATUS_CODE_OK: "OK",
             trace_pb2.Status.STATUS_CODE_ERROR: "ERROR"}


@dataclass
class ReceivedEvent:
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


@dataclass
class ReceivedSpan:
    name: str
    kind: str  # "SERVER", "CLIENT", "INTERNAL", ...
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any]
    events: list[ReceivedEvent]
    status_code: str  # "UNSET", "OK" or "ERROR"
    status_message: str
    resource: dict[str, Any]
    scope: str
    transport: str  # "grpc" or "http"

    @property
    def event_names(self) -> list[str]:
        return [event.name for event in self.events]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    name=span.name, kind=_KINDS.get(span.kind, str(span.kind)), trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                    start_time_unix_nano=span.start_time_unix_nano, end_time_unix_nano=span.end_time_unix_nano,
                    attributes=_attributes(span.attributes),
                    events=[ReceivedEvent(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in span.events],
                    status_code=_STATUSES.get(span.status.code, str(span.status.code)),
                    status_message=span.status.message, resource=resource, scope=scope_spans.scope.name,
                    transport=transport,
                ))
    return spans


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver):
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 (the generated servicer's name)
        self.receiver._add(decode(request, "grpc"))
        return trace_service_pb2.ExportTraceServiceResponse()


class _HTTPHandler(BaseHTTPRequestHandler):
    receiver: OTLPReceiver

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404 if self.path != "/v1/traces" else 415)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip
            body = gzip.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        self.receiver._add(decode(request, "http"))
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class OTLPReceiver:
    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.port = 0
        self.http_port = 0

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> OTLPReceiver:
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._grpc)
        self.port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        handler = type("Handler", (_HTTPHandler,), {"receiver": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """For the gRPC exporter: ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        """For the HTTP exporter: a base URL, to which it appends ``/v1/traces`` itself."""
        return f"http://127.0.0.1:{self.http_port}"

    # ----------------------------------------------------------------- spans
    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], Any], timeout: float = 10.0) -> list[ReceivedSpan]:
        """Block until ``predicate(spans received so far)`` is truthy; return those spans.

        Raises AssertionError naming what did arrive if ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                spans = list(self._spans)
                if predicate(spans):
                    return spans
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"spans not received within {timeout}s; got {[s.name for s in spans]}")
                self._changed.wait(left)
