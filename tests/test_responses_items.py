"""A Husky response's output items sent back as ``input`` on /v1/responses, as a client that keeps its
own context does (``store: false``, no ``previous_response_id``: the OpenAI Agents SDK's default):
its ``reasoning``, ``code_interpreter_call`` and ``web_search_call`` items are accepted, kept as sent
(``input_items``), and shown to no node. A real ``octogate serve`` with the shipped action generator
and the embedded SmolLM2 as the experts (as tests/test_agent_responses.py), the scripted loopback
upstream as the chat-backed node ``echo`` (it answers "echo: <the last user message>" and records the
body it was sent), Redis for stored responses, raw HTTP, the ``openai`` SDK, and the OpenAI Agents SDK
unmodified in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai.types.responses import ResponseCodeInterpreterToolCall, ResponseFunctionWebSearch, ResponseReasoningItem

from tests.conformance.spec import violations

STEP_TYPES = {"reasoning", "code_interpreter_call", "web_search_call"}
KENYA = "What is the capital of Kenya?"
PENCILS = "A shop sells pencils for $3 each. Ava buys 14 pencils. How much does Ava pay?"


@pytest.fixture(scope="module")
def gw(gateway_factory, upstream):
    smollm2 = {"model": "embedded/smollm2-135m-instruct"}
    graph = {
        "responses": {"redis_url": "redis://127.0.0.1:6379/0", "ttl_seconds": 600,
                      "key_prefix": f"octogate:test-resp-items:{uuid.uuid4().hex[:8]}:"},
        "backends": {"smollm2": smollm2},
        "nodes": [
            {"name": "general", "persona": "You are a helpful assistant. Answer briefly.", "backend": "smollm2",
             "params": {"max_tokens": 64}},
            {"name": "coder", "persona": "You write short, correct Python programs.", "backend": "smollm2"},
            {"name": "broken", "backend": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1", "api_key": "k",
                                           "retries": 0, "connect_timeout": 1, "timeout": 2}},
            {"name": "echo", "backend": {"model": "openai/echo", "api_base": upstream.base_url, "api_key": "k",
                                         "timeout": 5}},
        ],
        "agents": {
            "husky": {"experts": {"code": "coder", "math": "general", "search": "general", "commonsense": "general"},
                      "max_steps": 2, "expert_max_tokens": 64},
            # fast and plain to read: every expert fails, the answer node echoes its prompt (the task)
            "husky-broken": {"experts": {"code": "broken", "math": "broken", "search": "broken",
                                         "commonsense": "broken", "answer": "echo"}, "max_steps": 1},
        },
    }
    return gateway_factory(graph)


AUTH = {"Authorization": "Bearer unused"}  # what gw.client() sends: the same scope for stored responses


def post(gw, body: dict) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/responses", json=body, headers=AUTH, timeout=180)


@pytest.fixture(scope="module")
def kenya(gw) -> dict:
    """A real Husky turn over raw HTTP, not stored: a search step (reasoning, web_search_call), the answer."""
    r = post(gw, {"model": "husky", "input": KENYA, "max_output_tokens": 48, "store": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "web_search_call" in [i["type"] for i in body["output"]], body["output"]
    return body


@pytest.fixture(scope="module")
def pencils(gw) -> openai.types.responses.Response:
    """A real Husky turn through the openai SDK, not stored: a code step (reasoning, code_interpreter_call)."""
    response = gw.client().responses.create(model="husky", input=PENCILS, max_output_tokens=48, store=False)
    assert any(isinstance(i, ResponseCodeInterpreterToolCall) for i in response.output), response.output
    return response


def sent_back(first_input: str, output: list[dict], question: str) -> list[dict]:
    """The next turn's input as a client keeping its own context writes it."""
    return [{"role": "user", "content": first_input}, *output, {"role": "user", "content": question}]


def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return [without_nulls(v) for v in value] if isinstance(value, list) else value


def answer_of(output: list[dict]) -> str:
    return next(i for i in output if i["type"] == "message")["content"][0]["text"]


def assert_no_trace(raw: bytes, items: list[dict]) -> None:
    """Nothing of the step items (ids, summaries, code, queries, logs) in what a node was sent."""
    text = raw.decode()
    assert "Step: [" not in text and "Output: " not in text, text
    for item in items:
        if item["type"] in STEP_TYPES:
            assert item["id"] not in text, (item, text)
            if item.get("code"):
                assert json.dumps(item["code"])[1:-1] not in text, (item, text)
            query = (item.get("action") or {}).get("query")
            if query and query not in (KENYA, PENCILS):  # the expert's query may repeat the question
                assert query not in text, (item, text)


