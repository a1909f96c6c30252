"""gateway/tracing.py against the SDK's real exporters and a real OTLP receiver, in process.

Every test configures tracing the way a deployment does, through OTEL_* variables set before
``Tracing()`` is built, and flushes with ``shutdown()`` before looking at what arrived.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace

from octogate.core.errors import UpstreamError
from octogate.gateway.tracing import (
    CONTENT_ENV,
    FIRST_TOKEN_EVENT,
    Tracing,
    input_messages,
    wanted_exporters,
)
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan

CHAT = "/v1/chat/completions"
INCOMING_TRACE = "0af7651916cd43dd8448eb211c80319c"
INCOMING_SPAN = "b7ad6b7169203331"
SECRET_PROMPT = "my secret prompt 7731"
SECRET_ANSWER = "the confidential answer 4412"
REQUEST = {
    "model": "smollm2", "stream": True, "temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "seed": 7,
    "stop": ["\n\n"], "n": 1,
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SECRET_PROMPT}],
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable of the machine's leaks into a test."""
    for name in list(os.environ):
        if name.startswith("OTEL_") or name == CONTENT_ENV:
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def make_tracing(clean_env: pytest.MonkeyPatch, receiver: OTLPReceiver) -> Iterator[Callable[..., Tracing]]:
    """Build a Tracing exporting over OTLP/gRPC to the receiver, plus any variables given."""
    made: list[Tracing] = []

    def make(capture_content: bool | None = None, **variables: str) -> Tracing:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
               "OTEL_BSP_SCHEDULE_DELAY": "50", **variables}
        for name, value in env.items():
            if value is None:
                clean_env.delenv(name, raising=False)
            else:
                clean_env.setenv(name, value)
        tracing = Tracing(capture_content)
        made.append(tracing)
        return tracing

    yield make
    for tracing in made:
        tracing.shutdown()


def asgi_scope(*headers: tuple[bytes, bytes], method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": CHAT, "scheme": "http", "http_version": "1.1",
            "headers": [(b"content-type", b"application/json"), *headers], "client": ("10.1.2.3", 50123),
            "server": ("127.0.0.1", 8000)}


def hex_ids(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


def backend_call(tracing: Tracing, request: dict[str, Any] = REQUEST, **overrides: Any):
    args = {"operation": "chat", "provider": "openai", "request_model": request["model"],
            "server_address": "vllm.internal", "server_port": 8001, "node": "general", "stream": True,
            "request": request, **overrides}
    return tracing.backend_span(**args)


# ----------------------------------------------------------------- off


def test_off_by_default_is_a_no_op(clean_env: pytest.MonkeyPatch) -> None:
    tracing = Tracing(capture_content=True)
    assert not tracing.enabled
    assert not tracing.capture_content  # nothing to capture into
    before = otel_context.get_current()
    with tracing.server_span(asgi_scope((b"traceparent", f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01".encode())),
                             CHAT) as server:
        assert server is None
        assert otel_context.get_current() is before  # no contextvar touched
        with tracing.child_span("octogate.route") as child, backend_call(tracing) as backend:
            assert child is None and backend is None
            assert otel_context.get_current() is before
            headers = {"Content-Type": "application/json"}
            assert tracing.inject(headers) is headers
            assert headers == {"Content-Type": "application/json"}
            tracing.first_token(backend)
            tracing.record_response(backend, response_model="m", input_tokens=1, output_tokens=2,
                                    finish_reasons=["stop"], response_id="x", output_text="y")
            tracing.record_error(backend, 502, "boom", "upstream_error")
        tracing.set_http_status(server, 500)
    tracing.shutdown()


@pytest.mark.parametrize("variables, expected", [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": " OTLP , console,otlp"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp_proto_http"}, ["otlp_proto_http"]),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, []),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, []),
    ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"}, []),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, ["console"]),
])
def test_which_variables_switch_tracing_on(variables: dict[str, str], expected: list[str]) -> None:
    assert wanted_exporters(variables) == expected


