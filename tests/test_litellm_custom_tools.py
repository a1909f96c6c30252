"""OpenAI's custom tools and ``allowed_tools`` through LiteLLM backends (``adapters/litellm_backend.py``).

A loopback server speaks OpenAI's chat completions (for LiteLLM's ``openai/``, ``azure/``,
``litellm_proxy/`` and ``hosted_vllm/`` providers, on any path) and Anthropic's Messages API (for
``anthropic/``); it records what LiteLLM sends and answers with scripted replies. The gateway runs as
``octogate serve`` and is driven with the ``openai`` SDK and, for the raw chunks, httpx.
"""

from __future__ import annotations

import json

import httpx
import openai
import orjson
import pytest
import yaml
from aiohttp import web

from tests.conformance.spec import sdk_violations, violations
from tests.conftest import start_gateway
from tests.loopback import LoopbackServer

ZIP = {"type": "custom", "custom": {"name": "zip_lookup", "description": "Look up a US zip code", "format": {
    "type": "grammar", "grammar": {"syntax": "regex", "definition": r"\d{5}"}}}}
CODE = {"type": "custom", "custom": {"name": "code_exec", "description": "Run Python", "format": {
    "type": "grammar", "grammar": {"syntax": "lark", "definition": "start: /.+/"}}}}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
EARLIER = {"id": "call_1", "type": "custom", "custom": {"name": "zip_lookup", "input": "10001"}}
HISTORY = [{"role": "user", "content": "Which town is 10001?"},
           {"role": "assistant", "content": None, "tool_calls": [EARLIER]},
           {"role": "tool", "tool_call_id": "call_1", "content": "New York"},
           {"role": "user", "content": "And 90210?"}]
ALLOWED_ZIP = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
    {"type": "custom", "custom": {"name": "zip_lookup"}}]}}
CUSTOM_CHOICE = {"type": "custom", "custom": {"name": "zip_lookup"}}
ANSWER = {"id": "call_up", "type": "custom", "custom": {"name": "zip_lookup", "input": "90210"}}