# ---------------------------------------------------------------- to a chat-backed node
@pytest.mark.parametrize("stream", [False, True])
def test_a_node_sees_the_conversation_without_the_steps(gw, upstream, kenya, pencils, stream):
    output = kenya["output"] + pencils.model_dump(mode="json", exclude_none=True)["output"]
    items = sent_back(KENYA, output, "Thanks. Which city was it?")
    assert {i.get("type") for i in items} >= STEP_TYPES
    body = {"model": "echo", "input": items, "store": False, "stream": stream}
    with httpx.stream("POST", f"{gw.url}/v1/responses", json=body, timeout=60) as r:
        r.read()
    assert r.status_code == 200, r.text
    final = (orjson.loads(r.text.rsplit("data: ", 1)[1]).get("response") if stream else r.json())
    assert final["output_text"] == "echo: Thanks. Which city was it?"
    sent = upstream.state.last()
    assert [(m["role"], m["content"]) for m in sent.body["messages"]] == [
        ("user", KENYA), ("assistant", answer_of(kenya["output"])), ("assistant", pencils.output_text),
        ("user", "Thanks. Which city was it?")]
    assert_no_trace(sent.raw, output)


def test_input_items_lists_them_as_sent(gw, upstream, kenya, pencils):
    output = kenya["output"] + pencils.model_dump(mode="json")["output"]  # the SDK's form: its nulls too
    items = sent_back(KENYA, output, "Which city?")
    r = post(gw, {"model": "echo", "input": items})
    assert r.status_code == 200, r.text
    assert_no_trace(upstream.state.last().raw, output)
    listed = httpx.get(f"{gw.url}/v1/responses/{r.json()['id']}/input_items", headers=AUTH,
                       params={"order": "asc", "limit": 100}, timeout=10).json()
    assert not violations("ResponseItemList", listed), violations("ResponseItemList", listed)
    assert len(listed["data"]) == len(items)
    for got, item in zip(listed["data"], items):
        if item.get("type") in STEP_TYPES:  # as sent, ids and all, less the SDK's null fields
            assert got == without_nulls(item)
        elif item.get("type") == "message":  # the answer: its id and text kept
            assert (got["id"], got["content"][0]["text"]) == (item["id"], item["content"][0]["text"])
        else:
            assert got["role"] == "user" and got["content"][0]["text"] == item["content"]
    assert [got for got in listed["data"] if got["id"].startswith("rs_")][0] == kenya["output"][0]  # exactly
    # the SDK reads them back as the types they were
    page = gw.client().responses.input_items.list(r.json()["id"], order="asc", limit=100)
    kinds = [type(i) for i in page.data]
    assert ResponseReasoningItem in kinds and ResponseFunctionWebSearch in kinds
    assert ResponseCodeInterpreterToolCall in kinds


# ---------------------------------------------------------------- to the agent
def test_the_agent_takes_its_own_output_back_and_leaves_the_steps_out_of_its_task(gw, kenya):
    """husky-broken's answer node echoes its prompt, "Task: <task>\nSolution steps: <this run's steps>...":
    the task has the earlier question and answer, and nothing of the earlier steps."""
    items = sent_back(KENYA, kenya["output"], "Say the city's name again.")
    r = post(gw, {"model": "husky-broken", "input": items, "store": False})
    assert r.status_code == 200, r.text
    echoed = r.json()["output_text"]
    assert echoed.startswith("echo: Task: ") and "\nSolution steps:\n" in echoed, echoed
    task = echoed.removeprefix("echo: Task: ").split("\nSolution steps:\n")[0]
    assert task == ("Say the city's name again.\n\nEarlier in the conversation:\n"
                    f"User: {KENYA}\nAssistant: {answer_of(kenya['output']).strip()}"), task  # 48 tokens: not clipped
    assert "Step: [" not in task and "Output: " not in task


def test_the_sdk_sends_a_husky_turn_back_to_husky(gw, pencils):
    """The openai SDK's typed output items (``model_dump()``, nulls and all) in the next turn's input, to
    the real agent, not stored: answered."""
    items = sent_back(PENCILS, [i.model_dump(mode="json") for i in pencils.output], "And for 20 pencils?")
    second = gw.client().responses.create(model="husky", input=items, max_output_tokens=48, store=False)
    assert second.status in ("completed", "incomplete") and second.output_text.strip()
    assert isinstance(second.output[0], ResponseReasoningItem)
    assert second.output[0].id not in {i.id for i in pencils.output}  # its own steps, not the ones sent


# ---------------------------------------------------------------- bad shapes
CI = {"type": "code_interpreter_call", "id": "ci_1", "status": "completed", "container_id": "cntr_1",
      "code": "print(42)", "outputs": [{"type": "logs", "logs": "42\n"}]}
WS = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "kenya"}}
RS = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Step: [search] Kenya"}]}


