"""model: "husky" on /v1/responses end to end: the real openai SDK against a real `octogate serve` with
the shipped action generator, the embedded SmolLM2 as the experts, real sandboxed execution and real
local search (as tests/test_agent_serving.py), Redis for stored responses. Each step is a reasoning
item in Husky's format, a code step's code a code_interpreter_call item, a search step's query a
web_search_call item, the answer a message; responses and stream events are checked against the
SDK's typed models and OpenAI's published schemas (tests/conformance/)."""

from __future__ import annotations

import re
import uuid

import httpx
import openai
import orjson
import pytest
from openai.types.responses import (
    Response,
    ResponseCodeInterpreterToolCall,
    ResponseFunctionWebSearch,
    ResponseOutputMessage,
    ResponseReasoningItem,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter

from octogate.core.responses_events import EventWriter
from octogate.core.responses_steps import StepItems
from octogate.core.responses_translate import ResponseObject

from tests.conformance.spec import violations
from tests.otlp_receiver import OTLPReceiver
from tests.upstream import wait_until

SUMMARY = re.compile(r"^Step: \[(code|math|search|commonsense|finish)\]( [^\n]+)?(\nOutput: (.*))?$", re.S)
KEY = {"Authorization": "Bearer key-a"}
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def receiver():
    with OTLPReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def gw(gateway_factory, upstream, receiver):
    smollm2 = {"model": "embedded/smollm2-135m-instruct"}
    prefix = f"octogate:test-agent-resp:{uuid.uuid4().hex[:8]}:"
    graph = {
        "server": {"api_keys": ["key-a", "key-b"]},
        "responses": {"redis_url": "redis://127.0.0.1:6379/0", "key_prefix": prefix, "ttl_seconds": 600},
        "backends": {"smollm2": smollm2},
        "nodes": [
            {"name": "general", "persona": "You are a helpful assistant. Answer briefly.", "backend": "smollm2",
             "params": {"max_tokens": 64}},
            {"name": "coder", "persona": "You write short, correct Python programs.", "backend": "smollm2"},
            # nothing listens on port 9: every call to this node fails
            {"name": "broken", "backend": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1", "api_key": "k",
                                           "retries": 0, "connect_timeout": 1, "timeout": 2}},
            # the scripted upstream answers "echo: <the last user message>": what a node was sent, read back
            {"name": "echo", "backend": {"model": "openai/echo", "api_base": upstream.base_url, "api_key": "k",
                                         "timeout": 5}},
        ],
        "agents": {
            "husky": {"experts": {"code": "coder", "math": "general", "search": "general", "commonsense": "general"},
                      "max_steps": 2, "expert_max_tokens": 64},
            # fast and plain to read: every expert fails (the step records it), the answer node echoes its prompt
            "husky-broken": {"experts": {"code": "broken", "math": "broken", "search": "broken",
                                         "commonsense": "broken", "answer": "echo"}, "max_steps": 1},
        },
    }
    return gateway_factory(graph, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                       "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "50"})


@pytest.fixture()
def client(gw) -> openai.OpenAI:
    return gw.client(api_key="key-a")


def step_texts(response: Response) -> list[tuple[str, str | None]]:
    """(tool, output) per reasoning item; checks the items' order and fields on the way: each step is a
    reasoning item in Husky's format, a code step with code is followed by its code_interpreter_call,
    a search step with a query by its web_search_call, and the answer message is last."""
    items, out, i = response.output, [], 0
    assert isinstance(items[-1], ResponseOutputMessage) and items[-1].role == "assistant", items
    assert items[-1].content[0].text == response.output_text and response.output_text
    while i < len(items) - 1:
        item = items[i]
        assert isinstance(item, ResponseReasoningItem), items
        assert item.id.startswith("rs_") and item.status == "completed" and len(item.summary) == 1
        assert item.summary[0].type == "summary_text"
        m = SUMMARY.match(item.summary[0].text)
        assert m, item.summary[0].text
        tool, output = m.group(1), m.group(4)
        out.append((tool, output))
        i += 1
        following = items[i]
        if tool == "code" and isinstance(following, ResponseCodeInterpreterToolCall):
            assert following.id.startswith("ci_") and following.code and following.container_id.startswith("cntr_")
            assert [o.type for o in following.outputs] == ["logs"] and following.outputs[0].logs == output
            assert following.status == "completed"
            i += 1
        elif tool == "search" and isinstance(following, ResponseFunctionWebSearch):
            assert following.id.startswith("ws_") and following.action.type == "search" and following.action.query
            assert following.status == "completed"
            i += 1
    return out


def spec_checked(body: dict) -> dict:
    assert not violations("Response", body), violations("Response", body)
    Response.model_validate(body)
    return body


def expected_events(response: dict) -> list[str]:
    """The event types of a stream that ends with ``response``, item by item."""
    kinds = ["response.created", "response.in_progress"]
    for item in response["output"]:
        kinds.append("response.output_item.added")
        if item["type"] == "reasoning":
            deltas = 2 if "\nOutput: " in item["summary"][0]["text"] else 1
            kinds += ["response.reasoning_summary_part.added", *["response.reasoning_summary_text.delta"] * deltas,
                      "response.reasoning_summary_text.done", "response.reasoning_summary_part.done"]
        elif item["type"] == "code_interpreter_call":
            kinds += ["response.code_interpreter_call.in_progress", "response.code_interpreter_call_code.delta",
                      "response.code_interpreter_call_code.done", "response.code_interpreter_call.interpreting",
                      "response.code_interpreter_call.completed"]
        elif item["type"] == "web_search_call":
            kinds += ["response.web_search_call.in_progress", "response.web_search_call.searching",
                      "response.web_search_call.completed"]
        else:
            kinds += ["response.content_part.added", "response.output_text.delta", "response.output_text.done",
                      "response.content_part.done"]
        kinds.append("response.output_item.done")
    return kinds + ["response.incomplete" if response["status"] == "incomplete" else "response.completed"]


def raw_stream(gw, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{gw.url}/v1/responses", headers=KEY, json={**body, "stream": True},
                      timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["x-octogate-agent"] == body["model"]
        return [orjson.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]


# ---------------------------------------------------------------- items
def test_a_lookup_is_a_search_step_with_its_query(client, gw):
    raw = client.responses.with_raw_response.create(model="husky", input="What is the capital of Kenya?",
                                                    max_output_tokens=48)
    assert raw.headers["x-octogate-agent"] == "husky"
    response = raw.parse()
    steps = step_texts(response)
    assert steps[0][0] == "search", response.output
    assert "Kenya: Kenya is a country in Africa. Its capital is Nairobi" in steps[0][1]  # the shipped document
    search = response.output[1]
    assert isinstance(search, ResponseFunctionWebSearch) and search.action.query
    assert response.status in ("completed", "incomplete") and response.model == "husky"
    spec_checked(orjson.loads(raw.content))
    # kept: GET gives it back, items and all
    got = client.responses.retrieve(response.id)
    assert got.model_dump() == response.model_dump()
    assert [i.content[0].text for i in client.responses.input_items.list(response.id).data] == [
        "What is the capital of Kenya?"]


def test_arithmetic_streams_a_real_sandboxed_code_step(client):
    with client.responses.stream(model="husky", max_output_tokens=48,
                                 input="A shop sells pencils for $3 each. Ava buys 14 pencils. How much does Ava pay?"
                                 ) as stream:
        events = list(stream)
    final = events[-1].response  # response.completed, or response.incomplete if max_steps ran out
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == expected_events(final.model_dump())
    steps = step_texts(final)
    assert steps[0][0] == "code", final.output
    code = final.output[1]
    assert isinstance(code, ResponseCodeInterpreterToolCall)
    assert "expert failed" not in code.outputs[0].logs  # the code ran in the sandbox: its output or its error
    assert code.container_id == "cntr_" + final.id.removeprefix("resp_")
    # the events say what the items say, as the step happened
    deltas = [e for e in events if e.type == "response.reasoning_summary_text.delta" and e.output_index == 0]
    assert deltas[0].delta.startswith("Step: [code]") and deltas[1].delta.startswith("\nOutput: ")
    assert next(e for e in events if e.type == "response.code_interpreter_call_code.done").code == code.code
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert client.responses.retrieve(final.id).output_text == final.output_text  # streamed and stored


def test_raw_events_follow_the_spec(gw):
    events = raw_stream(gw, {"model": "husky", "input": "What is the capital of Kenya?", "max_output_tokens": 48,
                             "store": False})
    for event in events:
        assert not violations("ResponseStreamEvent", event), violations("ResponseStreamEvent", event)
        EVENTS.validate_python(event)
    final = spec_checked(events[-1]["response"])
    assert [e["type"] for e in events] == expected_events(final)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:  # every event names its item's place and id
        if "output_index" in event and "item_id" in event:
            assert final["output"][event["output_index"]]["id"] == event["item_id"]
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [i["status"] for i in added] == ["in_progress"] * len(added)
    assert final["store"] is False


def test_max_steps_ran_out_and_a_failing_expert(client):
    """husky-broken: every expert fails (the step records the error), max_steps is 1: still a 200, the
    answer written from what there is (echoed by its node), and the response incomplete."""
    raw = client.responses.with_raw_response.create(model="husky-broken",
                                                    input="How many square miles larger is Texas than Washington?")
    response = raw.parse()
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    (tool, output), = step_texts(response)
    assert output.startswith(f"Error: the {tool} expert failed"), output
    assert len(response.output) == 2  # the expert failed before writing code or a query: no tool item
    assert response.completed_at is None and response.output_text
    spec_checked(orjson.loads(raw.content))
    with client.responses.stream(model="husky-broken", input="What is the capital of Kenya?", store=False) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_an_expert_failing_after_its_code_or_query_fails_the_tool_item():
    """The items of a run fed straight in (core/responses_steps.py): an expert that raised after
    writing its code or query makes a failed tool item without a .completed event; still spec-valid."""
    writer = EventWriter(ResponseObject(id="resp_0a1b", created_at=1, model="husky"), False)
    steps = StepItems(writer, "cntr_0a1b")
    out = writer.start()
    for kind, text in [("reasoning", "Step: [code] Compute 3 * 14\n"), ("code", "print(3 * 14)"),
                       ("reasoning", "Output: Error: the code expert failed: sandbox unavailable\n"),
                       ("reasoning", "Step: [search] Kenya's capital\n"), ("search", "capital of Kenya"),
                       ("reasoning", "Output: Error: the search expert failed: index gone\n"),
                       ("reasoning", "Step: [finish]\nOutput: Error: the action generator timed out\n"),
                       ("content", "Nairobi")]:
        out += steps.feed(kind, text)
    out += steps.finish("stop", 3, 1) + writer.completed()
    events = [orjson.loads(line[6:]) for line in out.decode().split("\n") if line.startswith("data: ")]
    for event in events:
        assert not violations("ResponseStreamEvent", event), violations("ResponseStreamEvent", event)
    final = spec_checked(events[-1]["response"])
    assert [(i["type"], i["status"]) for i in final["output"]] == [
        ("reasoning", "completed"), ("code_interpreter_call", "failed"), ("reasoning", "completed"),
        ("web_search_call", "failed"), ("reasoning", "completed"), ("message", "completed")]
    assert final["output"][1]["outputs"] == [{"type": "logs", "logs": "Error: the code expert failed: sandbox unavailable"}]
    assert final["output"][4]["summary"][0]["text"] == "Step: [finish]\nOutput: Error: the action generator timed out"
    kinds = [e["type"] for e in events]
    assert "response.code_interpreter_call.completed" not in kinds and "response.web_search_call.completed" not in kinds
    assert kinds == [k for k in expected_events(final) if not k.endswith("call.completed")]
    assert final["usage"]["input_tokens"] == 3 and final["status"] == "completed" and final["output_text"] == "Nairobi"


# ---------------------------------------------------------------- context
def test_previous_response_is_context_for_nodes_and_agents(client, upstream):
    first = client.responses.create(model="husky-broken", input="Remember the word tangerine. What is 6 times 7?")
    assert first.output_text.startswith("echo: Task: Remember the word tangerine. What is 6 times 7?")
    # a node continuing the agent's response sees its input and answer, not its steps
    second = client.responses.create(model="echo", input="Which word?", previous_response_id=first.id)
    sent = upstream.state.last().body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "Remember the word tangerine. What is 6 times 7?"
    assert sent[1]["content"] == first.output_text and sent[2]["content"] == "Which word?"
    # an agent continuing it gets the conversation after its task, and the request's instructions
    third = client.responses.create(model="husky-broken", input="Say the word again.", previous_response_id=second.id,
                                    instructions="Answer in one word.")
    task = third.output_text
    assert task.startswith("echo: Task: Say the word again.\n\nInstructions: Answer in one word.\n\n"
                           "Earlier in the conversation:\nUser: Remember the word tangerine."), task
    assert "\nAssistant: echo: Which word?\n" in task
    assert third.previous_response_id == second.id
    assert third.usage.input_tokens > 0 and third.usage.output_tokens > 0  # the experts' calls, summed


# ---------------------------------------------------------------- errors, auth, metrics, disconnect
@pytest.mark.parametrize("body, status, param", [
    ({"model": "husky-broken", "input": "x", "tools": [{"type": "function", "name": "f", "parameters": {}}]},
     400, "tools"),
    ({"model": "husky-broken", "input": "x", "text": {"format": {"type": "json_object"}}}, 400, "text.format"),
    ({"model": "husky-broken", "input": [{"role": "assistant", "content": "hello"}]}, 400, "input"),
    ({"model": "husky-broken", "input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ({"model": "husky-broken", "input": "x", "max_output_tokens": "many"}, 400, "max_output_tokens"),
])
def test_refusals_name_the_field(gw, body, status, param):
    for stream in (False, True):
        r = httpx.post(f"{gw.url}/v1/responses", headers=KEY, json={**body, "stream": stream}, timeout=30)
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param


def test_auth_and_scope(gw, client):
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="wrong").responses.create(model="husky-broken", input="x")
    response = client.responses.create(model="husky-broken", input="What is 2 plus 2?")
    with pytest.raises(openai.NotFoundError):
        gw.client(api_key="key-b").responses.retrieve(response.id)


def metric(gw, name: str, **labels: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_the_request_and_its_steps(gw, client):
    before = metric(gw, "octogate_requests_total", node="husky-broken", status="200", key="key-1")
    steps = sum(metric(gw, "octogate_agent_steps_total", agent="husky-broken", tool=t)
                for t in ("code", "math", "search", "commonsense", "finish"))
    client.responses.create(model="husky-broken", input="What is the capital of Kenya?", store=False)
    assert metric(gw, "octogate_requests_total", node="husky-broken", status="200", key="key-1") == before + 1
    assert sum(metric(gw, "octogate_agent_steps_total", agent="husky-broken", tool=t)
               for t in ("code", "math", "search", "commonsense", "finish")) >= steps + 1
    assert metric(gw, "octogate_tokens_total", node="echo", direction="prompt", key="key-1") > 0


def test_steps_are_spans_of_the_request(gw, receiver, client):
    receiver.clear()  # only this request's trace
    client.responses.create(model="husky-broken", input="What is the capital of Kenya?", store=False)
    names = {"octogate.agent.action", "octogate.agent.expert", "octogate.agent.answer"}
    spans = receiver.wait_for(lambda got: any(
        names <= {s.name for s in got if s.trace_id == t} for t in {s.trace_id for s in got}), timeout=20)
    trace = [s for s in spans if s.trace_id == next(
        t for t in {s.trace_id for s in spans} if names <= {s.name for s in spans if s.trace_id == t})]
    server = next(s for s in trace if s.name == "POST /v1/responses")
    for name in names:
        span = next(s for s in trace if s.name == name)
        assert span.parent_span_id == server.span_id, name
    assert next(s for s in trace if s.name == "octogate.agent.expert").attributes["octogate.node"] == "broken"


def test_a_client_that_leaves_mid_stream_stops_the_agent(gw):
    """The first step's event comes while the agent still works (its expert is the embedded model):
    leaving then is a 499, which it could not be if the events were written at the end."""
    before = metric(gw, "octogate_requests_total", node="husky", status="499")
    with httpx.stream("POST", f"{gw.url}/v1/responses", headers=KEY, timeout=60,
                      json={"model": "husky", "input": "What is the capital of Kenya?", "stream": True}) as resp:
        for line in resp.iter_lines():
            if '"response.reasoning_summary_text.delta"' in line:
                break
    assert wait_until(lambda: metric(gw, "octogate_requests_total", node="husky", status="499") == before + 1,
                      timeout=60), "the request was not counted as a 499"
