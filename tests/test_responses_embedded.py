"""POST /v1/responses on the embedded default (SmolLM2-135M through llama.cpp): ``text.format``
json_schema, function calls, and the OpenAI Agents SDK, unmodified, running an agent with a Python
function tool against ``model="general"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import default_graph_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    gateway = default_graph_gateway(tmp_path_factory.mktemp("resp-embedded"), toolsets=False)
    yield gateway
    gateway.stop()


def test_json_schema_text_format(gw):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    response = gw.client().responses.create(
        model="general", input="Name a large city and its population.", store=False, max_output_tokens=80,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}})
    assert response.status == "completed"
    answer = json.loads(response.output_text)
    assert set(answer) == {"city", "population"} and isinstance(answer["population"], int)
    assert response.text.format.type == "json_schema"


def test_function_call_and_its_output(gw):
    client = gw.client()
    tools = [{"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    first = client.responses.create(model="general", input="What is the weather in Paris?", tools=tools,
                                    tool_choice="required")
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and "city" in json.loads(call.arguments) and call.call_id
    second = client.responses.create(model="general", previous_response_id=first.id, tools=tools, max_output_tokens=60,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "sunny, 24 C"}])
    assert second.status in ("completed", "incomplete") and second.output_text.strip()


def test_stream_on_the_embedded_model(gw):
    with gw.client().responses.stream(model="general", input="Say hello.", max_output_tokens=16, store=False) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    final = events[-1].response  # response.incomplete when the 16 tokens ran out (get_final_response wants completed)
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert final.output_text and final.usage.output_tokens > 0


# The Agents SDK's package is named ``agents``, as is this repository's folder: the agent runs in a child
# process started outside the repository, so that ``import agents`` finds the SDK.
AGENT_SCRIPT = textwrap.dedent('''
    import json, os
    from openai import AsyncOpenAI
    from agents import Agent, ModelSettings, Runner, function_tool, set_default_openai_api, set_default_openai_client
    from agents import set_tracing_disabled

    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"It is sunny and 24 degrees in {city}."

    set_tracing_disabled(True)
    set_default_openai_api("responses")
    set_default_openai_client(AsyncOpenAI(base_url=os.environ["GATEWAY"] + "/v1", api_key="unused", max_retries=0))
    agent = Agent(name="weather", model="general", tools=[get_weather],
                  instructions="Answer questions about the weather with the get_weather tool.",
                  model_settings=ModelSettings(tool_choice="required", max_tokens=60))
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    print(json.dumps({"calls": calls, "final_output": result.final_output,
                      "items": [item.type for item in result.new_items],
                      "last_response_id": result.last_response_id}))
''')


def test_openai_agents_sdk_runs_a_tool_and_answers(gw, tmp_path: Path):
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env={**env, "GATEWAY": gw.url},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["calls"], result  # the function ran
    assert result["items"][:2] == ["tool_call_item", "tool_call_output_item"], result
    assert result["items"][-1] == "message_output_item", result
    assert isinstance(result["final_output"], str) and result["final_output"].strip(), result
    assert result["last_response_id"].startswith("resp_")


# ---------------------------------------------------------------- logprobs (llama.cpp's own, without logits_all)
def _check_entries(entries, text: str, top: int) -> None:
    assert entries and bytes(b for e in entries for b in e.bytes).decode("utf-8") == text  # a character may span tokens
    for e in entries:
        assert e.logprob <= 0
        assert len(e.top_logprobs) == top
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.logprob <= e.top_logprobs[0].logprob + 1e-6


def test_chat_logprobs_on_the_embedded_model(gw):
    client = gw.client()
    done = client.chat.completions.create(model="general", messages=[{"role": "user", "content": "Say hello."}],
                                          max_tokens=12, logprobs=True, top_logprobs=3, temperature=0)
    _check_entries(done.choices[0].logprobs.content, done.choices[0].message.content, 3)
    greedy = done.choices[0].logprobs.content
    assert all(e.token == e.top_logprobs[0].token for e in greedy)  # temperature 0 takes the best token
    chunks = list(client.chat.completions.create(model="general", messages=[{"role": "user", "content": "Say hello."}],
                                                 max_tokens=12, logprobs=True, top_logprobs=2, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    _check_entries(streamed, text, 2)
    plain = client.chat.completions.create(model="general", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_responses_logprobs_on_the_embedded_model(gw):
    client = gw.client()
    response = client.responses.create(model="general", input="Say hello.", max_output_tokens=12, store=False,
                                       include=["message.output_text.logprobs"], top_logprobs=2)
    part = response.output[0].content[0]
    _check_entries(part.logprobs, part.text, 2)
    stream = client.responses.create(model="general", input="Say hello.", max_output_tokens=12, store=False,
                                     include=["message.output_text.logprobs"], stream=True)
    events = list(stream)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert sum(len(e.logprobs) for e in deltas) == len(events[-1].response.output[0].content[0].logprobs) > 0
