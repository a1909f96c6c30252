"""Registered toolsets (Octopus v2): config, matching, training, and the one-token path through the gateway."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import openai
import pytest
import yaml

from octogate.core.graph import ConfigError, load_graph, parse_graph
from octogate.core.tool_plan import plan_tools
from octogate.router_model.artifact import load_router
from octogate.router_model.toolsets import (
    NO_CALL,
    TOOLSET_PREFIX,
    Toolset,
    ToolsetError,
    ToolsetRegistry,
)
from octogate.router_model.training.data import read_toolset_examples
from tests.conftest import OCTOGATE, REPO, default_graph_gateway

ASSISTANT = json.loads((REPO / "config" / "toolsets" / "assistant.json").read_text())
BY_NAME = {t["function"]["name"]: t for t in ASSISTANT}


def _toolset(tools=ASSISTANT) -> Toolset:
    return Toolset.from_config("assistant", tools, None)


# ---------------------------------------------------------------------------------------------- config
def test_a_tools_file_is_read_relative_to_the_graph_file(tmp_path):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "mine.json").write_text(json.dumps(ASSISTANT[:2]))
    graph = {"toolsets": {"mine": {"tools": "sets/mine.json", "path": "trained/mine"}},
             "nodes": [{"name": "general", "backend": {"model": "embedded/smollm2"}}]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(graph))
    loaded = load_graph(tmp_path / "g.yaml").toolsets["mine"]
    assert [t["function"]["name"] for t in loaded.tools] == ["get_weather", "send_email"]
    assert loaded.path == str(tmp_path / "trained" / "mine")

    graph["toolsets"]["mine"]["tools"] = "sets/missing.json"
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(graph))
    with pytest.raises(ConfigError, match=r"toolsets\.mine\.tools: cannot read .*missing\.json"):
        load_graph(tmp_path / "g.yaml")

    graph["toolsets"] = {"bad name!": {"tools": ASSISTANT[:1]}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(graph))
    with pytest.raises(ConfigError, match="toolset names match"):
        load_graph(tmp_path / "g.yaml")


def test_a_bad_toolset_schema_names_its_path():
    bad = json.loads(json.dumps(ASSISTANT[:2]))
    bad[1]["function"]["parameters"]["properties"]["to"]["type"] = "strnig"
    with pytest.raises(ToolsetError, match=r"toolsets\.assistant\.tools\[1\]\.function\.parameters"):
        _toolset(bad)


def test_toolsets_are_loaded_only_where_an_embedded_node_can_use_them():
    def registry(backend: dict, tools=ASSISTANT) -> ToolsetRegistry:
        return ToolsetRegistry.from_graph(parse_graph({"toolsets": {"assistant": {"tools": tools}},
                                                       "nodes": [{"name": "general", "backend": backend}]}))

    assert [s.toolset.name for s in registry({"model": "embedded/smollm2"}).selectors] == ["assistant"]
    remote = {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}
    assert not registry(remote)  # only the embedded model picks functions with a toolset: nothing to load
    bad = json.loads(json.dumps(ASSISTANT[:2]))
    bad[1]["function"]["parameters"]["properties"]["to"]["type"] = "strnig"
    with pytest.raises(ToolsetError, match=r"toolsets\.assistant\.tools\[1\]"):
        registry(remote, bad)  # still checked, as check-config does


def test_requests_match_by_names_and_parameters():
    toolset = _toolset()
    assert toolset.labels()[len(ASSISTANT)] == NO_CALL and len(toolset.labels()) == len(ASSISTANT) + 1
    subset = plan_tools({"tools": [BY_NAME["set_timer"], BY_NAME["create_reminder"]]})
    assert toolset.covers(subset)
    described = json.loads(json.dumps(BY_NAME["set_timer"]))
    described["function"]["description"] = "Counts down."  # descriptions may differ
    assert toolset.covers(plan_tools({"tools": [described]}))
    changed = json.loads(json.dumps(BY_NAME["set_timer"]))
    changed["function"]["parameters"]["required"] = ["minutes", "label"]
    assert not toolset.covers(plan_tools({"tools": [changed]}))
    other = {"type": "function", "function": {"name": "book_flight", "parameters": {"type": "object"}}}
    assert not toolset.covers(plan_tools({"tools": [BY_NAME["set_timer"], other]}))


def test_examples_name_functions_of_the_toolset(tmp_path):
    toolset = _toolset()
    data = tmp_path / "ex.jsonl"
    data.write_text('{"query": "hi", "function": null}\n{"query": "rain?", "function": "get_weather"}\n')
    assert [e.node for e in read_toolset_examples(toolset, data)] == [NO_CALL, "get_weather"]
    data.write_text('{"query": "hi", "function": null}\n{"query": "fly", "function": "book_flight"}\n')
    with pytest.raises(ValueError, match=r"ex\.jsonl:2: .*book_flight"):
        read_toolset_examples(toolset, data)
    # fc eval's BFCL cases serve as examples too
    cases = read_toolset_examples(toolset, REPO / "config" / "toolsets" / "assistant.test.jsonl")
    assert {e.node for e in cases} == {*BY_NAME, NO_CALL}


# ---------------------------------------------------------------------------------------------- training
def test_router_train_makes_tokens_for_a_toolset(tmp_path):
    tools = [BY_NAME["set_timer"], BY_NAME["play_music"]]
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    graph = {"toolsets": {"kitchen": {"tools": "tools.json"}},
             "nodes": [{"name": "general", "backend": {"model": "embedded/smollm2"}}]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(graph))
    lines = [{"query": "timer for 5 minutes", "function": "set_timer"}, {"query": "play some jazz", "function": "play_music"},
             {"query": "thanks!", "function": None}, {"query": "10 min countdown please", "function": "set_timer"}]
    (tmp_path / "ex.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    base = [*OCTOGATE, "router", "train", "--config", str(tmp_path / "g.yaml"), "--data", str(tmp_path / "ex.jsonl"),
            "--out", str(tmp_path / "out"), "--epochs", "1", "--lora-layers", "1", "--batch-size", "2"]
    done = subprocess.run([*base, "--toolset", "kitchen"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    artifact = load_router(tmp_path / "out")
    assert artifact.tokens == {0: "set_timer", 1: "play_music", 2: NO_CALL}
    assert artifact.manifest["prompt"]["prefix"] == TOOLSET_PREFIX
    assert "set_timer" not in TOOLSET_PREFIX  # the short prompt names no function

    wrong = subprocess.run([*base, "--toolset", "garage"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert wrong.returncode == 1 and "registers no toolset 'garage'" in wrong.stderr


# ---------------------------------------------------------------------------------------------- gateway
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    gw = default_graph_gateway(tmp_path_factory.mktemp("toolsets"))
    yield gw.client(timeout=180)
    gw.stop()


SMALL = dict(temperature=0, max_tokens=96)


def _ask(client, text, tools=ASSISTANT, mode=None, **kw):
    extra = {"octogate": {"tool_calls": mode}} if mode else None
    return client.chat.completions.create(model="general", messages=[{"role": "user", "content": text}], tools=tools,
                                          extra_body=extra, **{**SMALL, **kw})


def _valid_args(call):
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, BY_NAME[call.function.name]["function"]["parameters"])
    return args


def test_a_matching_request_picks_its_function_without_descriptions_in_context(client):
    answer = _ask(client, "What's the weather like in Lisbon right now?")
    (call,) = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert "lisbon" in _valid_args(call)["location"].lower()
    general = _ask(client, "What's the weather like in Lisbon right now?", mode="constrained")
    # one token over a short prompt, then one function's schema, against all ten functions in the prompt
    assert answer.usage.prompt_tokens * 3 < general.usage.prompt_tokens, (answer.usage, general.usage)


def test_a_subset_of_a_toolset_chooses_among_the_offered_functions(client):
    tools = [BY_NAME["set_timer"], BY_NAME["create_reminder"]]
    answer = _ask(client, "remind me to call mum tomorrow at 18:00", tools=tools)
    (call,) = answer.choices[0].message.tool_calls
    assert call.function.name == "create_reminder"
    _valid_args(call)
    required = _ask(client, "thanks, that's all!", tools=[BY_NAME["play_music"]], tool_choice="required")
    assert required.choices[0].message.tool_calls[0].function.name == "play_music"  # required never answers


def test_a_message_that_needs_no_function_gets_a_text_answer(client):
    answer = _ask(client, "thank you so much, have a nice evening!")
    assert not answer.choices[0].message.tool_calls and answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_streamed_toolset_calls_accumulate_like_openai(client):
    stream = _ask(client, "convert 250 US dollars to euros", stream=True, stream_options={"include_usage": True})
    name, args, finish, usage = None, "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name = delta.function.name or name
                args += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (name, finish) == ("convert_currency", "tool_calls")
    value = json.loads(args)
    jsonschema.validate(value, BY_NAME[name]["function"]["parameters"])
    assert value["amount"] == 250 and value["from_currency"] == "USD" and value["to_currency"] == "EUR"
    assert usage is not None and usage.prompt_tokens > 0


def test_the_sdk_tool_loop_runs_through_a_toolset(client):
    messages = [{"role": "user", "content": "start a timer for 12 minutes for the pasta"}]
    first = client.chat.completions.create(model="general", messages=messages, tools=ASSISTANT, **SMALL)
    (call,) = first.choices[0].message.tool_calls
    assert call.function.name == "set_timer" and _valid_args(call)["minutes"] == 12
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True, "ends": "18:42"})}]
    final = client.chat.completions.create(model="general", messages=messages, tools=ASSISTANT, **SMALL)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_the_toolset_extension_needs_matching_tools(client):
    other = {"type": "function", "function": {"name": "book_flight", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as bad:
        _ask(client, "fly me to Rome", tools=[other], mode="toolset")
    assert bad.value.body["param"] == "octogate.tool_calls"
    with pytest.raises(openai.BadRequestError) as bad:
        _ask(client, "hi", mode="sometimes")
    assert bad.value.body["param"] == "octogate.tool_calls"
    # a named choice needs no selection: it takes the general path, and still answers
    named = _ask(client, "Oslo please", tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"
