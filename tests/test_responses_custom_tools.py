"""Custom tools and ``allowed_tools`` on POST /v1/responses, with the real ``openai`` SDK against a
real ``octogate serve``:

- a node passing through to a loopback OpenAI-compatible upstream (scripted here): the exact chat
  body it receives (``custom`` tools, ``tool_choice``, history as assistant ``tool_calls`` and tool
  messages), its custom call read back as a ``custom_tool_call`` item, streamed
  (``response.custom_tool_call_input.delta``/``.done``) and not, stored and continued;
- a ``responses: native`` node: the upstream gets the body as sent;
- the embedded default model (SmolLM2-135M): a regex grammar enforced, ``allowed_tools`` obeyed, a
  ``lark`` grammar refused naming ``tools[0].format.syntax``, and a ``custom_tool_call_output`` turn.
"""

from __future__ import annotations

import re
import uuid

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from openai.types.responses import (ResponseCustomToolCall, ResponseCustomToolCallInputDeltaEvent,
                                    ResponseCustomToolCallInputDoneEvent, ResponseOutputItemAddedEvent,
                                    ResponseOutputItemDoneEvent)

from tests.conformance.spec import sdk_violations, violations
from tests.conftest import default_graph_gateway
from tests.loopback import LoopbackServer

ZIP = r"\d{5}(-\d{4})?"
TOOLS = [
    {"type": "custom", "name": "code_exec", "description": "Run Python code"},
    {"type": "custom", "name": "zip_lookup", "description": "Look up a US zip code",
     "format": {"type": "grammar", "syntax": "regex", "definition": ZIP}},
    {"type": "function", "name": "get_weather", "description": "Weather of a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
]
# the same tools as chat completions writes them
CHAT_TOOLS = [
    {"type": "custom", "custom": {"name": "code_exec", "description": "Run Python code"}},
    {"type": "custom", "custom": {"name": "zip_lookup", "description": "Look up a US zip code",
                                  "format": {"type": "grammar", "grammar": {"syntax": "regex", "definition": ZIP}}}},
    {"type": "function", "function": {k: v for k, v in TOOLS[2].items() if k != "type"}},
]
INPUT_PIECES = ["print(", "2 + 2)"]


class CustomToolUpstream(LoopbackServer):
    """Chat completions that call the custom tool ``tool_choice`` names (or the first one offered)
    with ``print(2 + 2)``, and answer ``got: <output>`` after a tool message; a ``/v1/responses`` of
    its own that answers with a custom tool call."""

    name = "custom tool upstream"

    def __init__(self) -> None:
        super().__init__()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.chat_bodies: list[dict] = []
        self.responses_bodies: list[dict] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)

    @staticmethod
    def _called(body: dict) -> str:
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice["type"] == "custom":
            return choice["custom"]["name"]
        if isinstance(choice, dict) and choice["type"] == "allowed_tools":
            return next(t["custom"]["name"] for t in choice["allowed_tools"]["tools"] if t["type"] == "custom")
        return next(t["custom"]["name"] for t in body["tools"] if t["type"] == "custom")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.chat_bodies.append(body)
        last = body["messages"][-1]
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        head = {"id": "chatcmpl-c", "created": 1, "model": body["model"]}
        if last["role"] == "tool":
            message, finish = {"role": "assistant", "content": f"got: {last['content']}"}, "stop"
        else:
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_c1", "type": "custom", "custom": {"name": self._called(body), "input": "".join(INPUT_PIECES)}}]}
            finish = "tool_calls"
        if not body.get("stream"):
            return web.json_response({**head, "object": "chat.completion", "usage": usage,
                                      "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def chunk(delta: dict, finish_reason: str | None = None) -> None:
            data = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")

        await chunk({"role": "assistant", "content": None})
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            await chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "custom",
                                         "custom": {"name": call["custom"]["name"], "input": ""}}]})
            for piece in INPUT_PIECES:
                await chunk({"tool_calls": [{"index": 0, "custom": {"input": piece}}]})
        else:
            await chunk({"content": message["content"]})
        await chunk({}, finish)
        await resp.write(b"data: " + orjson.dumps({**head, "object": "chat.completion.chunk", "choices": [],
                                                   "usage": usage}) + b"\n\ndata: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _responses(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.responses_bodies.append(body)
        return web.json_response({
            "id": "resp_native", "object": "response", "created_at": 1, "status": "completed", "model": body["model"],
            "output": [{"id": "ctc_native", "type": "custom_tool_call", "status": "completed", "call_id": "call_n",
                        "name": "code_exec", "input": "print(1)"}],
            "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []),
            "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}})


@pytest.fixture(scope="module")
def upstream():
    server = CustomToolUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(upstream, gateway_factory):
    return gateway_factory({
        "responses": {"key_prefix": f"octogate:test-resp-custom:{uuid.uuid4().hex[:8]}:", "ttl_seconds": 600},
        "nodes": [
            {"name": "coder", "backend": {"model": "openai/coder", "api_base": upstream.base_url, "timeout": 5,
                                          "retries": 0}},
            {"name": "native", "backend": {"model": "openai/upstream-model", "api_base": upstream.base_url,
                                           "responses": "native"}},
        ]})


def _post(gw, body: dict) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/responses", json=body, timeout=300)


def _judged(body: dict) -> dict:
    """``body``, checked against the spec's ``Response`` schema and the SDK's typed ``Response``."""
    problems = violations("Response", body) + sdk_violations("response", body)
    assert not problems, problems
    return body


def _judged_events(gw, body: dict) -> list[dict]:
    """The events of a streamed request as sent, each checked against the spec's ``ResponseStreamEvent``
    and the SDK's typed events."""
    raw = _post(gw, {**body, "stream": True})
    assert raw.status_code == 200, raw.text
    events = [orjson.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
    for event in events:
        problems = violations("ResponseStreamEvent", event) + sdk_violations("event", event)
        assert not problems, (event["type"], problems)
    _judged(events[-1]["response"])
    return events


# ---------------------------------------------------------------- through a chat completion
def test_a_forced_custom_tool_reaches_the_chat_completion_and_comes_back_as_an_item(gw, upstream):
    raw = gw.client().responses.with_raw_response.create(
        model="coder", input="Compute 2+2", instructions="Use the tools.", tools=TOOLS,
        tool_choice={"type": "custom", "name": "code_exec"}, parallel_tool_calls=False, store=False)
    sent = upstream.chat_bodies[-1]
    assert sent == {"model": "coder", "parallel_tool_calls": False, "tools": CHAT_TOOLS,
                    "tool_choice": {"type": "custom", "custom": {"name": "code_exec"}},
                    "messages": [{"role": "system", "content": "Use the tools."},
                                 {"role": "user", "content": "Compute 2+2"}]}
    response = raw.parse()
    call = response.output[0]
    assert isinstance(call, ResponseCustomToolCall) and len(response.output) == 1
    assert call.id.startswith("ctc_") and call.call_id == "call_c1" and call.name == "code_exec"
    assert call.input == "print(2 + 2)" and raw.http_response.json()["output"][0]["status"] == "completed"
    assert response.status == "completed" and response.output_text == ""
    # the request's tools and tool_choice echoed as the spec writes them, parsed by the SDK's own models
    assert [t.type for t in response.tools] == ["custom", "custom", "function"]
    assert response.tools[1].format.type == "grammar" and response.tools[1].format.definition == ZIP
    assert response.tool_choice.type == "custom" and response.tool_choice.name == "code_exec"
    echoed = _judged(raw.http_response.json())
    assert echoed["tools"][:2] == TOOLS[:2] and echoed["tool_choice"] == {"type": "custom", "name": "code_exec"}
    assert {k: echoed["tools"][2][k] for k in TOOLS[2]} == TOOLS[2]


def test_allowed_tools_and_a_text_format_reach_the_chat_completion(gw, upstream):
    tools = [{"type": "custom", "name": "notes", "format": {"type": "text"}}, *TOOLS]
    raw = gw.client().responses.with_raw_response.create(
        model="coder", input="Zip of Beverly Hills?", tools=tools, store=False,
        tool_choice={"type": "allowed_tools", "mode": "required",
                     "tools": [{"type": "custom", "name": "zip_lookup"}, {"type": "function", "name": "get_weather"}]})
    response = raw.parse()
    _judged(raw.http_response.json())
    sent = upstream.chat_bodies[-1]
    assert sent["tools"] == [{"type": "custom", "custom": {"name": "notes", "format": {"type": "text"}}}, *CHAT_TOOLS]
    assert sent["tool_choice"] == {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "custom", "custom": {"name": "zip_lookup"}}, {"type": "function", "function": {"name": "get_weather"}}]}}
    assert response.output[0].type == "custom_tool_call" and response.output[0].name == "zip_lookup"
    assert response.tool_choice.type == "allowed_tools" and response.tool_choice.mode == "required"
    assert response.tools[0].format.type == "text"


def test_a_custom_call_streams_as_input_deltas(gw):
    client = gw.client()
    events = list(client.responses.create(model="coder", input="Compute 2+2", tools=TOOLS, stream=True, store=False,
                                          tool_choice={"type": "custom", "name": "code_exec"}))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.custom_tool_call_input.delta", "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, deltas, done, item_done = events[2], events[3:5], events[5], events[6]
    assert isinstance(added, ResponseOutputItemAddedEvent) and isinstance(added.item, ResponseCustomToolCall)
    assert added.item.input == "" and added.item.name == "code_exec" and added.item.call_id == "call_c1"
    assert all(isinstance(e, ResponseCustomToolCallInputDeltaEvent) for e in deltas)
    assert [e.delta for e in deltas] == INPUT_PIECES
    assert isinstance(done, ResponseCustomToolCallInputDoneEvent) and done.input == "print(2 + 2)"
    assert {e.item_id for e in (*deltas, done)} == {added.item.id} and done.output_index == 0
    assert isinstance(item_done, ResponseOutputItemDoneEvent) and item_done.item.input == "print(2 + 2)"
    final = events[-1].response
    assert final.status == "completed" and final.output[0].id == added.item.id
    assert final.output[0].input == "print(2 + 2)" and final.usage.output_tokens == 4
    # the SDK's stream helper accumulates it too
    with client.responses.stream(model="coder", input="Compute 2+2", tools=TOOLS, store=False) as stream:
        assert stream.get_final_response().output[0].input == "print(2 + 2)"
    # as sent: every event valid under the spec's schemas
    raw = _judged_events(gw, {"model": "coder", "input": "Compute 2+2", "tools": TOOLS, "store": False})
    assert [e["type"] for e in raw] == [e.type for e in events]


@pytest.mark.parametrize("stream", [False, True])
def test_a_custom_call_is_stored_and_its_output_continues_the_response(gw, upstream, stream):
    client = gw.client()
    if stream:
        first = list(client.responses.create(model="coder", input="Compute 2+2", tools=TOOLS, stream=True))[-1].response
    else:
        first = client.responses.create(model="coder", input="Compute 2+2", tools=TOOLS)
    call = first.output[0]
    assert client.responses.retrieve(first.id).output[0].input == "print(2 + 2)"
    second = client.responses.create(model="coder", previous_response_id=first.id, tools=TOOLS, input=[
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "4"}])
    assert second.output_text == "got: 4"
    assert upstream.chat_bodies[-1]["messages"] == [
        {"role": "user", "content": "Compute 2+2"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_c1", "type": "custom", "custom": {"name": "code_exec", "input": "print(2 + 2)"}}]},
        {"role": "tool", "tool_call_id": "call_c1", "content": "4"}]
    items = client.responses.input_items.list(second.id).data
    assert [i.type for i in items] == ["custom_tool_call_output"]
    assert items[0].call_id == "call_c1" and items[0].output == "4" and items[0].id.startswith("ctco_")


def test_a_whole_conversation_with_custom_items_sent_again(gw, upstream):
    client = gw.client()
    answer = client.responses.create(model="coder", tools=TOOLS, store=True, input=[
        {"role": "user", "content": "Compute 2+2"},
        {"type": "custom_tool_call", "call_id": "call_x", "name": "code_exec", "input": "print(4)"},
        {"type": "custom_tool_call_output", "call_id": "call_x", "output": [{"type": "input_text", "text": "4"}]}])
    assert answer.output_text == "got: 4"
    assert upstream.chat_bodies[-1]["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "custom", "custom": {"name": "code_exec", "input": "print(4)"}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "4"}]
    items = client.responses.input_items.list(answer.id, order="asc").data
    assert [i.type for i in items] == ["message", "custom_tool_call", "custom_tool_call_output"]
    assert items[1].id.startswith("ctc_") and items[1].input == "print(4)" and items[1].status == "completed"


def test_a_lark_grammar_passes_through_to_a_remote_model(gw, upstream):
    tools = [{"type": "custom", "name": "math", "format": {"type": "grammar", "syntax": "lark",
                                                          "definition": "start: NUMBER \"+\" NUMBER"}}]
    response = gw.client().responses.create(model="coder", input="2+2", tools=tools, store=False)
    assert upstream.chat_bodies[-1]["tools"] == [{"type": "custom", "custom": {"name": "math", "format": {
        "type": "grammar", "grammar": {"syntax": "lark", "definition": "start: NUMBER \"+\" NUMBER"}}}}]
    assert response.output[0].name == "math"


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "custom"}]}, "tools[0].name"),
    ({"tools": [{"type": "custom", "name": "g", "format": {"type": "yaml"}}]}, "tools[0].format.type"),
    ({"tools": [{"type": "custom", "name": "g", "format": {"type": "grammar", "syntax": "pcre", "definition": "a"}}]},
     "tools[0].format.syntax"),
    ({"tools": [{"type": "custom", "name": "g", "format": {"type": "grammar", "syntax": "regex"}}]},
     "tools[0].format.definition"),
    ({"tools": TOOLS, "tool_choice": {"type": "custom"}}, "tool_choice.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "mode": "sometimes", "tools": []}}, "tool_choice.mode"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]}},
     "tool_choice.tools[0].type"),
    ({"input": [{"type": "custom_tool_call", "call_id": "c", "name": "code_exec"}]}, "input[0].input"),
    ({"input": [{"type": "custom_tool_call_output", "output": "4"}]}, "input[0].call_id"),
    ({"input": [{"type": "custom_tool_call_output", "call_id": "c", "output": [{"type": "input_image"}]}]},
     "input[0].output[0].type"),
])
def test_errors_name_the_exact_field(gw, body, param):
    resp = _post(gw, {"model": "coder", "input": "x", **body})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert f"'{param}'" in error["message"]


