"""One trace per request, end to end: the openai SDK (with a W3C traceparent) -> `octogate serve`
(exporting over OTLP/gRPC to a real receiver in the test) -> the scripted upstream, which must
receive the trace context of the backend span."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import scripted_graph
from tests.otlp_receiver import OTLPReceiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SECRET_PROMPT = "the secret prompt text"


@pytest.fixture(scope="module")
def receiver():
    with OTLPReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced(upstream, gateway_factory, receiver):
    graph = scripted_graph(upstream)
    graph["history"] = {"key_prefix": f"octogate-test:{uuid.uuid4().hex[:8]}:"}
    return gateway_factory(graph, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "octogate-under-test",
    })


def trace_of(receiver, trace_id: str, names: set[str]):
    spans = receiver.wait_for(lambda got: names <= {s.name for s in got if s.trace_id == trace_id}, timeout=15)
    return {s.name: s for s in spans if s.trace_id == trace_id}


def test_a_streamed_request_is_one_trace_continuing_the_clients(traced, receiver, upstream):
    client = traced.client()
    stream = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": SECRET_PROMPT}], stream=True,
        stream_options={"include_usage": True}, temperature=0.4,
        extra_headers={"traceparent": TRACEPARENT, "X-Conversation-Id": f"t-{uuid.uuid4().hex}"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == f"echo: {SECRET_PROMPT}"

    spans = trace_of(receiver, CLIENT_TRACE, {"POST /v1/chat/completions", "chat echo",
                                              "octogate.history.read", "octogate.history.append"})
    server, backend = spans["POST /v1/chat/completions"], spans["chat echo"]
    assert server.kind == "SERVER" and server.parent_span_id == CLIENT_SPAN
    assert server.attributes["http.response.status_code"] == 200
    assert server.resource["service.name"] == "octogate-under-test"
    # server -> backend, and the history hops beside it
    assert backend.kind == "CLIENT" and backend.parent_span_id == server.span_id
    assert spans["octogate.history.read"].parent_span_id == server.span_id
    assert spans["octogate.history.append"].parent_span_id == backend.span_id
    attrs = backend.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == "echo"
    assert attrs["gen_ai.request.temperature"] == 0.4
    assert attrs["gen_ai.response.model"] == "echo"
    assert attrs["gen_ai.usage.input_tokens"] == 5 and attrs["gen_ai.usage.output_tokens"] == 5
    assert list(attrs["gen_ai.response.finish_reasons"]) == ["stop"]
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == upstream.port
    assert attrs["octogate.node"] == "echo"
    assert attrs["gen_ai.response.time_to_first_chunk"] >= 0
    assert "gen_ai.first_token" in backend.event_names
    # The upstream received the backend span's context, so its own spans would join this trace.
    assert upstream.state.last().headers["traceparent"].split("-")[1:3] == [CLIENT_TRACE, backend.span_id]
    # Prompt and completion text stay out of spans unless the config opts in.
    assert SECRET_PROMPT not in json.dumps([s.attributes for s in spans.values()], default=str)


def test_a_request_without_traceparent_starts_its_own_trace(traced, receiver, upstream):
    traced.client().chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    trace_id = upstream.state.last().headers["traceparent"].split("-")[1]
    assert trace_id != CLIENT_TRACE
    spans = trace_of(receiver, trace_id, {"POST /v1/chat/completions", "chat echo"})
    assert spans["POST /v1/chat/completions"].parent_span_id == ""
    assert spans["chat echo"].attributes["gen_ai.usage.output_tokens"] == 2


def test_an_upstream_failure_marks_the_spans(traced, receiver):
    import httpx

    resp = httpx.post(f"{traced.url}/v1/chat/completions", headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"},
                      json={"model": "broken", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 502
    spans = trace_of(receiver, "ab" * 16, {"POST /v1/chat/completions", "chat broken"})
    assert spans["chat broken"].status_code == "ERROR"
    assert spans["chat broken"].attributes["error.type"] == "upstream_error"
    assert spans["POST /v1/chat/completions"].status_code == "ERROR"


def test_tracing_is_off_without_otel_settings(gateway, upstream):
    gateway.client().chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    assert "traceparent" not in upstream.state.last().headers


def test_a_routed_request_has_a_route_span_between_server_and_backend(upstream, gateway_factory, receiver):
    from tests.sglang_server import SGLangDouble
    from tests.test_routing import routed_graph

    sglang = SGLangDouble().start()
    try:
        gw = gateway_factory(routed_graph(upstream, sglang.base_url, mode="select+reformat"), env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "50"})
        sglang.reset(text="<nexa_4>('Differentiate x^3')<nexa_end>")
        trace_id = "12" * 16
        stream = gw.client().chat.completions.create(
            model="octopus", messages=[{"role": "user", "content": "d/dx x^3?"}], stream=True,
            extra_headers={"traceparent": f"00-{trace_id}-{'34' * 8}-01"})
        list(stream)
        spans = trace_of(receiver, trace_id, {"POST /v1/chat/completions", "octogate.route", "octogate.reformat",
                                              "chat echo"})
        server, route = spans["POST /v1/chat/completions"], spans["octogate.route"]
        assert route.parent_span_id == server.span_id
        assert spans["octogate.reformat"].parent_span_id == server.span_id
        assert spans["chat echo"].parent_span_id == server.span_id
        assert route.attributes["octogate.route.engine"] == "sglang"
        assert route.attributes["octogate.route.mode"] == "select+reformat"
        assert route.attributes["octogate.route.token"] == "<nexa_4>"
        assert route.attributes["octogate.route.node"] == "math"
        assert route.attributes["octogate.route.fallback"] == ""
        assert route.attributes["octogate.route.decision_seconds"] > 0
    finally:
        sglang.stop()


def test_the_graph_can_opt_in_to_content_in_spans(upstream, gateway_factory, receiver):
    graph = scripted_graph(upstream, trace_content=True)
    gw = gateway_factory(graph, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                     "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    trace_id = "56" * 16
    gw.client().chat.completions.create(model="plain", messages=[{"role": "user", "content": SECRET_PROMPT}],
                                        extra_headers={"traceparent": f"00-{trace_id}-{'78' * 8}-01"})
    backend = trace_of(receiver, trace_id, {"chat echo"})["chat echo"]
    assert SECRET_PROMPT in backend.attributes["gen_ai.input.messages"]
    assert f"echo: {SECRET_PROMPT}" in backend.attributes["gen_ai.output.messages"]