class ToolUpstream(LoopbackServer):
    """OpenAI chat completions on every path but ``/v1/messages``, answering with ``ANSWER`` (streamed in
    three pieces, with ``type: "custom"`` in the first delta as LiteLLM passes it on); Anthropic's Messages
    API on ``/v1/messages``, answering with the next scripted content blocks (default: a text block)."""

    name = "tool-calling upstream"

    def __init__(self) -> None:
        super().__init__()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, dict]] = []
        self.blocks: list[list[dict]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/{path:.*}", self._chat)

    def take(self) -> list[tuple[str, dict]]:
        taken, self.requests[:] = list(self.requests), []
        return taken

    async def _messages(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, body))
        blocks = self.blocks.pop(0) if self.blocks else [{"type": "text", "text": "plain answer"}]
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                                  "content": blocks, "stop_reason": stop, "stop_sequence": None,
                                  "usage": {"input_tokens": 30, "output_tokens": 9}})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, body))
        base = {"id": "chatcmpl-up", "created": 1700000000, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [ANSWER]},
                "finish_reason": "tool_calls", "logprobs": None}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(delta: dict, finish: str | None = None) -> None:
            chunk = {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": None})
        await send({"tool_calls": [{"index": 0, "id": "call_up", "type": "custom",
                                    "custom": {"name": "zip_lookup", "input": ""}}]})
        for piece in ("902", "10"):
            await send({"tool_calls": [{"index": 0, "custom": {"input": piece}}]})
        await send({}, "tool_calls")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture(scope="module")
def upstream():
    server = ToolUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    def node(name: str, model: str, api_base: str, **extra) -> dict:
        # one failure cools a replica down: a refusal that counted as a failure would show at once
        return {"name": name, "backend": {"model": model, "api_base": api_base, "api_key": "k", "adapter": "litellm",
                                          "timeout": 10, "cooldown": {"failures": 1, "seconds": 60}, **extra}}

    v1 = f"{upstream.base_url}/v1"
    graph = {"nodes": [
        node("lt-openai", "openai/gpt-up", v1), node("lt-azure", "azure/deploy-up", v1),
        node("lt-proxy", "litellm_proxy/gpt-up", v1), node("lt-vllm", "hosted_vllm/qwen-up", v1),
        node("lt-claude", "anthropic/claude-up", upstream.base_url),
        node("lt-claude-octo", "anthropic/claude-up", upstream.base_url, tool_calls="octogate"),
    ]}
    d = tmp_path_factory.mktemp("litellm-custom")
    (d / "graph.yaml").write_text(yaml.safe_dump(graph))
    gw = start_gateway(d / "graph.yaml", d / "octogate.log", env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    yield gw
    gw.stop()


@pytest.fixture()
def client(gateway, upstream) -> openai.OpenAI:
    upstream.take()
    return gateway.client(timeout=60)


def _raw_chunks(gateway, body: dict) -> list[dict]:
    with httpx.Client(timeout=60) as http:
        r = http.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]


# ---------------------------------------------------------------------------------------------- pass-through
@pytest.mark.parametrize("node", ["lt-openai", "lt-azure", "lt-proxy"])
def test_openai_providers_get_custom_tools_unchanged_and_the_call_comes_back_as_custom(client, upstream, node):
    tools = [ZIP, CODE, ADD]
    r = client.chat.completions.create(model=node, messages=HISTORY, tools=tools, tool_choice=ALLOWED_ZIP)
    [(_, sent)] = upstream.take()
    assert sent["tools"] == tools and sent["tool_choice"] == ALLOWED_ZIP  # grammars (lark too) and choice as sent
    assert sent["messages"][1]["tool_calls"] == [EARLIER] and sent["messages"][2]["tool_call_id"] == "call_1"
    [call] = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.type, call.custom.name, call.custom.input) == ("call_up", "custom", "zip_lookup", "90210")
    body = r.model_dump(exclude_unset=True)
    assert not violations("CreateChatCompletionResponse", body) and not sdk_violations("completion", body)


@pytest.mark.parametrize("node", ["lt-openai", "lt-azure", "lt-proxy"])
def test_a_streamed_custom_call_comes_back_in_octogates_chunk_shape(gateway, client, upstream, node):
    chunks = _raw_chunks(gateway, {"model": node, "messages": HISTORY, "tools": [ZIP, ADD],
                                   "tool_choice": CUSTOM_CHOICE})
    [(_, sent)] = upstream.take()
    assert sent["tools"] == [ZIP, ADD] and sent["tool_choice"] == CUSTOM_CHOICE and sent["stream"] is True
    for chunk in chunks:
        assert not violations("CreateChatCompletionStreamResponse", chunk) and not sdk_violations("chunk", chunk)
    pieces = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert pieces[0] == {"index": 0, "id": "call_up", "custom": {"name": "zip_lookup", "input": ""}}  # no "type"
    assert "".join(p["custom"]["input"] for p in pieces) == "90210"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # and through the SDK's stream
    stream = client.chat.completions.create(model=node, messages=HISTORY, tools=[ZIP], stream=True)
    deltas = [d for c in stream if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert "".join((d.model_extra or {})["custom"]["input"] for d in deltas) == "90210"


# ---------------------------------------------------------------------------------------------- no custom tools
REFUSED = [
    ({"tools": [ADD, ZIP]}, "tools[1].type"),
    ({"tools": [ADD], "tool_choice": CUSTOM_CHOICE}, "tool_choice.type"),
    ({"tools": [ADD], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
        {"type": "custom", "custom": {"name": "zip_lookup"}}]}}}, "tool_choice.allowed_tools.tools[0].type"),
    ({"tools": [ADD], "messages": HISTORY}, "messages[1].tool_calls[0].type"),
    ({"messages": HISTORY}, "messages[1].tool_calls[0].type"),
]