@pytest.mark.parametrize("switch_off", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}])
def test_switched_off_with_an_endpoint_set_sends_nothing(make_tracing: Callable[..., Tracing],
                                                         receiver: OTLPReceiver, switch_off: dict[str, str]) -> None:
    off = make_tracing(**switch_off)
    assert not off.enabled
    with off.server_span(asgi_scope(), CHAT) as span, off.child_span("octogate.probe-off"):
        assert span is None
    off.shutdown()
    # Whatever the switched-off one could have sent would be ahead of this marker.
    on = make_tracing(OTEL_SDK_DISABLED=None, OTEL_TRACES_EXPORTER=None)
    with on.child_span("octogate.probe-marker") as marker:
        trace_id, _ = hex_ids(marker)
    on.shutdown()
    receiver.wait_for(lambda spans: any(s.trace_id == trace_id for s in spans))
    assert "octogate.probe-off" not in {span.name for span in receiver.spans}


# ----------------------------------------------------------------- on


def test_a_request_makes_one_trace_continuing_the_callers(make_tracing: Callable[..., Tracing],
                                                          receiver: OTLPReceiver) -> None:
    tracing = make_tracing()
    assert tracing.enabled and not tracing.capture_content
    scope = asgi_scope((b"traceparent", f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01".encode()),
                       (b"tracestate", b"congo=t61rcWkgMzE"), (b"host", b"gw.example:8080"),
                       (b"user-agent", b"openai-python/1.40"))
    ids: dict[str, str] = {}
    sent: dict[str, str] = {}
    backend_headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}

    async def handle() -> None:  # the shape of ChatService.__call__: one task, awaits in between
        with tracing.server_span(scope, CHAT) as server:
            _, ids["server"] = hex_ids(server)
            with tracing.child_span("octogate.route", {"octogate.node": "general"}) as route:
                await asyncio.sleep(0)
                _, ids["route"] = hex_ids(route)
            with backend_call(tracing) as backend:
                _, ids["backend"] = hex_ids(backend)
                await asyncio.sleep(0.01)
                sent.update(tracing.inject(backend_headers))
                tracing.first_token(backend)
                tracing.first_token(backend)  # only the first counts
                tracing.record_response(backend, response_model="smollm2-135m", input_tokens=12, output_tokens=5,
                                        finish_reasons=["stop"], response_id="chatcmpl-1", output_text=SECRET_ANSWER)
            with tracing.child_span("octogate.history.append"):
                await asyncio.sleep(0)
            tracing.set_http_status(server, 200)
        assert not trace.get_current_span().get_span_context().is_valid  # detached again

    asyncio.run(handle())
    tracing.shutdown()
    spans = by_name(receiver.wait_for(lambda got: len([s for s in got if s.trace_id == INCOMING_TRACE]) >= 4))

    server = spans[f"POST {CHAT}"]
    assert (server.kind, server.trace_id, server.parent_span_id) == ("SERVER", INCOMING_TRACE, INCOMING_SPAN)
    assert server.span_id == ids["server"]
    assert server.attributes == {
        "http.request.method": "POST", "http.route": CHAT, "url.path": CHAT, "url.scheme": "http",
        "server.address": "gw.example", "server.port": 8080, "client.address": "10.1.2.3",
        "network.protocol.version": "1.1", "user_agent.original": "openai-python/1.40",
        "http.response.status_code": 200,
    }
    assert server.status_code == "UNSET"
    assert server.resource["service.name"] == "octogate"

    for name in ("octogate.route", "octogate.history.append"):
        assert (spans[name].kind, spans[name].parent_span_id) == ("INTERNAL", ids["server"])
    assert spans["octogate.route"].attributes == {"octogate.node": "general"}

    backend = spans["chat smollm2"]
    assert (backend.kind, backend.parent_span_id, backend.span_id) == ("CLIENT", ids["server"], ids["backend"])
    attributes = dict(backend.attributes)
    ttfc = attributes.pop("gen_ai.response.time_to_first_chunk")
    assert attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.system": "openai",
        "gen_ai.request.model": "smollm2", "gen_ai.request.stream": True, "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9, "gen_ai.request.max_tokens": 64, "gen_ai.request.seed": 7,
        "gen_ai.request.stop_sequences": ["\n\n"], "server.address": "vllm.internal", "server.port": 8001,
        "octogate.node": "general", "octogate.stream": True,
        "gen_ai.response.model": "smollm2-135m", "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 5, "gen_ai.response.finish_reasons": ["stop"],
    }
    assert 0.01 <= ttfc < 5
    assert backend.event_names == [FIRST_TOKEN_EVENT]
    assert backend.events[0].attributes == {"gen_ai.response.time_to_first_chunk": ttfc}

    # The upstream request carries the backend span's context, so vLLM's spans nest under it.
    assert sent["traceparent"] == f"00-{INCOMING_TRACE}-{ids['backend']}-01"
    assert sent["tracestate"] == "congo=t61rcWkgMzE"
    assert sent["Authorization"] == "Bearer k"
    assert "traceparent" not in backend_headers  # the backend's shared dict is left alone

    # No text of the conversation anywhere, unless opted in.
    dump = repr([(s.attributes, [e.attributes for e in s.events]) for s in spans.values()])
    assert SECRET_PROMPT not in dump and SECRET_ANSWER not in dump and "Be brief." not in dump