# ---------------------------------------------------------------- native pass-through
def test_native_pass_through_sends_custom_tools_unchanged(gw, upstream):
    body = {"model": "native", "tools": [*TOOLS, {"type": "custom", "name": "math", "format": {
                "type": "grammar", "syntax": "lark", "definition": "start: NUMBER"}}],
            "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "custom", "name": "math"}]},
            "input": [{"role": "user", "content": "Compute 2+2"},
                      {"type": "custom_tool_call", "call_id": "call_x", "name": "code_exec", "input": "print(4)"},
                      {"type": "custom_tool_call_output", "call_id": "call_x", "output": "4"}]}
    raw = gw.client().responses.with_raw_response.create(**body)
    assert upstream.responses_bodies[-1] == {**body, "model": "upstream-model"}
    call = raw.parse().output[0]
    assert isinstance(call, ResponseCustomToolCall) and call.input == "print(1)"


# ---------------------------------------------------------------- the embedded default model
@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    gateway = default_graph_gateway(tmp_path_factory.mktemp("resp-custom-embedded"), toolsets=False)
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_the_embedded_model_calls_a_custom_tool_under_its_regex(embedded, stream):
    body = {"model": "general", "input": "Which town has zip code 90210?", "tools": TOOLS, "store": False,
            "tool_choice": {"type": "custom", "name": "zip_lookup"}, "temperature": 0, "max_output_tokens": 40}
    if stream:
        events = _judged_events(embedded, body)
        kinds = [e["type"] for e in events]
        assert kinds[2] == "response.output_item.added" and kinds[-3:] == [
            "response.custom_tool_call_input.done", "response.output_item.done", "response.completed"]
        streamed = "".join(e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta")
        assert streamed == events[-3]["input"]
        response = openai.types.responses.Response.model_validate(events[-1]["response"])
    else:
        raw = embedded.client(timeout=300).responses.with_raw_response.create(**body)
        _judged(raw.http_response.json())
        response = raw.parse()
    call = response.output[0]
    assert isinstance(call, ResponseCustomToolCall) and call.name == "zip_lookup"
    assert re.fullmatch(ZIP, call.input), call.input


def test_allowed_tools_restricts_the_embedded_models_choice(embedded):
    response = embedded.client(timeout=300).responses.create(
        model="general", input="What's the weather in Paris?", tools=TOOLS, store=False, temperature=0,
        max_output_tokens=30,
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "custom", "name": "code_exec"}]})
    calls = [item for item in response.output if item.type in ("custom_tool_call", "function_call")]
    assert calls and all(item.type == "custom_tool_call" and item.name == "code_exec" for item in calls)