@pytest.mark.parametrize("node", ["lt-claude", "lt-vllm"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_without_custom_tools_refuses_them_naming_the_field(client, upstream, node, stream):
    """Before: Anthropic failed inside LiteLLM (a retryable 502 that cooled the node down), hosted_vllm
    got the custom tool as a function tool without its grammar, and its call came back as a function call."""
    for extra, param in REFUSED:
        body = {"messages": [{"role": "user", "content": "Which town is 90210?"}], **extra}
        with pytest.raises(openai.BadRequestError) as err:
            if stream:
                list(client.chat.completions.create(model=node, stream=True, **body))
            else:
                client.chat.completions.create(model=node, **body)
        error = err.value.response.json()["error"]
        assert (error["param"], error["code"]) == (param, "unsupported_value"), error
        assert "tool_calls: octogate" in error["message"]
    assert upstream.take() == []  # nothing was sent on
    # the refusals were the request's fault: the node still answers (its cooldown starts at one failure)
    r = client.chat.completions.create(model=node, messages=[{"role": "user", "content": "hi"}], tools=[ADD])
    assert r.choices[0].message.content or r.choices[0].message.tool_calls
    assert len(upstream.take()) == 1


def test_allowed_tools_reach_anthropic_as_the_listed_tools_under_their_mode(client, upstream):
    upstream.blocks[:] = [[{"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 3}}]]
    r = client.chat.completions.create(
        model="lt-claude", messages=[{"role": "user", "content": "2+3?"}], tools=[WEATHER, ADD],
        tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "function", "function": {"name": "add"}}]}})
    [(path, sent)] = upstream.take()
    assert path == "/v1/messages" and [t["name"] for t in sent["tools"]] == ["add"]
    assert sent["tool_choice"]["type"] == "any"  # Anthropic's "required"
    [call] = r.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "add" and json.loads(call.function.arguments) == {
        "a": 2, "b": 3}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="lt-claude", messages=[{"role": "user", "content": "2+3?"}], tools=[ADD],
            tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
                {"type": "function", "function": {"name": "add"}}, {"type": "function", "function": {"name": "sub"}}]}})
    assert err.value.response.json()["error"]["param"] == "tool_choice.allowed_tools.tools[1]"
    assert upstream.take() == []


# ---------------------------------------------------------------------------------------------- tool_calls: octogate
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_octogate_gives_anthropic_custom_tools(client, upstream, stream):
    """LiteLLM asks Anthropic for the structured reply as a forced tool (``json_tool_call``) whose input
    schema is octogate's: the custom tool's input under its regex."""
    reply = {"name": "zip_lookup", "input": "90210"}
    upstream.blocks[:] = [[{"type": "tool_use", "id": "toolu_1", "name": "json_tool_call", "input": reply}]]
    kwargs = dict(model="lt-claude-octo", messages=HISTORY, tools=[ZIP, ADD], tool_choice=CUSTOM_CHOICE)
    if stream:
        deltas = [d for c in client.chat.completions.create(stream=True, **kwargs) if c.choices
                  for d in c.choices[0].delta.tool_calls or ()]
        custom = [(d.model_extra or {})["custom"] for d in deltas]
        name, text = custom[0]["name"], "".join(c["input"] for c in custom)
    else:
        [call] = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
        assert call.type == "custom" and call.id.startswith("call_")
        name, text = call.custom.name, call.custom.input
    assert (name, text) == ("zip_lookup", "90210")
    [(path, sent)] = upstream.take()
    assert path == "/v1/messages"
    [tool] = sent["tools"]
    assert tool["name"] == "json_tool_call" and sent["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    assert tool["input_schema"]["properties"]["input"] == {"type": "string", "pattern": r"^(\d{5})$"}
    # the earlier custom call and its result reach Claude as plain turns, not as tool blocks
    text_sent = json.dumps(sent["messages"])
    assert "zip_lookup" in text_sent and "10001" in text_sent and "New York" in text_sent
    assert "tool_use" not in text_sent and "tool_result" not in text_sent
