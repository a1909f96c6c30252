"""Tool calls made by octogate for remote models without their own (``tool_calls: octogate``).

The mechanics run against a scripted OpenAI-compatible upstream on loopback that records what it is
asked and answers with scripted JSON; the end-to-end tests put a second gateway serving the real embedded
model (which enforces ``response_format: json_schema`` with a grammar) behind a node marked
``tool_calls: octogate``, and drive both with the ``openai`` SDK.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import orjson
import pytest
import yaml
from aiohttp import web

from octogate.adapters import build_backend
from octogate.adapters.replicas import ReplicatedBackend
from octogate.adapters.embedded import EmbeddedBackend
from octogate.adapters.litellm_backend import LiteLLMBackend
from octogate.adapters.openai_compat import OpenAICompatibleBackend
from octogate.adapters.tool_calling.structured import StructuredToolCalls
from octogate.core.graph import ConfigError, parse_graph
from tests.conftest import start_gateway, streamed_tool_calls
from tests.loopback import LoopbackServer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
BY_NAME = {"get_weather": WEATHER, "add": ADD}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
USAGE = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}


class StructuredUpstream(LoopbackServer):
    """An OpenAI-compatible server that answers each request with the next scripted reply.

    A reply is a string (the message content, finish_reason "stop"), a dict ``{"content", "finish_reason"}``,
    or ``(status, error body, headers)``; with nothing scripted it answers ``plain: <last user text>``.
    Streams are sent word by word, with a usage chunk when asked for."""

    name = "structured-outputs upstream"

    def __init__(self) -> None:
        super().__init__()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict] = []
        self.replies: list = []

    def script(self, *replies) -> None:
        self.requests.clear()
        self.replies[:] = replies

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "plain-model", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        reply = self.replies.pop(0) if self.replies else None
        if isinstance(reply, tuple):
            status, error, headers = reply
            return web.json_response(error, status=status, headers=headers)
        if reply is None:
            users = [m for m in body["messages"] if m.get("role") == "user"]
            reply = f"plain: {users[-1]['content'] if users else ''}"
        if isinstance(reply, str):
            reply = {"content": reply, "finish_reason": "stop"}
        base = {"id": "chatcmpl-upstream", "created": 1700000000, "model": body.get("model")}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": USAGE, "choices": [{
                "index": 0, "message": {"role": "assistant", "content": reply["content"]},
                "finish_reason": reply["finish_reason"], "logprobs": None}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(payload: dict) -> None:
            await resp.write(b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", **payload}) + b"\n\n")

        def delta(d: dict, finish: str | None = None) -> dict:
            return {"choices": [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]}

        await send(delta({"role": "assistant", "content": ""}))
        for i, word in enumerate(reply["content"].split(" ")):
            await send(delta({"content": word if i == 0 else " " + word}))
        await send(delta({}, reply["finish_reason"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"choices": [], "usage": USAGE})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture(scope="module")
def structured_upstream():
    server = StructuredUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def remote(structured_upstream, tmp_path_factory):
    def backend(**extra) -> dict:
        # failures are scripted here on purpose: no cooldown may carry one test's failures into the next
        return {"model": "openai/plain-model", "api_base": structured_upstream.base_url, "timeout": 5,
                "cooldown": {"failures": 1000, "seconds": 1}, **extra}

    graph = {"nodes": [
        {"name": "remote", "persona": "You are terse.", "backend": backend(tool_calls="octogate")},
        {"name": "remote-litellm", "backend": backend(tool_calls="octogate", adapter="litellm", api_key="k")},
        {"name": "native", "backend": backend()},
    ]}
    d = tmp_path_factory.mktemp("structured")
    (d / "graph.yaml").write_text(yaml.safe_dump(graph))
    gw = start_gateway(d / "graph.yaml", d / "octogate.log", env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    yield gw
    gw.stop()


@pytest.fixture()
def client(remote) -> openai.OpenAI:
    return remote.client(timeout=30)


def _schema(request: dict) -> dict:
    fmt = request["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True and fmt["json_schema"]["name"]
    return fmt["json_schema"]["schema"]


def _alternatives(schema: dict) -> list[dict]:
    return schema.get("anyOf", [schema])


def _call_alternatives(schema: dict) -> dict[str, dict]:
    """Function name -> the arguments schema tied to it, over the single-call alternatives."""
    return {alt["properties"]["name"]["const"]: alt["properties"]["arguments"]
            for alt in _alternatives(schema) if alt.get("type") == "object" and "name" in alt.get("properties", {})}


def _no_tool_fields(request: dict) -> None:
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & request.keys()
    for m in request["messages"]:
        assert m["role"] in ("system", "user", "assistant") and not {"tool_calls", "tool_call_id"} & m.keys()


# ---------------------------------------------------------------------------------------------- config
def test_config_marks_backends_and_only_remote_ones_are_wrapped():
    def graph(**backend) -> dict:
        return {"nodes": [{"name": "n", "backend": backend}]}

    openai_cfg = parse_graph(graph(model="openai/m", api_base="http://x/v1", tool_calls="octogate")).nodes[0].backend
    litellm_cfg = parse_graph(graph(model="anthropic/claude", tool_calls="octogate")).nodes[0].backend
    embedded_cfg = parse_graph(graph(model="embedded/smollm2-135m-instruct", tool_calls="octogate")).nodes[0].backend
    native_cfg = parse_graph(graph(model="openai/m", api_base="http://x/v1")).nodes[0].backend
    assert native_cfg.tool_calls == "native"
    def remote(backend) -> object:  # remote backends sit behind their replica set (adapters/replicas.py)
        assert isinstance(backend, ReplicatedBackend)
        return backend.replicas[0].backend

    wrapped = build_backend(openai_cfg, "b")
    assert isinstance(wrapped, StructuredToolCalls) and isinstance(remote(wrapped.inner), OpenAICompatibleBackend)
    assert wrapped.label == "b"
    assert isinstance(remote(build_backend(litellm_cfg, "b").inner), LiteLLMBackend)
    assert isinstance(build_backend(embedded_cfg, "b"), EmbeddedBackend)  # makes its own calls anyway
    assert isinstance(remote(build_backend(native_cfg, "b")), OpenAICompatibleBackend)
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.backend\.tool_calls"):
        parse_graph(graph(model="openai/m", tool_calls="sometimes"), "g.yaml")


# ---------------------------------------------------------------------------------------------- mechanics
def test_a_call_is_asked_for_under_a_json_schema_and_returned_as_tool_calls(client, structured_upstream):
    structured_upstream.script(PARIS)
    r = client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, temperature=0, max_tokens=90)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str) and json.loads(call.function.arguments) == {"city": "Paris"}
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (40, 12, 52)

    [sent] = structured_upstream.requests
    _no_tool_fields(sent)
    assert sent["model"] == "plain-model" and not sent.get("stream")
    assert (sent["temperature"], sent["max_tokens"]) == (0, 90)
    schema = _schema(sent)
    tied = _call_alternatives(schema)
    assert set(tied) == {"get_weather", "add"}
    assert tied["get_weather"]["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert tied["add"]["required"] == ["a", "b"]
    # auto: one call, an array of calls (parallel_tool_calls defaults to true), or a text answer
    kinds = sorted(alt["type"] if "content" not in alt.get("properties", {}) else "answer"
                   for alt in _alternatives(schema))
    assert kinds == ["answer", "array", "object", "object"]
    [answer] = [a for a in _alternatives(schema) if "content" in a.get("properties", {})]
    assert answer["properties"]["content"] == {"type": "string", "minLength": 1}  # an empty answer is no answer
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(json.loads(PARIS)) and validator.is_valid({"content": "hi"})
    assert validator.is_valid([json.loads(PARIS), {"name": "add", "arguments": {"a": 1, "b": 2}}])
    assert not validator.is_valid({"name": "add", "arguments": {"city": "Paris"}})  # a name is tied to its own args
    assert not validator.is_valid({"name": "delete_everything", "arguments": {}})
    # the functions are listed after the persona, before the conversation
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert sent["messages"][0]["content"] == "You are terse."
    listing = sent["messages"][1]["content"]
    assert '"name":"get_weather"' in listing and '"name":"add"' in listing and '{"content"' in listing


def test_streamed_parallel_calls_accumulate_in_the_sdk(client, structured_upstream):
    two = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                      {"name": "add", "arguments": {"a": 2, "b": 40}}])
    structured_upstream.script(two)
    chunks = list(client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, stream=True,
                                                 stream_options={"include_usage": True}))
    assert not structured_upstream.requests[0].get("stream")  # the reply is validated whole before streaming
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = streamed_tool_calls(chunks)
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "add"]
    assert calls[0]["id"].startswith("call_") and calls[0]["id"] != calls[1]["id"]
    assert json.loads(calls[1]["arguments"]) == {"a": 2, "b": 40}
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) > 2  # arguments come in pieces
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 52

    structured_upstream.script(two)
    with client.chat.completions.stream(model="remote", messages=WEATHER_Q, tools=TOOLS) as s:
        final = s.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    got = [(c.function.name, json.loads(c.function.arguments)) for c in final.choices[0].message.tool_calls]
    assert got == [("get_weather", {"city": "Paris", "unit": "celsius"}), ("add", {"a": 2, "b": 40})]


def test_auto_may_answer_in_text_streamed_or_not(client, structured_upstream):
    structured_upstream.script('{"content": "Hello there, friend. STOP here"}')
    r = client.chat.completions.create(model="remote", tools=TOOLS, stop=[" STOP"],
                                       messages=[{"role": "user", "content": "Say hello."}])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == "Hello there, friend."
    assert "stop" not in structured_upstream.requests[0]  # a stop string must not cut the JSON

    structured_upstream.script('{"content": "Hello there,\\nfriend."}')
    chunks = list(client.chat.completions.create(model="remote", tools=TOOLS, stream=True,
                                                 messages=[{"role": "user", "content": "Say hello."}]))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "Hello there,\nfriend." and len(pieces) == 3
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_client_response_format_shapes_the_text_answer(client, structured_upstream):
    fmt = {"type": "json_schema", "json_schema": {"name": "mood", "schema": {
        "type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"]}}}
    structured_upstream.script('{"content": {"mood": "happy"}}')
    r = client.chat.completions.create(model="remote", tools=TOOLS, response_format=fmt,
                                       messages=[{"role": "user", "content": "How do you feel?"}])
    assert json.loads(r.choices[0].message.content) == {"mood": "happy"}
    [answer] = [a for a in _alternatives(_schema(structured_upstream.requests[0]))
                if "content" in a.get("properties", {})]
    assert answer["properties"]["content"]["properties"]["mood"]["enum"] == ["happy", "sad"]


def test_named_required_and_parallel_false_narrow_the_schema(client, structured_upstream):
    structured_upstream.script('{"name": "add", "arguments": {"a": 2, "b": 3}}')
    r = client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "add"}})
    assert [(c.function.name, json.loads(c.function.arguments)) for c in r.choices[0].message.tool_calls] == [
        ("add", {"a": 2, "b": 3})]
    schema = _schema(structured_upstream.requests[0])
    assert "anyOf" not in schema and schema["properties"]["name"]["const"] == "add"  # that function, once
    assert "get_weather" not in structured_upstream.requests[0]["messages"][1]["content"]

    structured_upstream.script(PARIS)
    r = client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"
    alternatives = _alternatives(_schema(structured_upstream.requests[0]))
    assert not any("content" in a.get("properties", {}) for a in alternatives)  # no way out of calling
    assert {a["type"] for a in alternatives} == {"object", "array"}

    structured_upstream.script(PARIS)
    client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, parallel_tool_calls=False)
    assert "array" not in {a["type"] for a in _alternatives(_schema(structured_upstream.requests[0]))}


def test_tool_choice_none_is_a_plain_request(client, structured_upstream):
    structured_upstream.script()
    r = client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.content == "plain: What is the weather in Paris?"
    [sent] = structured_upstream.requests
    _no_tool_fields(sent)
    assert "response_format" not in sent and [m["role"] for m in sent["messages"]] == ["system", "user"]

    structured_upstream.script()
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="remote", messages=WEATHER_Q, tools=TOOLS, tool_choice="none", stream=True) if c.choices)
    assert text == "plain: What is the weather in Paris?" and structured_upstream.requests[0]["stream"] is True


def test_requests_without_tools_reach_the_upstream_untouched(client, structured_upstream):
    structured_upstream.script()
    extra = {"response_format": {"type": "json_object"}, "stop": ["x"], "logprobs": True, "n": 2}
    client.chat.completions.create(model="remote", messages=WEATHER_Q, temperature=0.5, extra_body={"vendor": 1},
                                   **extra)
    assert structured_upstream.requests == [{
        "model": "plain-model", "messages": [{"role": "system", "content": "You are terse."}, *WEATHER_Q],
        "temperature": 0.5, "vendor": 1, **extra}]


def test_a_native_node_still_passes_tools_through(client, structured_upstream):
    structured_upstream.script()
    client.chat.completions.create(model="native", messages=WEATHER_Q, tools=TOOLS, tool_choice="required")
    [sent] = structured_upstream.requests
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "required" and "response_format" not in sent


def test_the_conversation_continues_after_tool_results(client, structured_upstream):
    structured_upstream.script(PARIS)
    first = client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages = [*WEATHER_Q, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}]
    structured_upstream.script('{"content": "It is 21 degrees in Paris."}')
    final = client.chat.completions.create(model="remote", messages=messages, tools=TOOLS)
    assert final.choices[0].message.content == "It is 21 degrees in Paris."
    assert final.choices[0].finish_reason == "stop"
    [sent] = structured_upstream.requests
    _no_tool_fields(sent)
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user", "assistant", "user"]
    assert json.loads(sent["messages"][3]["content"]) == json.loads(PARIS)  # the call as the model writes calls
    assert sent["messages"][4]["content"] == 'Result of get_weather: {"celsius": 21}'


def test_a_reply_that_fails_validation_is_retried_once_then_a_clean_error(client, structured_upstream):
    bad = '{"name": "add", "arguments": {"a": -1, "b": 3}}'  # a grammar cannot express minimum: 0
    structured_upstream.script(bad, '{"name": "add", "arguments": {"a": 1, "b": 3}}')
    r = client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, tool_choice="required")
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"a": 1, "b": 3}
    assert r.usage.total_tokens == 2 * 52  # both attempts are counted
    retry = structured_upstream.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": bad}
    assert retry[-1]["role"] == "user" and ".a" in retry[-1]["content"] and "minimum" in retry[-1]["content"]

    for stream in (False, True):
        structured_upstream.script(bad, "not json at all")
        with pytest.raises(openai.APIStatusError) as err:
            r = client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, stream=stream)
            list(r) if stream else None
        assert err.value.status_code == 502
        error = err.value.response.json()["error"]
        assert error["code"] == "invalid_tool_call" and "not JSON" in error["message"]
        assert len(structured_upstream.requests) == 2  # exactly one retry

    structured_upstream.script({"content": '{"name": "add", "argu', "finish_reason": "length"})
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, max_tokens=8)
    assert err.value.response.json()["error"]["param"] == "max_tokens" and len(structured_upstream.requests) == 1


@pytest.mark.parametrize("extra, param", [
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"e": {"type": "integer", "enum": [1, "two"]}}}}}]},
     "tools[1].function.parameters.properties.e.enum[1]"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"not": {"type": "string"}}}}}}]}, "tools[0].function.parameters.properties.a.not"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}},
     "tool_choice.function.name"),
    ({"tools": TOOLS, "n": 2}, "n"),
])
def test_bad_tools_are_400s_naming_the_param(client, structured_upstream, extra, param):
    structured_upstream.script()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="remote", messages=WEATHER_Q, **extra)
    assert err.value.response.json()["error"]["param"] == param
    assert structured_upstream.requests == []


def test_upstream_errors_propagate_unchanged(client, structured_upstream):
    structured_upstream.script((429, {"error": {"message": "slow down", "type": "rate_limit_error"}},
                                {"Retry-After": "7"}))
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS)
    assert err.value.response.headers["retry-after"] == "7" and "slow down" in err.value.message
    # a 500 is retried (backend.retries, 2 by default): the upstream fails all three tries
    structured_upstream.script(*[(500, {"error": {"message": "the GPU caught fire"}}, {})] * 3)
    with pytest.raises(openai.APIStatusError) as err:
        list(client.chat.completions.create(model="remote", messages=WEATHER_Q, tools=TOOLS, stream=True))
    assert err.value.status_code == 502 and "the GPU caught fire" in err.value.message


def test_a_litellm_node_makes_calls_the_same_way(client, structured_upstream):
    structured_upstream.script(PARIS)
    r = client.chat.completions.create(model="remote-litellm", messages=WEATHER_Q, tools=TOOLS)
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}
    [sent] = structured_upstream.requests
    _no_tool_fields(sent)
    assert set(_call_alternatives(_schema(sent))) == {"get_weather", "add"}


# ---------------------------------------------------------------------------------------------- real model
EMBEDDED_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def real_remote(tmp_path_factory):
    """Gateway A serves the embedded model as a plain OpenAI-compatible server (a node named like the model);
    gateway B's node reaches it over HTTP and has octogate make the tool calls."""
    d = tmp_path_factory.mktemp("real-remote")
    (d / "server.yaml").write_text(yaml.safe_dump({"nodes": [
        {"name": EMBEDDED_MODEL, "backend": {"model": f"embedded/{EMBEDDED_MODEL}"}}]}))
    server = start_gateway(d / "server.yaml", d / "server.log")
    (d / "gateway.yaml").write_text(yaml.safe_dump({"nodes": [
        {"name": "remote-smollm", "persona": "You are a helpful assistant.", "backend": {
            "model": f"openai/{EMBEDDED_MODEL}", "api_base": f"{server.url}/v1", "timeout": 120,
            "tool_calls": "octogate"}}]}))
    gateway = start_gateway(d / "gateway.yaml", d / "octogate.gateway.log")
    yield gateway
    gateway.stop()
    server.stop()