@pytest.mark.parametrize("item, param, code", [
    ({**RS, "id": None}, "input[1].id", "invalid_type"),
    ({k: v for k, v in RS.items() if k != "id"}, "input[1].id", "missing_required_parameter"),
    ({k: v for k, v in RS.items() if k != "summary"}, "input[1].summary", "missing_required_parameter"),
    ({**RS, "summary": [{"type": "summary_text"}]}, "input[1].summary[0].text", "missing_required_parameter"),
    ({**RS, "summary": [{"type": "reasoning_text", "text": "x"}]}, "input[1].summary[0].type", "unsupported_value"),
    ({**RS, "content": [{"type": "reasoning_text", "text": 3}]}, "input[1].content[0].text", "invalid_type"),
    ({**RS, "status": "done"}, "input[1].status", "invalid_value"),
    ({k: v for k, v in CI.items() if k != "outputs"}, "input[1].outputs", "missing_required_parameter"),
    ({k: v for k, v in CI.items() if k != "container_id"}, "input[1].container_id", "missing_required_parameter"),
    ({**CI, "code": 42}, "input[1].code", "invalid_type"),
    ({**CI, "outputs": [{"type": "logs"}]}, "input[1].outputs[0].logs", "missing_required_parameter"),
    ({**CI, "outputs": [{"type": "files", "files": []}]}, "input[1].outputs[0].type", "unsupported_value"),
    ({**CI, "outputs": [{"type": "image"}]}, "input[1].outputs[0].url", "missing_required_parameter"),
    ({k: v for k, v in WS.items() if k != "action"}, "input[1].action", "missing_required_parameter"),
    ({**WS, "action": "search"}, "input[1].action", "invalid_type"),
    ({**WS, "action": {"type": "browse"}}, "input[1].action.type", "unsupported_value"),
    ({**WS, "action": {"type": "find_in_page", "url": "https://example.com"}}, "input[1].action.pattern",
     "missing_required_parameter"),
    ({**WS, "action": {"type": "search", "sources": [{"type": "url"}]}}, "input[1].action.sources[0].url",
     "missing_required_parameter"),
    ({k: v for k, v in WS.items() if k != "status"}, "input[1].status", "missing_required_parameter"),
    ({"type": "file_search_call", "id": "fs_1"}, "input[1].type", "unsupported_value"),
])
@pytest.mark.parametrize("model", ["echo", "husky-broken"])
def test_bad_shapes_are_a_400_naming_the_field(gw, item, param, code, model):
    r = post(gw, {"model": model, "input": [{"role": "user", "content": "hi"}, item, {"role": "user", "content": "x"}],
                  "store": False})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error
    assert f"'{param}'" in error["message"], error


def test_the_sdk_gets_the_400_and_extra_fields_are_tolerated(gw, upstream):
    client = gw.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="echo", store=False, input=[{**CI, "outputs": [{"type": "logs", "logs": 42}]},
                                                                  {"role": "user", "content": "hi"}])
    assert err.value.param == "input[0].outputs[0].logs"
    extra = {**WS, "action": {**WS["action"], "engine": "local"}, "provider": "octogate"}  # fields OpenAI may add
    response = client.responses.create(model="echo", input=[RS, CI, extra, {"role": "user", "content": "hi"}])
    assert response.output_text == "echo: hi"
    assert [m["role"] for m in upstream.state.last().body["messages"]] == ["user"]
    listed = client.responses.input_items.list(response.id, order="asc")
    assert [i.model_dump(mode="json", exclude_unset=True) for i in listed.data][:3] == [RS, CI, extra]


# ---------------------------------------------------------------- the OpenAI Agents SDK, unmodified
# Its package is named ``agents``, as is this repository's folder: the run is a child process started
# outside the repository (as in tests/test_responses_embedded.py).
AGENT_SCRIPT = textwrap.dedent('''
    import json, os
    from openai import AsyncOpenAI
    from agents import Agent, ModelSettings, Runner, set_default_openai_api, set_default_openai_client
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
    set_default_openai_api("responses")
    set_default_openai_client(AsyncOpenAI(base_url=os.environ["GATEWAY"] + "/v1", api_key="unused", max_retries=0))
    agent = Agent(name="husky", model="husky", model_settings=ModelSettings(store=False, max_tokens=48))
    first = Runner.run_sync(agent, "What is the capital of Kenya?")
    second_input = first.to_input_list() + [{"role": "user", "content": "Say the name of that city again."}]
    second = Runner.run_sync(agent, second_input)
    print(json.dumps({
        "first": [item.raw_item.type if hasattr(item.raw_item, "type") else item.raw_item.get("type")
                  for item in first.new_items],
        "second_input": [i.get("type", "message") for i in second_input],
        "first_output": first.final_output, "final_output": second.final_output,
        "second": [item.type for item in second.new_items],
        "response_ids": [r.response_id for r in [*first.raw_responses, *second.raw_responses]],
    }))
''')


def test_the_agents_sdk_runs_two_turns_against_husky(gw, upstream, tmp_path: Path):
    script = tmp_path / "two_turns.py"
    script.write_text(AGENT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env={**env, "GATEWAY": gw.url},
                          capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first"][0] == "reasoning" and result["first"][-1] == "message", result
    assert "web_search_call" in result["first"], result
    # the second turn's input is the first's, built by the SDK: its steps included
    assert result["second_input"][0] == "message" and result["second_input"][-1] == "message", result
    assert set(result["second_input"]) >= {"reasoning", "web_search_call"}, result
    assert result["first_output"].strip() and result["final_output"].strip(), result
    assert result["second"][-1] == "message_output_item", result
    ids = result["response_ids"]
    assert len(ids) == 2 and all(i.startswith("resp_") for i in ids), result
    assert httpx.get(f"{gw.url}/v1/responses/{ids[1]}", timeout=10).status_code == 404  # store: false kept nothing
