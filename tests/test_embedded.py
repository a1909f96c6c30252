"""The embedded default end to end: the shipped graph, SmolLM2-135M-Instruct in-process, the openai SDK."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import REPO, start_gateway

QUESTION = [{"role": "user", "content": "What is the boiling point of water at sea level, in Celsius?"}]
GREEDY = dict(temperature=0, seed=7, max_tokens=24)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    gw = start_gateway(REPO / "config" / "default.yaml", tmp_path_factory.mktemp("emb") / "octogate.log")
    yield gw
    gw.stop()


@pytest.fixture()
def client(embedded) -> openai.OpenAI:
    return embedded.client(timeout=120)


def test_the_default_graph_lists_its_17_nodes_its_router_and_husky(client):
    ids = [m.id for m in client.models.list().data]
    assert len(ids) == 19 and "octopus" in ids and "math" in ids and "husky" in ids


def test_a_real_answer_streams_token_by_token(client):
    stream = client.chat.completions.create(model="physics", messages=QUESTION, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3, "the answer should arrive in many pieces, not at once"
    text = "".join(deltas)
    assert "100" in text, text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    usage = chunks[-1].usage
    assert usage.prompt_tokens > 20  # the persona is part of the prompt
    assert 0 < usage.completion_tokens <= GREEDY["max_tokens"]


def test_non_streaming_answer_matches_the_stream(client):
    full = client.chat.completions.create(model="physics", messages=QUESTION, **GREEDY)
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model="physics", messages=QUESTION, stream=True, **GREEDY)
                       if c.choices)
    assert full.choices[0].message.content == streamed
    assert full.usage.completion_tokens <= GREEDY["max_tokens"]
    assert full.model == "smollm2-135m-instruct"


def test_personas_differ_between_nodes(client):
    prompt = [{"role": "user", "content": "In one sentence, who are you?"}]
    a = client.chat.completions.create(model="law", messages=prompt, **GREEDY)
    b = client.chat.completions.create(model="chemistry", messages=prompt, **GREEDY)
    assert a.usage.prompt_tokens != b.usage.prompt_tokens or a.choices[0].message.content != b.choices[0].message.content


def test_concurrent_requests_each_get_their_own_answer(client):
    prompts = [f"Count from {i} to {i + 3}." for i in range(1, 5)]

    def ask(p: str) -> str:
        r = client.chat.completions.create(model="math", messages=[{"role": "user", "content": p}], **GREEDY)
        return r.choices[0].message.content

    sequential = [ask(p) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(ask, prompts))
    assert concurrent == sequential


def test_n_choices_and_stop(client):
    r = client.chat.completions.create(model="general", messages=QUESTION, n=2, temperature=1.2, seed=1, max_tokens=12)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    r = client.chat.completions.create(model="general", messages=QUESTION, stop=["0"], **GREEDY)
    assert "0" not in r.choices[0].message.content


def test_json_response_format_is_enforced(client):
    schema = {"type": "object", "properties": {"celsius": {"type": "integer"}}, "required": ["celsius"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model="physics", messages=QUESTION, temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    value = json.loads(r.choices[0].message.content)
    assert isinstance(value["celsius"], int)


def test_context_overflow_is_a_clean_400(embedded):
    long = [{"role": "user", "content": "word " * 5000}]
    resp = httpx.post(f"{embedded.url}/v1/chat/completions", json={"model": "general", "messages": long}, timeout=60)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"


def test_unsupported_inputs_are_clean_400s(embedded):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    cases = [
        ({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice.function.name"),
        ({"tools": tools, "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
         "messages[0].content[0].type"),
    ]
    for extra, param in cases:
        body = {"model": "general", "messages": QUESTION, **extra}
        resp = httpx.post(f"{embedded.url}/v1/chat/completions", json=body, timeout=60)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param


def test_ready_once_the_model_is_loaded(embedded):
    ready = httpx.get(f"{embedded.url}/readyz").json()
    assert ready["status"] == "ready" and ready["backends"] == {"backends.smollm2": "loaded"}


def test_client_disconnect_stops_generation(client, embedded):
    stream = client.chat.completions.create(
        model="history", messages=[{"role": "user", "content": "Tell me the whole history of Rome, in detail."}],
        stream=True, temperature=0, max_tokens=1500,
    )
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    # The next request is served (it would queue behind a runaway generation otherwise) ...
    client.chat.completions.create(model="general", messages=QUESTION, **GREEDY)
    # ... and the model reports that it stopped early.
    lines = [line for line in embedded.output().splitlines() if "generation stopped after" in line]
    assert lines, embedded.output()[-2000:]
    assert int(lines[-1].split("after ")[1].split()[0]) < 1500