def test_a_request_without_traceparent_starts_a_trace(make_tracing: Callable[..., Tracing],
                                                      receiver: OTLPReceiver) -> None:
    tracing = make_tracing()
    with tracing.server_span(asgi_scope(method="BREW"), CHAT) as server:
        trace_id, _ = hex_ids(server)
        tracing.set_http_status(server, 405)
    tracing.shutdown()
    [span] = receiver.wait_for(lambda got: any(s.trace_id == trace_id for s in got)) and receiver.trace(trace_id)
    assert span.parent_span_id == ""
    assert span.name == f"HTTP {CHAT}"  # unknown methods share one name, as the HTTP conventions say
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "BREW"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("127.0.0.1", 8000)
    assert span.status_code == "UNSET"  # a 4xx is the client's, not the server's, error


def test_inject_outside_any_span_changes_nothing(make_tracing: Callable[..., Tracing]) -> None:
    tracing = make_tracing()
    headers = {"Content-Type": "application/json"}
    assert tracing.inject(headers) is headers


# ----------------------------------------------------------------- content


@pytest.mark.parametrize("env_value, argument, captured", [
    ("true", None, True), ("TRUE", None, True), ("false", None, False), (None, None, False),
    (None, True, True), ("true", False, False),
])
def test_content_only_when_opted_in(make_tracing: Callable[..., Tracing], receiver: OTLPReceiver,
                                    env_value: str | None, argument: bool | None, captured: bool) -> None:
    tracing = make_tracing(argument, **{CONTENT_ENV: env_value})
    assert tracing.capture_content is captured
    with backend_call(tracing, stream=False) as backend:
        trace_id, _ = hex_ids(backend)
        tracing.record_response(backend, response_model=None, input_tokens=None, output_tokens=None,
                                finish_reasons=["tool_calls"], response_id=None, output_text=SECRET_ANSWER)
    tracing.shutdown()
    receiver.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    [span] = receiver.trace(trace_id)
    assert "gen_ai.request.stream" not in span.attributes and span.attributes["octogate.stream"] is False
    if not captured:
        assert "gen_ai.input.messages" not in span.attributes and "gen_ai.output.messages" not in span.attributes
        assert SECRET_PROMPT not in repr(span.attributes) and SECRET_ANSWER not in repr(span.attributes)
        return
    assert json.loads(span.attributes["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": SECRET_PROMPT}]},
    ]
    assert json.loads(span.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": SECRET_ANSWER}], "finish_reason": "tool_call"},
    ]


def test_input_messages_follow_the_genai_schema() -> None:
    messages = [
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy, 14C"},
    ]
    assert input_messages(messages) == [
        {"role": "user", "name": "ann", "parts": [
            {"type": "text", "content": "What is in this picture?"},
            {"type": "uri", "modality": "image", "uri": "https://example.com/cat.png"},
            {"type": "blob", "modality": "image", "mime_type": "image/png", "content": "iVBORw0K"},
        ]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "weather",
                                         "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy, 14C"}]},
    ]


# ----------------------------------------------------------------- errors


