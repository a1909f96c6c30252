"""OpenAI's published spec as the judge (tests/conformance/): seeded spec-valid request bodies sent to a
gateway whose node passes through to a loopback upstream, and to the embedded default; every body
answered 2xx or with a documented 4xx, every answer and chunk valid under the spec's response schemas
and parsed by the openai SDK's typed models, pass-through fields unchanged. bench/conformance.py is
the larger run whose figures docs/conformance.md gives."""

from __future__ import annotations

import httpx
import pytest

from tests.conformance.corpus import Tally, corpus, embedded_default, judge
from tests.conformance.spec import sdk_violations, violations
from tests.conformance.upstream import SpecUpstream

PERSONA = "You are the conformance persona."
LOOPBACK_BODIES = 120
EMBEDDED_BODIES = 30


@pytest.fixture(scope="module")
def spec_upstream():
    server = SpecUpstream().start()
    yield server
    server.stop()


def _report(tally: Tally) -> str:
    return "\n".join([str(tally.figures()), *tally.failures[:10], *tally.violations[:10], *tally.changed[:10]])


def test_the_spec_file_is_the_extract_of_openai_openapi():
    from tests.conformance.spec import spec

    source = spec()["source"]
    assert source["license"]["name"] == "MIT" and "openai" in source["document"].lower()
    assert not violations("CreateChatCompletionRequest", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert violations("CreateChatCompletionResponse", {"id": "x", "object": "chat.completion", "created": 1,
                                                       "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                                       "logprobs": None, "message": {"role": "assistant", "content": "a"}}]})


def test_the_corpus_is_reproducible():
    assert corpus("n", 5, 7) == corpus("n", 5, 7)


def test_a_pass_through_node_accepts_the_spec_and_answers_it(spec_upstream, gateway_factory):
    gw = gateway_factory({"nodes": [{"name": "loop", "persona": PERSONA, "backend": {
        "model": "openai/loop", "api_base": spec_upstream.base_url, "api_key": "k", "timeout": 10}}]})
    tally = Tally()
    with httpx.Client(timeout=60) as client:
        for body in corpus("loop", LOOPBACK_BODIES, seed=25):
            judge(client, f"{gw.url}/v1/chat/completions", body, "passthrough", tally,
                  received=spec_upstream.last, persona=True)
            got = spec_upstream.last()
            if tally.accepted and got is not None:
                assert got["messages"][0] == {"role": "system", "content": PERSONA}
    assert tally.sent >= LOOPBACK_BODIES * 0.9, _report(tally)
    assert not tally.failures and not tally.violations and not tally.changed, _report(tally)


def test_custom_tools_pass_through_unchanged(spec_upstream, gateway_factory):
    gw = gateway_factory({"nodes": [{"name": "loop", "backend": {
        "model": "openai/loop", "api_base": spec_upstream.base_url, "api_key": "k", "timeout": 10}}]})
    body = {"model": "loop", "messages": [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "custom", "custom": {"name": "code_exec", "input": "print(4)"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"}],
        "tools": [{"type": "custom", "custom": {"name": "code_exec", "description": "Python", "format": {
            "type": "grammar", "grammar": {"syntax": "lark", "definition": "start: /.+/"}}}},
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
                "x": {"type": "integer", "maximum": 100000000000000000000000}}}}}],
        "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
            {"type": "custom", "custom": {"name": "code_exec"}}]}},
        "seed": 9223372036854775807}
    tally = Tally()
    with httpx.Client(timeout=60) as client:
        judge(client, f"{gw.url}/v1/chat/completions", body, "passthrough", tally, received=spec_upstream.last)
        judge(client, f"{gw.url}/v1/chat/completions", {**body, "tool_choice": {
            "type": "custom", "custom": {"name": "code_exec"}}, "seed": -9223372036854775808}, "passthrough", tally,
            received=spec_upstream.last)
    assert tally.accepted == 2 and not tally.violations and not tally.changed, _report(tally)


@pytest.fixture(scope="module")
def embedded_gateway(tmp_path_factory):
    gw = embedded_default(tmp_path_factory.mktemp("conformance-embedded"))
    yield gw
    gw.stop()


@pytest.mark.timeout(1500)
def test_the_embedded_default_accepts_the_spec_or_says_which_documented_limit(embedded_gateway):
    tally = Tally()
    with httpx.Client(timeout=300) as client:
        for body in corpus("general", EMBEDDED_BODIES, seed=25, embedded=True):
            judge(client, f"{embedded_gateway.url}/v1/chat/completions", body, "embedded", tally)
    assert tally.sent >= EMBEDDED_BODIES * 0.9, _report(tally)
    assert not tally.failures and not tally.violations, _report(tally)


CUSTOM_TOOLS = [
    {"type": "custom", "custom": {"name": "code_exec", "description": "Run Python code"}},
    {"type": "custom", "custom": {"name": "zip_lookup", "description": "Look up a US zip code", "format": {
        "type": "grammar", "grammar": {"syntax": "regex", "definition": r"\d{5}(-\d{4})?"}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]


@pytest.mark.parametrize("stream", [False, True])
def test_the_embedded_model_calls_a_custom_tool_under_its_regex(embedded_gateway, stream):
    import re

    client = embedded_gateway.client(timeout=300)
    kwargs = dict(model="general", messages=[{"role": "user", "content": "Which town has zip code 90210?"}],
                  tools=CUSTOM_TOOLS, tool_choice={"type": "custom", "custom": {"name": "zip_lookup"}},
                  temperature=0, max_tokens=40)
    if not stream:
        r = client.chat.completions.create(**kwargs)
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and call.type == "custom"
        name, text = call.custom.name, call.custom.input
        assert not violations("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
    else:
        with httpx.Client(timeout=300) as http:
            raw = http.post(f"{embedded_gateway.url}/v1/chat/completions", json={**kwargs, "stream": True}).text
        chunks = [__import__("json").loads(line[6:]) for line in raw.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        for chunk in chunks:
            assert not violations("CreateChatCompletionStreamResponse", chunk) and not sdk_violations("chunk", chunk)
        pieces = [d for c in chunks for d in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"]]
        name = pieces[0]["custom"]["name"]
        text = "".join(p["custom"]["input"] for p in pieces)
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert name == "zip_lookup" and re.fullmatch(r"\d{5}(-\d{4})?", text), text


def test_allowed_tools_restricts_the_embedded_models_choice_and_history_renders(embedded_gateway):
    client = embedded_gateway.client(timeout=300)
    r = client.chat.completions.create(
        model="general", messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=CUSTOM_TOOLS,
        tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "custom", "custom": {"name": "code_exec"}}]}}, temperature=0, max_tokens=30)
    call = r.choices[0].message.tool_calls[0]
    assert call.type == "custom" and call.custom.name == "code_exec" and isinstance(call.custom.input, str)
    follow = client.chat.completions.create(model="general", tools=CUSTOM_TOOLS, temperature=0, max_tokens=20, messages=[
        {"role": "user", "content": "Compute 2+2"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "custom", "custom": {"name": "code_exec", "input": "print(2+2)"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"}])
    assert follow.choices[0].message.refusal is None and follow.choices[0].message.content is not None
    with pytest.raises(__import__("openai").BadRequestError) as err:
        client.chat.completions.create(model="general", messages=[{"role": "user", "content": "x"}], tools=[
            {"type": "custom", "custom": {"name": "g", "format": {"type": "grammar", "grammar": {
                "syntax": "lark", "definition": "start: /a/"}}}}], max_tokens=5)
    assert err.value.response.json()["error"]["param"] == "tools[0].custom.format.grammar.syntax"
