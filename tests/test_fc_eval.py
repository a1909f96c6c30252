"""``octogate fc eval`` end to end: BFCL cases through a live gateway on the embedded model, both modes."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest

from tests.conftest import REPO, default_graph_gateway

DATA = REPO / "data" / "function_calling"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = default_graph_gateway(tmp_path_factory.mktemp("fc"))
    yield gw
    gw.stop()


def test_fc_eval_prints_both_modes_on_bfcl_cases(gateway):
    result = subprocess.run(
        [sys.executable, "-m", "octogate.gateway.cli", "fc", "eval", "--data", str(DATA / "bfcl_multiple.jsonl"),
         "--limit", "3", "--base-url", f"{gateway.url}/v1", "--max-tokens", "96"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "bfcl_multiple.jsonl: 3 cases" in out
    for label in ("function selection", "arguments (BFCL rules)", "calls with valid arguments", "latency p50"):
        assert label in out
    valid_row = next(line for line in out.splitlines() if "calls with valid arguments" in line)
    assert "100.0% of" in valid_row.split("│")[2], out  # constrained: every returned call validates
    failed_row = next(line for line in out.splitlines() if "failed requests" in line)
    assert failed_row.split("│")[2].strip() == "0", out


def test_fc_eval_compares_a_registered_toolset_with_the_general_path(gateway):
    result = subprocess.run(
        [sys.executable, "-m", "octogate.gateway.cli", "fc", "eval", "--data", str(REPO / "config" / "toolsets" / "assistant.test.jsonl"),
         "--limit", "3", "--base-url", f"{gateway.url}/v1", "--max-tokens", "96", "--mode", "toolset",
         "--mode", "constrained"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert rows["failed requests"] == ["0", "0"], result.stdout
    toolset, general = (int(c) for c in rows["prompt tokens (mean)"])
    assert toolset * 3 < general, result.stdout  # no function descriptions in the toolset's context
    assert rows["calls with valid arguments"][0].startswith("100.0% of"), result.stdout


def test_the_unconstrained_extension_is_checked(gateway):
    client = gateway.client(timeout=120)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "call f"}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="general", messages=messages, tools=tools,
                                       extra_body={"octogate": {"tool_calls": "sometimes"}})
    assert bad.value.body["param"] == "octogate.tool_calls"
    with pytest.raises(openai.BadRequestError):  # the baseline needs tools
        client.chat.completions.create(model="general", messages=messages,
                                       extra_body={"octogate": {"tool_calls": "unconstrained"}})
    answer = client.chat.completions.create(model="general", messages=messages, tools=tools, max_tokens=48,
                                            temperature=0, extra_body={"octogate": {"tool_calls": "unconstrained"}})
    message = answer.choices[0].message
    # free generation: either a call read back from the text, or the text itself
    if message.tool_calls:
        assert answer.choices[0].finish_reason == "tool_calls" and message.tool_calls[0].function.name == "f"
    else:
        assert message.content is not None and answer.choices[0].finish_reason in ("stop", "length")
    json.dumps(answer.model_dump())