def test_errors_mark_spans_failed(make_tracing: Callable[..., Tracing], receiver: OTLPReceiver) -> None:
    tracing = make_tracing()
    with tracing.server_span(asgi_scope(), CHAT) as server:
        trace_id, _ = hex_ids(server)
        with backend_call(tracing, stream=False) as backend:
            tracing.record_error(backend, 504, "Upstream did not answer within 5s.", "upstream_timeout")
        with pytest.raises(UpstreamError), tracing.child_span("octogate.history.read"):
            raise UpstreamError(502, "history store unreachable", code="upstream_unreachable")
        with pytest.raises(KeyError), tracing.child_span("octogate.reformat"):
            raise KeyError("choices")
        tracing.set_http_status(server, 504)
    tracing.shutdown()
    spans = by_name(receiver.wait_for(lambda got: len([s for s in got if s.trace_id == trace_id]) >= 4))

    backend = spans["chat smollm2"]
    assert (backend.status_code, backend.status_message) == ("ERROR", "Upstream did not answer within 5s.")
    assert backend.attributes["error.type"] == "upstream_timeout"
    assert backend.attributes["octogate.error.status"] == 504
    history = spans["octogate.history.read"]
    assert (history.status_code, history.attributes["error.type"]) == ("ERROR", "upstream_unreachable")
    assert (spans["octogate.reformat"].status_code, spans["octogate.reformat"].attributes["error.type"]) == \
        ("ERROR", "KeyError")
    server = spans[f"POST {CHAT}"]
    assert (server.status_code, server.attributes["error.type"]) == ("ERROR", "504")
    assert server.attributes["http.response.status_code"] == 504


def test_a_cancelled_call_is_noted_not_failed(make_tracing: Callable[..., Tracing], receiver: OTLPReceiver) -> None:
    tracing = make_tracing()
    ids: dict[str, str] = {}

    async def handle() -> None:
        with backend_call(tracing) as backend:
            ids["trace"], _ = hex_ids(backend)
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(handle())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    tracing.shutdown()
    receiver.wait_for(lambda got: any(s.trace_id == ids["trace"] for s in got))
    [span] = receiver.trace(ids["trace"])
    assert (span.attributes["error.type"], span.status_code) == ("cancelled", "UNSET")


# ----------------------------------------------------------------- configuration


def test_http_protobuf_exporter(make_tracing: Callable[..., Tracing], receiver: OTLPReceiver) -> None:
    tracing = make_tracing(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
                           OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    with tracing.child_span("octogate.over-http") as span:
        trace_id, _ = hex_ids(span)
    tracing.shutdown()
    receiver.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    assert [s.transport for s in receiver.trace(trace_id)] == ["http"]


def test_traces_endpoint_and_resource_variables(make_tracing: Callable[..., Tracing], receiver: OTLPReceiver) -> None:
    tracing = make_tracing(OTEL_EXPORTER_OTLP_ENDPOINT=None, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint,
                           OTEL_SERVICE_NAME="gateway-eu",
                           OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test,service.name=ignored")
    with tracing.child_span("octogate.resource") as span:
        trace_id, _ = hex_ids(span)
    tracing.shutdown()
    receiver.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    [received] = receiver.trace(trace_id)
    assert received.transport == "grpc"
    assert received.resource["service.name"] == "gateway-eu"  # OTEL_SERVICE_NAME wins, as the spec says
    assert received.resource["deployment.environment.name"] == "test"
    assert received.scope == "octogate"


def test_unsampled_requests_still_propagate(make_tracing: Callable[..., Tracing], receiver: OTLPReceiver) -> None:
    tracing = make_tracing(OTEL_TRACES_SAMPLER="always_off")
    with tracing.server_span(asgi_scope(), CHAT) as server, backend_call(tracing) as backend:
        assert not backend.is_recording()
        tracing.first_token(backend)
        tracing.record_response(backend, response_model="m", input_tokens=1, output_tokens=1,
                                finish_reasons=["stop"], response_id="r")
        tracing.record_error(backend, 502, "x", "upstream_error")
        headers = tracing.inject({})
        tracing.set_http_status(server, 500)
        trace_id, span_id = hex_ids(backend)
    version, sent_trace, sent_span, flags = headers["traceparent"].split("-")
    assert (sent_trace, sent_span) == (trace_id, span_id)
    assert not int(flags, 16) & 1  # the sampled flag is off, so the upstream need not record either
    tracing.shutdown()  # exports synchronously whatever is left, so anything sent has arrived
    assert receiver.trace(trace_id) == []


def test_console_exporter_prints_spans(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("OTEL_TRACES_EXPORTER", "console")
    tracing = Tracing()
    assert tracing.enabled
    with tracing.child_span("octogate.reformat", {"octogate.node": "general"}):
        pass
    tracing.shutdown()
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "octogate.reformat"
    assert printed["attributes"] == {"octogate.node": "general"}
    assert printed["resource"]["attributes"]["service.name"] == "octogate"
