"""POST /v1/responses with the real ``openai`` SDK against a real ``octogate serve``: text, streamed
events in OpenAI's order, function calls and their outputs, stored responses (GET, DELETE,
input_items, previous_response_id across two gateway processes sharing Redis, key scoping, Redis
down), errors naming the exact field, fallbacks, and ``responses: native`` pass-through.

The upstream is scripted here (``ResponsesUpstream``): chat completions that echo, call a tool,
or die mid-stream, and a ``/v1/responses`` of its own for the native pass-through."""

from __future__ import annotations

import asyncio
import threading
import uuid

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from tests.loopback import LoopbackServer, free_port


def _last_text(messages: list[dict]) -> tuple[str, str]:
    last = messages[-1]
    content = last.get("content") or ""
    return last["role"], content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


class ResponsesUpstream(LoopbackServer):
    name = "responses upstream"

    def __init__(self) -> None:
        super().__init__()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.chat_bodies: list[dict] = []
        self.responses_bodies: list[dict] = []
        self.endless_cancelled = threading.Event()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.chat_bodies.append(body)
        model = body["model"]
        if model == "broken":
            return web.json_response({"error": {"message": "the GPU caught fire", "type": "server_error"}}, status=500)
        role, text = _last_text(body["messages"])
        message: dict = {"role": "assistant", "content": f"echo: {text}"}
        finish = "stop"
        if model == "tools" and role != "tool":
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_abc", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
            finish = "tool_calls"
        elif model == "tools":
            message["content"] = f"It is {text} in Paris."
        elif model == "short":
            finish = "length"
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        if not body.get("stream"):
            return web.json_response({"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": model,
                                      "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                      "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def chunk(delta: dict, finish_reason: str | None = None, **extra) -> None:
            data = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
            await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")

        await chunk({"role": "assistant", "content": ""})
        if model == "endless":
            try:
                while True:
                    await chunk({"content": "tick "})
                    await asyncio.sleep(0.05)
            except (ConnectionResetError, asyncio.CancelledError):
                self.endless_cancelled.set()
                raise
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            await chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]})
            for piece in ('{"city": ', '"Paris"}'):
                await chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        else:
            words = message["content"].split(" ")
            for i, word in enumerate(words):
                await chunk({"content": word if i == 0 else " " + word})
                if model == "dies" and i == 1:
                    request.transport.close()
                    return resp
        await chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            data = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.responses_bodies.append(body)
        response = {"id": "resp_native", "object": "response", "created_at": 1, "status": "completed",
                    "model": body["model"], "output": [{"id": "msg_n", "type": "message", "role": "assistant",
                                                        "status": "completed", "content": [
                                                            {"type": "output_text", "text": "native answer",
                                                             "annotations": []}]}],
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}
        if not body.get("stream"):
            return web.json_response(response)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, event in enumerate([{"type": "response.created", "response": {**response, "status": "in_progress",
                                                                               "output": []}},
                                   {"type": "response.completed", "response": response}]):
            event["sequence_number"] = i
            await resp.write(f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture(scope="module")
def rupstream():
    server = ResponsesUpstream().start()
    yield server
    server.stop()


def graph(upstream: ResponsesUpstream, prefix: str, redis_url: str = "redis://127.0.0.1:6379/0", **server) -> dict:
    def node(name: str, model: str, **extra) -> dict:
        return {"name": name, "backend": {"model": f"openai/{model}", "api_base": upstream.base_url,
                                          "timeout": 2, "retries": 0}, **extra}

    return {
        "server": server,
        "responses": {"redis_url": redis_url, "key_prefix": prefix, "ttl_seconds": 600},
        "nodes": [
            node("echo", "echo", persona="You are the echo persona.", params={"temperature": 0.3, "max_tokens": 77}),
            node("tools", "tools"),
            node("short", "short"),
            node("dies", "dies"),
            node("endless", "endless"),
            node("broken", "broken", fallbacks=["echo"]),
            {"name": "native", "persona": "You are native.", "params": {"temperature": 0.1},
             "backend": {"model": "openai/upstream-model", "api_base": upstream.base_url, "responses": "native"}},
        ],
    }


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"octogate:test-resp:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def gw(rupstream, gateway_factory, prefix):
    return gateway_factory(graph(rupstream, prefix, api_keys=["key-a", "key-b"]))


@pytest.fixture()
def client(gw) -> openai.OpenAI:
    return gw.client(api_key="key-a")


# ---------------------------------------------------------------- create
def test_text_response_with_persona_params_and_headers(client, rupstream):
    raw = client.responses.with_raw_response.create(model="echo", input="hello there", instructions="Be brief.")
    assert raw.headers["x-octogate-node"] == "echo"
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None and response.incomplete_details is None
    assert response.output_text == "echo: hello there"
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.usage.input_tokens == 11 and response.usage.output_tokens == 3 and response.usage.total_tokens == 14
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.instructions == "Be brief." and response.model == "echo"
    sent = rupstream.chat_bodies[-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert sent["messages"][0]["content"] == "You are the echo persona."
    assert sent["messages"][1]["content"] == "Be brief."
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 77  # the node's params fill the gaps


def test_request_fields_reach_the_chat_completion(client, rupstream):
    client.responses.create(model="echo", input=[{"role": "user", "content": [{"type": "input_text", "text": "a"}]}],
                            temperature=1.5, top_p=0.5, max_output_tokens=20, user="u1", store=False,
                            text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"},
                                             "strict": True}})
    sent = rupstream.chat_bodies[-1]
    assert sent["temperature"] == 1.5 and sent["top_p"] == 0.5 and sent["max_tokens"] == 20 and sent["user"] == "u1"
    assert sent["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}


def test_cut_off_answer_is_incomplete(client):
    response = client.responses.create(model="short", input="hi", store=False)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


def test_function_call_and_output_round_trip(client, rupstream):
    tools = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
              "strict": True}]
    first = client.responses.create(model="tools", input="Weather in Paris?", tools=tools, tool_choice="auto")
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_abc"
    assert call.arguments == '{"city": "Paris"}' and call.id.startswith("fc_")
    sent = rupstream.chat_bodies[-1]
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in tools[0].items() if k != "type"}}]
    assert sent["tool_choice"] == "auto"
    # Continued by previous_response_id: the call's output only
    second = client.responses.create(model="tools", previous_response_id=first.id, tools=tools, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == "It is sunny in Paris."
    messages = rupstream.chat_bodies[-1]["messages"]
    assert messages[0] == {"role": "user", "content": "Weather in Paris?"}
    assert messages[1]["role"] == "assistant" and messages[1]["tool_calls"][0]["id"] == "call_abc"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}
    # ... or the whole conversation sent again, stateless
    third = client.responses.create(model="tools", store=False, tools=tools, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_abc", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_abc", "output": "rainy"}])
    assert third.output_text == "It is rainy in Paris."
    assert rupstream.chat_bodies[-1]["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_named_tool_choice(client, rupstream):
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    client.responses.create(model="tools", input="x", tools=tools, store=False,
                            tool_choice={"type": "function", "name": "get_weather"})
    assert rupstream.chat_bodies[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_fallback_node_answers(client):
    raw = client.responses.with_raw_response.create(model="broken", input="x", store=False)
    assert raw.headers["x-octogate-node"] == "echo" and raw.headers["x-octogate-fallback"] == "backend_error"
    assert raw.parse().output_text == "echo: x"


# ---------------------------------------------------------------- streams
EXPECTED_TEXT = ["response.created", "response.in_progress", "response.output_item.added",
                 "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                 "response.output_text.delta", "response.output_text.done", "response.content_part.done",
                 "response.output_item.done", "response.completed"]


def test_stream_events_in_openai_order(client):
    with client.responses.stream(model="echo", input="two words") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == EXPECTED_TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "echo: two words"
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "echo: two words"
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events if hasattr(e, "item_id"))
    assert final.output_text == "echo: two words" and final.status == "completed"
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 3
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"
    # streamed and stored: GET gives the same response back
    assert client.responses.retrieve(final.id).output_text == "echo: two words"


def test_stream_function_call_events(client):
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    stream = client.responses.create(model="tools", input="Weather?", tools=tools, stream=True, store=False)
    events = list(stream)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert events[5].arguments == '{"city": "Paris"}'
    assert events[6].item.call_id == "call_abc" and events[6].item.status == "completed"
    assert events[-1].response.output[0].arguments == '{"city": "Paris"}'


def test_stream_that_fails_midway_ends_with_failed(gw):
    with httpx.stream("POST", f"{gw.url}/v1/responses", headers={"Authorization": "Bearer key-a"},
                      json={"model": "dies", "input": "one two three four", "stream": True, "store": False},
                      timeout=10) as resp:
        assert resp.status_code == 200
        events = [orjson.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["code"] == "server_error"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_a_client_that_leaves_mid_stream_stops_the_backend(gw, rupstream):
    with httpx.stream("POST", f"{gw.url}/v1/responses", headers={"Authorization": "Bearer key-a"},
                      json={"model": "endless", "input": "x", "stream": True}, timeout=10) as resp:
        deltas = 0
        for line in resp.iter_lines():
            deltas += '"response.output_text.delta"' in line
            if deltas == 3:
                break
    assert rupstream.endless_cancelled.wait(5)
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert any(line.startswith("octogate_requests_total{") and 'node="endless"' in line and 'status="499"' in line
               for line in metrics.splitlines())


def test_stream_refused_before_start_keeps_its_status(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x", stream=True)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("body, param, status", [
    ({"model": "echo", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", 400),
    ({"model": "echo", "input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                 {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[2].content[0].type", 400),
    ({"model": "echo", "input": [{"type": "file_search_call", "id": "fs_1", "queries": [], "status": "completed"}]},
     "input[0].type", 400),  # a hosted tool's item octogate never produces (reasoning and its own are accepted)
    ({"model": "echo", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", 400),
    ({"model": "echo", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", 400),
    ({"model": "echo", "input": []}, "input", 400),
    ({"model": "echo"}, "input", 400),
    ({"model": "echo", "input": "x", "temperature": "hot"}, "temperature", 400),
    ({"model": "echo", "input": "x", "max_output_tokens": 0}, "max_output_tokens", 400),
    ({"model": "echo", "input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", 400),
    ({"model": "echo", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type", 400),
    ({"model": "echo", "input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice", 400),
    ({"model": "echo", "input": "x", "include": ["everything"]}, "include[0]", 400),
    ({"model": "echo", "input": "x", "previous_response_id": "resp_nope"}, "previous_response_id", 404),
    ({"model": "nope", "input": "x"}, "model", 404),
])
def test_errors_name_the_exact_field(gw, body, param, status):
    resp = httpx.post(f"{gw.url}/v1/responses", json=body, headers={"Authorization": "Bearer key-a"}, timeout=10)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param, error
    assert set(error) == {"message", "type", "param", "code"}


def test_bad_bodies_and_methods(gw):
    headers = {"Authorization": "Bearer key-a"}
    assert httpx.post(f"{gw.url}/v1/responses", content=b"{nope", headers=headers).status_code == 400
    assert httpx.post(f"{gw.url}/v1/responses", content=b"[1]", headers=headers).status_code == 400
    assert httpx.get(f"{gw.url}/v1/responses", headers=headers).status_code == 405
    assert httpx.post(f"{gw.url}/v1/responses", json={"model": "echo", "input": "x"}).status_code == 401


# ---------------------------------------------------------------- stored responses
def test_get_delete_and_input_items(client, gw):
    response = client.responses.create(model="echo", input=[
        {"role": "user", "content": f"m{i}"} for i in range(5)])
    got = client.responses.retrieve(response.id)
    assert got.id == response.id and got.output_text == "echo: m4" and got.store is True
    page = client.responses.input_items.list(response.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["m0", "m1"] and page.has_more
    assert page.first_id == page.data[0].id and page.last_id == page.data[1].id
    rest = client.responses.input_items.list(response.id, limit=10, order="asc", after=page.last_id)
    assert [i.content[0].text for i in rest.data] == ["m2", "m3", "m4"] and not rest.has_more
    newest = client.responses.input_items.list(response.id)  # desc by default
    assert newest.data[0].content[0].text == "m4"
    everything = [i.content[0].text for i in client.responses.input_items.list(response.id, limit=1, order="asc")]
    assert everything == ["m0", "m1", "m2", "m3", "m4"]  # the SDK's auto-pagination follows has_more/after
    # another key sees nothing of it
    other = gw.client(api_key="key-b")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="echo", input="x", previous_response_id=response.id)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_store_false_is_not_kept(client):
    response = client.responses.create(model="echo", input="x", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_previous_response_across_two_gateways(rupstream, gateway_factory, gw, prefix):
    other = gateway_factory(graph(rupstream, prefix, api_keys=["key-a", "key-b"]))  # same Redis, same prefix
    first = gw.client(api_key="key-a").responses.create(model="echo", input="my name is Ada",
                                                         instructions="first instructions")
    second = other.client(api_key="key-a").responses.create(model="echo", input="what is my name?",
                                                            previous_response_id=first.id)
    assert second.previous_response_id == first.id
    messages = rupstream.chat_bodies[-1]["messages"]
    assert messages == [{"role": "system", "content": "You are the echo persona."},
                        {"role": "user", "content": "my name is Ada"},
                        {"role": "assistant", "content": "echo: my name is Ada"},
                        {"role": "user", "content": "what is my name?"}]  # instructions are not carried over
    third = gw.client(api_key="key-a").responses.create(model="echo", input="and again?", previous_response_id=second.id)
    assert [m["content"] for m in rupstream.chat_bodies[-1]["messages"]][1:] == [
        "my name is Ada", "echo: my name is Ada", "what is my name?", "echo: what is my name?", "and again?"]
    assert third.status == "completed"


def test_redis_down_store_false_served_others_503(rupstream, gateway_factory):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    down = gateway_factory(graph(rupstream, "octogate:test-down:", redis_url=dead))
    client = down.client()
    assert client.responses.create(model="echo", input="x", store=False).output_text == "echo: x"
    for call in (lambda: client.responses.create(model="echo", input="x"),
                 lambda: client.responses.create(model="echo", input="x", stream=True),
                 lambda: client.responses.create(model="echo", input="x", store=False, previous_response_id="resp_1"),
                 lambda: client.responses.retrieve("resp_1")):
        with pytest.raises(openai.InternalServerError) as info:
            call()
        assert info.value.status_code == 503
        assert info.value.body["code"] == "responses_store_unavailable"


# ---------------------------------------------------------------- native pass-through
def test_native_pass_through(client, rupstream):
    raw = client.responses.with_raw_response.create(model="native", input="hi", instructions="Be terse.")
    assert raw.headers["x-octogate-node"] == "native"
    assert raw.parse().output_text == "native answer"
    sent = rupstream.responses_bodies[-1]
    assert sent["model"] == "upstream-model" and sent["input"] == "hi"
    assert sent["instructions"] == "You are native.\n\nBe terse." and sent["temperature"] == 0.1
    with client.responses.stream(model="native", input="hi") as stream:
        kinds = [e.type for e in stream]
        assert stream.get_final_response().output_text == "native answer"
    assert kinds == ["response.created", "response.completed"]
    assert rupstream.responses_bodies[-1]["stream"] is True


# ---------------------------------------------------------------- routing
def test_routed_by_the_router_model(rupstream, gateway_factory, prefix):
    from tests.sglang_server import SGLangDouble

    sglang = SGLangDouble().start()
    try:
        def node(name: str, token: int, **extra) -> dict:
            return {"name": name, "token": token, "persona": f"You are the {name} persona.",
                    "backend": {"model": "openai/echo", "api_base": rupstream.base_url, "timeout": 2}, **extra}

        routed = gateway_factory({
            "router": {"engine": "sglang", "base_url": sglang.base_url, "mode": "select+reformat", "timeout": 2,
                       "fallback": "general"},
            "responses": {"key_prefix": prefix},
            "nodes": [node("physics", 0), node("math", 4, reformat=True), node("general", 16)]})
        sglang.reset(text="<nexa_4>('Compute d/dx x^3 at x = 2')<nexa_end>")
        raw = routed.client().responses.with_raw_response.create(model="octopus",
                                                                 input="What is the derivative of x^3 at x = 2?")
        assert raw.headers["x-octogate-node"] == "math" and raw.headers["x-octogate-token"] == "<nexa_4>"
        assert raw.parse().output_text == "echo: Compute d/dx x^3 at x = 2"  # the node got the rewritten query
        assert rupstream.chat_bodies[-1]["messages"][0]["content"] == "You are the math persona."
        with routed.client().responses.stream(model="octopus", input="What is 2+2?") as stream:
            assert stream.get_final_response().output_text.startswith("echo: ")
    finally:
        sglang.stop()


# ---------------------------------------------------------------- metrics
def test_metrics_count_responses_like_chat(gw):
    client = gw.client(api_key="key-b")
    client.responses.create(model="tools", input="x", store=False,
                            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}])

    def value(text: str, name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    text = httpx.get(f"{gw.url}/metrics").text
    assert value(text, "octogate_requests_total", node="tools", status="200") >= 1
    assert value(text, "octogate_tokens_total", node="tools", direction="prompt", key="key-2") >= 11
    assert value(text, "octogate_upstream_duration_seconds_count", node="tools") >= 1