def _valid_args(call) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, BY_NAME[call.function.name]["function"]["parameters"])
    return args


def test_real_model_sdk_tool_loop(real_remote):
    client = real_remote.client(timeout=180)
    messages = list(WEATHER_Q)
    first = client.chat.completions.create(model="remote-smollm", messages=messages, tools=TOOLS,
                                           tool_choice="required", temperature=0, seed=3, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert _valid_args(call)["city"] == "Paris"
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21, "sky": "sunny"})}]
    final = client.chat.completions.create(model="remote-smollm", messages=messages, tools=TOOLS,
                                           temperature=0, seed=3, max_tokens=80)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content.strip()
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result reached the model


def test_real_model_streamed_named_call_validates(real_remote):
    client = real_remote.client(timeout=180)
    with client.chat.completions.stream(
            model="remote-smollm", tools=TOOLS, temperature=0, seed=3, max_tokens=80,
            tool_choice={"type": "function", "function": {"name": "add"}},
            messages=[{"role": "user", "content": "What is 2 plus 3?"}]) as s:
        final = s.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "add"
    args = _valid_args(call)
    assert isinstance(args["a"], int) and isinstance(args["b"], int)


CUSTOM_TOOLS = [{"type": "custom", "custom": {"name": "zip_lookup", "description": "Look up a zip code", "format": {
    "type": "grammar", "grammar": {"syntax": "regex", "definition": r"\d{5}"}}}}, WEATHER]


