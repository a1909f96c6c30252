"""OpenAI's spec as the judge of ``/v1/responses`` (tests/conformance/openai-responses.schemas.json):
every answer a client can get (a response, each stream event, a stored response, its input items,
an error) validates against the spec's ``Response``, ``ResponseStreamEvent``, ``ResponseItemList``
and ``ErrorResponse`` schemas and is parsed by the ``openai`` SDK's typed models, on a node that
answers through a loopback upstream's chat completions and on the embedded default.

The requests cover what the endpoint serves: text and message input, instructions, function tools
and their outputs (``previous_response_id``), a structured ``text.format``, logprobs, a cut-off
answer, a backend that dies mid-stream, and refused bodies."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from tests.conformance.corpus import embedded_default
from tests.conformance.spec import sdk_violations, violations
from tests.test_responses import ResponsesUpstream, graph

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SCHEMA_FORMAT = {"type": "json_schema", "name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}


def judge_response(body: dict, where: str) -> list[str]:
    return [f"{where}: {v}" for v in violations("Response", body) + sdk_violations("response", body)]


def events_of(raw: bytes) -> list[dict]:
    """The ``data:`` of each SSE event, checked to agree with its ``event:`` line."""
    out = []
    for block in raw.decode().strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        data = orjson.loads(fields["data"])
        assert fields.get("event") == data["type"], block
        out.append(data)
    return out


def judge_stream(raw: bytes, where: str) -> tuple[list[str], list[dict]]:
    events = events_of(raw)
    problems = []
    for i, event in enumerate(events):
        problems += [f"{where} event {i} {event.get('type')}: {v}"
                     for v in violations("ResponseStreamEvent", event) + sdk_violations("event", event)]
    numbers = [e.get("sequence_number") for e in events]
    if numbers != list(range(len(events))):
        problems.append(f"{where}: sequence numbers {numbers}")
    return problems, events


def judge_error(resp: httpx.Response, where: str) -> list[str]:
    body = resp.json()
    return [f"{where} ({resp.status_code}): {v}" for v in violations("ErrorResponse", body)
            + sdk_violations("error", body)]


BODIES = [
    {"input": "Hello there"},
    {"input": [{"role": "user", "content": "Hi"}], "instructions": "Be brief.", "temperature": 0.2, "top_p": 0.9},
    {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
               {"role": "user", "content": "Again"}], "metadata": {"run": "conformance"}, "user": "u-1"},
    {"input": "Paris weather?", "tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False},
    {"input": "Which city?", "text": {"format": SCHEMA_FORMAT}},
    {"input": "Hi", "include": ["message.output_text.logprobs"], "top_logprobs": 2},
    {"input": "Hi", "max_output_tokens": 16, "store": False},
]


@pytest.fixture(scope="module")
def upstream():
    server = ResponsesUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loop_gw(upstream, gateway_factory):
    return gateway_factory(graph(upstream, f"octogate:test-respconf:{uuid.uuid4().hex[:8]}:"))


def _model_for(body: dict) -> str:
    return "tools" if body.get("tools") else "echo"


@pytest.mark.parametrize("stream", [False, True])
def test_every_answer_of_a_chat_backed_node_is_valid(loop_gw, stream):
    problems: list[str] = []
    with httpx.Client(base_url=f"{loop_gw.url}/v1", timeout=30) as http:
        for i, body in enumerate(BODIES):
            body = {"model": _model_for(body), **body, "stream": stream}
            resp = http.post("/responses", json=body)
            assert resp.status_code == 200, (body, resp.text)
            if stream:
                found, events = judge_stream(resp.content, f"body {i}")
                problems += found
                assert events[-1]["type"] in ("response.completed", "response.incomplete")
                final = events[-1]["response"]
            else:
                final = resp.json()
                problems += judge_response(final, f"body {i}")
            if body.get("store", True):
                got = http.get(f"/responses/{final['id']}")
                assert got.status_code == 200
                problems += judge_response(got.json(), f"body {i} GET")
                items = http.get(f"/responses/{final['id']}/input_items").json()
                problems += [f"body {i} input_items: {v}" for v in violations("ResponseItemList", items)]
    assert not problems, "\n".join(problems[:20])


def test_a_function_call_round_trip_is_valid(loop_gw):
    problems: list[str] = []
    with httpx.Client(base_url=f"{loop_gw.url}/v1", timeout=30) as http:
        first = http.post("/responses", json={"model": "tools", "input": "Paris weather?", "tools": [WEATHER]}).json()
        problems += judge_response(first, "call")
        call = next(item for item in first["output"] if item["type"] == "function_call")
        second = http.post("/responses", json={
            "model": "tools", "previous_response_id": first["id"], "tools": [WEATHER],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}]}).json()
        problems += judge_response(second, "answer")
        assert second["output_text"]
        items = http.get(f"/responses/{second['id']}/input_items").json()
        problems += [f"input_items: {v}" for v in violations("ResponseItemList", items)]
    assert not problems, "\n".join(problems)


def test_cut_off_and_failed_answers_are_valid(loop_gw):
    problems: list[str] = []
    with httpx.Client(base_url=f"{loop_gw.url}/v1", timeout=30) as http:
        short = http.post("/responses", json={"model": "short", "input": "Hi"}).json()
        assert short["status"] == "incomplete"
        problems += judge_response(short, "short")
        found, events = judge_stream(http.post("/responses", json={"model": "short", "input": "Hi",
                                                                   "stream": True}).content, "short stream")
        problems += found
        assert events[-1]["type"] == "response.incomplete"
        found, events = judge_stream(http.post("/responses", json={"model": "dies", "input": "one two three",
                                                                   "stream": True}).content, "dies stream")
        problems += found
        assert events[-1]["type"] == "response.failed"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("body", [
    {"model": "echo"},
    {"model": "echo", "input": []},
    {"model": "echo", "input": [{"type": "image_generation_call"}]},
    {"model": "echo", "input": "Hi", "tools": [{"type": "function", "name": ""}]},
    {"model": "echo", "input": "Hi", "temperature": 3},
    {"model": "nowhere", "input": "Hi"},
])
def test_refusals_are_valid_errors(loop_gw, body):
    resp = httpx.post(f"{loop_gw.url}/v1/responses", json=body, timeout=30)
    assert 400 <= resp.status_code < 500
    assert not judge_error(resp, str(body))


def test_unknown_stored_response_is_a_valid_404(loop_gw):
    resp = httpx.get(f"{loop_gw.url}/v1/responses/resp_{uuid.uuid4().hex}", timeout=30)
    assert resp.status_code == 404
    assert not judge_error(resp, "GET unknown")


@pytest.fixture(scope="module")
def embedded_gw(tmp_path_factory):
    gw = embedded_default(tmp_path_factory.mktemp("responses-conformance-embedded"))
    yield gw
    gw.stop()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stream", [False, True])
def test_every_answer_of_the_embedded_default_is_valid(embedded_gw, stream):
    problems: list[str] = []
    bodies = [
        {"input": "Say hello."},
        {"input": "Paris weather?", "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 64},
        {"input": "Name a city.", "text": {"format": SCHEMA_FORMAT}, "max_output_tokens": 24},
        {"input": "Hi", "include": ["message.output_text.logprobs"], "top_logprobs": 2, "max_output_tokens": 4},
    ]
    with httpx.Client(base_url=f"{embedded_gw.url}/v1", timeout=300) as http:
        for i, body in enumerate(bodies):
            resp = http.post("/responses", json={"model": "general", "store": False, **body, "stream": stream})
            assert resp.status_code == 200, (body, resp.text)
            if stream:
                problems += judge_stream(resp.content, f"embedded body {i}")[0]
            else:
                final = resp.json()
                problems += judge_response(final, f"embedded body {i}")
                if body.get("tools"):
                    assert any(item["type"] == "function_call" for item in final["output"]), final
    assert not problems, "\n".join(problems[:20])
