"""The gateway's proxy mechanics, end to end: the openai SDK -> `octogate serve` -> a scripted upstream."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from tests.conftest import scripted_graph
from tests.upstream import wait_until

USER = [{"role": "user", "content": "hello there"}]


def test_models_lists_every_node(client, gateway):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["echo", "plain", "ratelimit", "broken", "badparam", "slow", "dies", "endless", "via-litellm"]
    assert all(m.object == "model" and m.owned_by == "octogate" for m in models.data)
    echo = client.models.retrieve("echo")
    assert echo.id == "echo"
    assert echo.model_extra["functional_token"] == "<nexa_0>"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"


def test_non_streaming_completion(client, upstream):
    resp = client.chat.completions.with_raw_response.create(model="plain", messages=USER)
    completion = resp.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0
    assert resp.headers["x-octogate-node"] == "plain"
    sent = upstream.state.last()
    assert sent.body["model"] == "echo"  # the upstream's own model name, not the node's
    assert sent.headers["Authorization"] == "Bearer upstream-secret"  # the backend's key, not the client's


def test_persona_goes_first_and_client_system_messages_stay(client, upstream):
    messages = [{"role": "system", "content": "client system"}, {"role": "user", "content": "hi"}]
    client.chat.completions.create(model="echo", messages=messages)
    sent = upstream.state.last().body["messages"]
    assert sent == [
        {"role": "system", "content": "You are the echo persona."},
        {"role": "system", "content": "client system"},
        {"role": "user", "content": "hi"},
    ]


def test_node_defaults_apply_but_client_fields_win(client, upstream):
    client.chat.completions.create(model="echo", messages=USER)
    assert upstream.state.last().body["temperature"] == 0.3
    assert upstream.state.last().body["max_tokens"] == 77
    client.chat.completions.create(model="echo", messages=USER, temperature=1.5, max_completion_tokens=9)
    sent = upstream.state.last().body
    assert sent["temperature"] == 1.5
    assert sent["max_completion_tokens"] == 9
    assert "max_tokens" not in sent  # the node's default must not contradict the client's limit


def test_every_documented_field_reaches_the_backend(client, upstream):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    fields = dict(
        temperature=0.5, top_p=0.9, max_tokens=12, stop=["END", "STOP"], n=2, seed=42, presence_penalty=0.5,
        frequency_penalty=-0.5, logprobs=True, top_logprobs=3, tools=tools, tool_choice="auto",
        parallel_tool_calls=False, user="user-1", metadata={"team": "a"}, logit_bias={"50256": -100},
        response_format={"type": "json_object"},
    )
    client.chat.completions.create(model="plain", messages=USER, extra_body={"top_k": 5, "repetition_penalty": 1.1},
                                   **fields)
    sent = upstream.state.last().body
    for key, value in fields.items():
        assert sent[key] == value, key
    assert sent["top_k"] == 5 and sent["repetition_penalty"] == 1.1  # unknown fields tolerated and forwarded


def test_streaming(client):
    stream = client.chat.completions.create(model="plain", messages=USER, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)


def test_streaming_wire_format(gateway):
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions",
                      json={"model": "plain", "messages": USER, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-octogate-node"] == "plain"
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_litellm_adapter_translates_and_applies_persona(client, upstream):
    completion = client.chat.completions.create(model="via-litellm", messages=USER)
    assert completion.choices[0].message.content == "echo: hello there"
    sent = upstream.state.last()
    assert sent.body["messages"][0] == {"role": "system", "content": "You are the litellm persona."}
    assert sent.headers["Authorization"] == "Bearer upstream-secret"
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="via-litellm", messages=USER, stream=True) if c.choices)
    assert text == "echo: hello there"


# ------------------------------------------------------------------------- errors
def _error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": "plain"}, "messages"),
        ({"model": "plain", "messages": []}, "messages"),
        ({"model": "plain", "messages": USER, "temperature": 3}, "temperature"),
        ({"model": "plain", "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": "plain", "messages": USER, "n": 0}, "n"),
        ({"model": "plain", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "plain", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "plain", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "plain", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": "plain", "messages": USER, "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "plain", "messages": USER, "response_format": {"type": "json_schema"}}, "response_format"),
        ({"model": "plain", "messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_schema_violations_are_400_naming_the_param(gateway, payload, param):
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=payload)
    assert resp.status_code == 400
    err = _error(resp)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert "pydantic" not in err["message"] and "Traceback" not in err["message"]


def test_invalid_json_is_400(gateway):
    for body in (b"{nope", b"[1, 2]", b""):
        resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
        assert resp.status_code == 400
        assert _error(resp)["code"] == "invalid_json"


def test_sdk_sees_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="plain", messages=USER, temperature=9)
    assert err.value.body["param"] == "temperature"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-17", messages=USER)
    assert err.value.status_code == 404
    assert err.value.body["code"] == "model_not_found"


def test_unknown_route_is_404_in_openai_envelope(gateway):
    resp = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert resp.status_code == 404
    assert _error(resp)["type"] == "not_found_error"
    resp = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert resp.status_code == 405
    _error(resp)


def test_body_over_limit_is_413(gateway):
    big = "x" * (70 * 1024)
    resp = httpx.post(f"{gateway.url}/v1/chat/completions",
                      json={"model": "plain", "messages": [{"role": "user", "content": big}]})
    assert resp.status_code == 413
    assert _error(resp)["code"] == "request_too_large"

    def chunked():
        yield b'{"model": "plain", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}]}'

    resp = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunked(),
                      headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_upstream_429_passes_through_with_retry_after(gateway, client):
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "ratelimit", "messages": USER})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    assert _error(resp)["message"] == "slow down"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="ratelimit", messages=USER)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="ratelimit", messages=USER, stream=True)


def test_upstream_400_passes_through(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="badparam", messages=USER)
    assert err.value.body["param"] == "temperature"
    assert "too spicy" in err.value.body["message"]


def test_upstream_failure_is_502_with_its_message(gateway):
    for stream in (False, True):
        resp = httpx.post(f"{gateway.url}/v1/chat/completions",
                          json={"model": "broken", "messages": USER, "stream": stream})
        assert resp.status_code == 502
        err = _error(resp)
        assert "the GPU caught fire" in err["message"]
        assert err["type"] == "upstream_error"


def test_unreachable_upstream_is_502(gateway_factory):
    graph = {"nodes": [{"name": "gone", "backend": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"}}]}
    gw = gateway_factory(graph)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "gone", "messages": USER})
    assert resp.status_code == 502
    assert _error(resp)["code"] == "upstream_unreachable"
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unready"


def test_upstream_timeout_is_504(gateway, client):
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "slow", "messages": USER}, timeout=30)
    assert resp.status_code == 504
    assert _error(resp)["type"] == "timeout_error"
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="slow", messages=USER, stream=True)
    assert err.value.status_code == 504


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error(client):
    stream = client.chat.completions.create(model="dies", messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert received, "the chunks sent before the failure still arrive"
    assert "broke off" in err.value.message or "closed the stream" in err.value.message


def test_client_disconnect_cancels_the_upstream(client, upstream):
    upstream.state.endless_cancelled.clear()
    stream = client.chat.completions.create(model="endless", messages=USER, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # the client goes away mid-stream
    assert wait_until(upstream.state.endless_cancelled.is_set, timeout=5), "upstream kept generating"
    sent = upstream.state.endless_chunks_sent
    assert wait_until(lambda: upstream.state.endless_chunks_sent == sent, timeout=1)


def test_health_and_readiness(upstream, gateway_factory):
    # A gateway of its own: the shared one's failing nodes (broken, slow) make it "degraded".
    gateway = gateway_factory(scripted_graph(upstream))
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_concurrent_requests_are_answered_correctly(client):
    results: dict[int, str] = {}

    def one(i: int) -> None:
        r = client.chat.completions.create(model="plain", messages=[{"role": "user", "content": f"n{i}"}])
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"echo: n{i}" for i in range(32)}


# ------------------------------------------------------------------------- auth
def test_api_keys(upstream, gateway_factory):
    gw = gateway_factory(scripted_graph(upstream, api_keys=["env:TEST_KEY_A"]),
                         env={"TEST_KEY_A": "sk-alpha", "OCTOGATE_API_KEYS": "sk-beta, sk-gamma"})
    for key in ("sk-alpha", "sk-beta", "sk-gamma"):
        assert gw.client(api_key=key).chat.completions.create(model="plain", messages=USER).choices
    with pytest.raises(openai.AuthenticationError) as err:
        gw.client(api_key="sk-wrong").chat.completions.create(model="plain", messages=USER)
    assert err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-wrong").models.list()
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "plain", "messages": USER})
    assert resp.status_code == 401 and _error(resp)["code"] == "missing_api_key"
    assert httpx.get(f"{gw.url}/healthz").status_code == 200  # probes stay open
    assert "sk-wrong" not in gw.output() and "sk-alpha" not in gw.output()


def test_malformed_stream_usage_is_ignored_not_raised():
    from octogate.gateway.serving_chat import StreamOutcome, _count_usage

    outcome = StreamOutcome()
    _count_usage(b'{"choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": 3}}', outcome)
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (0, 0)
    _count_usage(b'{"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}', outcome)
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (4, 3)