def test_a_custom_tool_is_asked_for_under_its_regex_and_returned_in_openais_shape(client, structured_upstream):
    structured_upstream.script('{"name": "zip_lookup", "input": "90210"}')
    r = client.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "zip 90210?"}], tools=CUSTOM_TOOLS,
        tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "custom", "custom": {"name": "zip_lookup"}}]}})
    [call] = r.choices[0].message.tool_calls
    assert call.type == "custom" and (call.custom.name, call.custom.input) == ("zip_lookup", "90210")
    [sent] = structured_upstream.requests
    _no_tool_fields(sent)
    alternatives = [a for a in _alternatives(_schema(sent)) if a.get("type") == "object"]
    # allowed_tools: only the listed tool; its input a string under the regex
    assert [a["properties"]["name"]["const"] for a in alternatives] == ["zip_lookup"]
    assert alternatives[0]["properties"]["input"] == {"type": "string", "pattern": r"^(\d{5})$"}


def test_a_custom_call_off_its_regex_is_retried_and_history_is_rendered(client, structured_upstream):
    structured_upstream.script('{"name": "zip_lookup", "input": "9021"}', '{"name": "zip_lookup", "input": "90210"}')
    r = client.chat.completions.create(
        model="remote", tools=CUSTOM_TOOLS, tool_choice={"type": "custom", "custom": {"name": "zip_lookup"}},
        stream=True, messages=[
            {"role": "user", "content": "zip?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "custom", "custom": {"name": "zip_lookup", "input": "10001"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "New York"},
            {"role": "user", "content": "and 90210?"}])
    pieces = [d for c in r for d in (c.choices[0].delta.tool_calls or []) if c.choices]
    assert pieces[0].id and "".join((p.model_extra or {}).get("custom", {}).get("input", "") for p in pieces) == "90210"
    first = structured_upstream.requests[0]
    rendered = [m["content"] for m in first["messages"] if m["role"] in ("assistant", "user")]
    assert '{"name": "zip_lookup", "input": "10001"}' in rendered and any("Result of zip_lookup: New York" in t
                                                                            for t in rendered)