def test_a_custom_call_output_continues_on_the_embedded_model(embedded):
    client = embedded.client(timeout=300)
    first = client.responses.create(model="general", input="Which town has zip code 90210?", tools=TOOLS,
                                    tool_choice={"type": "custom", "name": "zip_lookup"}, max_output_tokens=40)
    call = first.output[0]
    assert call.type == "custom_tool_call" and re.fullmatch(ZIP, call.input)
    second = client.responses.create(model="general", previous_response_id=first.id, tools=TOOLS, max_output_tokens=40,
                                      input=[{"type": "custom_tool_call_output", "call_id": call.call_id,
                                              "output": "Beverly Hills, California"}])
    assert second.status in ("completed", "incomplete") and second.output[0].type == "message"
    assert second.output_text.strip()


def _grammar_tool(syntax: str, definition: str) -> list[dict]:
    return [{"type": "custom", "name": "g", "format": {"type": "grammar", "syntax": syntax, "definition": definition}}]


@pytest.mark.parametrize("body, param, code", [
    ({"tools": _grammar_tool("lark", "start: /[0-9]+/")}, "tools[0].format.syntax", "unsupported_grammar"),
    ({"tools": _grammar_tool("regex", r"(?=a)a")}, "tools[0].format.definition", "unsupported_grammar"),
    ({"tools": [*TOOLS, {"type": "custom", "name": "code_exec"}]}, "tools[3].name", "invalid_value"),
    ({"tools": TOOLS, "tool_choice": {"type": "custom", "name": "get_weather"}}, "tool_choice.name", "invalid_value"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [
        {"type": "custom", "name": "code_exec"}, {"type": "custom", "name": "nope"}]}}, "tool_choice.tools[1]",
     "invalid_value"),
])
def test_what_the_embedded_model_cannot_serve_is_a_400_naming_the_responses_field(embedded, body, param, code):
    with pytest.raises(openai.BadRequestError) as info:
        embedded.client(timeout=300).responses.create(model="general", input="x", store=False, max_output_tokens=5,
                                                      **body)
    error = info.value.response.json()["error"]
    assert error["param"] == param and error["code"] == code, error
    assert ".custom." not in error["message"] and "allowed_tools" not in error["message"], error  # no chat field
