"""model: "husky" end to end: the real openai SDK against a real `octogate serve` with the shipped
action generator, the embedded SmolLM2 as every expert, real sandboxed execution and real local
search; a graph's failing expert node, max_steps, the steps' spans (OTLP receiver) and the step counter."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.otlp_receiver import OTLPReceiver

STEP = re.compile(r"^Step: \[(code|math|search|commonsense|finish)\]")


@pytest.fixture(scope="module")
def receiver():
    with OTLPReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def gw(gateway_factory, receiver):
    smollm2 = {"model": "embedded/smollm2-135m-instruct"}
    graph = {
        "backends": {"smollm2": smollm2},
        "nodes": [
            {"name": "general", "persona": "You are a helpful assistant. Answer briefly.", "backend": "smollm2",
             "params": {"max_tokens": 64}},
            {"name": "coder", "persona": "You write short, correct Python programs.", "backend": "smollm2"},
            # nothing listens on port 9: every call to this node fails
            {"name": "broken", "backend": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1", "api_key": "k",
                                           "retries": 0, "connect_timeout": 1, "timeout": 2}},
        ],
        "agents": {
            "husky": {"experts": {"code": "coder", "math": "general", "search": "general", "commonsense": "general"},
                      "max_steps": 2, "expert_max_tokens": 64},
            "husky-broken": {"experts": {"code": "broken", "math": "broken", "search": "broken",
                                         "commonsense": "broken", "answer": "general"}, "max_steps": 1},
        },
    }
    return gateway_factory(graph, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                       "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "50"})


def steps_of(reasoning: str) -> list[tuple[str, str]]:
    """(tool, output) per step of Husky's history text; checks its format line by line."""
    lines = reasoning.rstrip("\n").split("\n")
    out, i = [], 0
    while i < len(lines):
        m = STEP.match(lines[i])
        assert m, f"line {i} is not a step: {lines[i]!r}\n{reasoning}"
        if m.group(1) == "finish":
            assert i == len(lines) - 1, reasoning
            out.append(("finish", ""))
            break
        assert lines[i + 1].startswith("Output: "), reasoning
        j = i + 2
        while j < len(lines) and not STEP.match(lines[j]):
            j += 1  # an output may span lines
        out.append((m.group(1), "\n".join(lines[i + 1:j])[len("Output: "):]))
        i = j
    return out


def test_listed_as_models(gw):
    ids = [m.id for m in gw.client().models.list().data]
    assert "husky" in ids and "husky-broken" in ids


def test_a_lookup_runs_a_real_local_search(gw):
    r = gw.client().chat.completions.create(
        model="husky", messages=[{"role": "user", "content": "What is the capital of Kenya?"}], max_tokens=48)
    choice = r.choices[0]
    steps = steps_of(choice.message.reasoning_content)
    assert steps[0][0] == "search", choice.message.reasoning_content
    assert "Kenya: Kenya is a country in Africa. Its capital is Nairobi" in steps[0][1]  # the shipped document
    assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_arithmetic_streams_a_real_sandboxed_code_step(gw):
    stream = gw.client().chat.completions.create(
        model="husky", stream=True, max_tokens=48,
        messages=[{"role": "user", "content": "A shop sells pencils for $3 each. Ava buys 14 pencils. How much does Ava pay?"}])
    reasoning, content, finish = "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        if content:
            assert not (getattr(delta, "reasoning_content", None)), "steps come before the answer"
    steps = steps_of(reasoning)
    assert steps[0][0] == "code", reasoning
    assert "expert failed" not in steps[0][1]  # the code ran in the sandbox: its output or its error
    assert content and finish in ("stop", "length")


def test_a_failing_expert_is_recorded_and_the_agent_still_answers(gw):
    r = gw.client().chat.completions.create(
        model="husky-broken", messages=[{"role": "user", "content": "How many square miles larger is Texas than Washington?"}])
    choice = r.choices[0]
    (tool, output), = steps_of(choice.message.reasoning_content)
    assert output.startswith(f"Error: the {tool} expert failed"), output
    # max_steps (1) reached without [finish]: the answer is written from what there is
    assert choice.finish_reason == "length" and choice.message.content


def test_steps_are_spans_of_the_request_and_counted(gw, receiver):
    receiver.clear()  # only this request's trace
    gw.client().chat.completions.create(
        model="husky-broken", messages=[{"role": "user", "content": "What is the capital of Kenya?"}])
    names = {"octogate.agent.action", "octogate.agent.expert", "octogate.agent.answer"}
    spans = receiver.wait_for(lambda got: any(
        names <= {s.name for s in got if s.trace_id == t} for t in {s.trace_id for s in got}), timeout=20)
    by_trace: dict[str, list] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    trace = next(v for v in by_trace.values() if names <= {s.name for s in v})
    server = next(s for s in trace if s.name == "POST /v1/chat/completions")
    action = next(s for s in trace if s.name == "octogate.agent.action")
    assert action.parent_span_id == server.span_id and action.attributes["octogate.agent.tool"] != "finish"
    expert = next(s for s in trace if s.name == "octogate.agent.expert")
    assert expert.parent_span_id == server.span_id and expert.attributes["octogate.node"] == "broken"
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert re.search(r'octogate_agent_steps_total\{agent="husky-broken",tool="\w+"\} [1-9]', metrics)
