"""agents/husky.py: the loop with real sandboxed execution and real local search; the action
generator and the expert nodes scripted, so each path (hostile code, a failing expert, max_steps)
is exercised on purpose. tests/test_agent_serving.py runs the real models end to end."""

from __future__ import annotations

import asyncio

import pytest

from octogate.agents.action import Step, action_query
from octogate.agents.husky import Husky, extract_code
from octogate.core.agent_config import AgentConfig, ExecutorConfig


class Script:
    """An action generator that plays a fixed list of (tool, subtask)."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.seen: list[list[Step]] = []

    async def decide(self, task, history):
        self.seen.append(list(history))
        return self.steps[len(history)] if len(history) < len(self.steps) else ("finish", "")


def experts(code: dict[str, str] | None = None, fail: set[str] = frozenset()):
    calls = []

    async def ask(node, messages, max_tokens):
        text = messages[-1]["content"]
        calls.append((node, text))
        if node in fail:
            raise RuntimeError(f"node {node} is down")
        if "Python program" in text:
            sub = text.rsplit("Sub-task: ", 1)[1]
            return f"```python\n{(code or {}).get(sub, 'print(268596 - 71298)')}\n```"
        if "search query" in text:
            return text.rsplit("Sub-task: ", 1)[1].replace("Find the ", "")
        if "answer the task" in text:
            return "The answer is " + text.split("Output: ")[-1].split("\n")[0]
        return "A brief answer."

    return ask, calls


CFG = AgentConfig(executor=ExecutorConfig(timeout=4, cpu_seconds=2))


def run(husky, task="How many square miles larger is Texas than Washington?"):
    events = []

    async def sink(kind, text):
        events.append((kind, text))

    return asyncio.run(husky.run(task, sink)), events


def test_the_papers_example_two_searches_and_code():
    ask, calls = experts()
    script = Script([("search", "Find the area of Texas"), ("search", "Find the area of Washington"),
                     ("code", "Calculate the difference")])
    result, events = run(Husky("husky", CFG, ask, action=script))
    assert [s.tool for s in result.steps] == ["search", "search", "code"]
    assert "268,596 square miles" in result.steps[0].output and "71,298" in result.steps[1].output
    assert result.steps[2].output == "197298"
    assert result.finish_reason == "stop" and result.answer == "The answer is 197298"
    reasoning = "".join(t for k, t in events if k == "reasoning")
    assert reasoning.startswith("Step: [search] Find the area of Texas\nOutput: Texas: ")
    assert reasoning.endswith("Step: [code] Calculate the difference\nOutput: 197298\nStep: [finish]\n")
    assert events[-1] == ("content", "The answer is 197298")
    # the action generator saw each step's output
    assert script.seen[3][2] == Step("code", "Calculate the difference", "197298")


@pytest.mark.parametrize("code,expect", [
    ("while True:\n    pass", "Error: the code "),  # CPU limit, or the wall clock on a busy machine
    ("import os\nwhile True:\n    os.fork()", "Error:"),
    ("a = []\nwhile True:\n    a.append(bytearray(10**7))", "MemoryError"),
    ("open('/usr/x', 'w').write('x')", "Read-only file system"),
    # the host's loopback (SSH's port 22 or anything): never an address off this machine
    ("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)\nprint('connected')", "Error"),
])
def test_hostile_code_is_stopped_and_the_agent_still_answers(code, expect):
    ask, _ = experts({"Do it": code, "Then this": "print(6 * 7)"})
    result, _ = run(Husky("husky", CFG, ask, action=Script([("code", "Do it"), ("code", "Then this")])))
    assert expect in result.steps[0].output
    assert result.steps[1].output == "42" and result.answer == "The answer is 42"


def test_a_failing_expert_records_its_error_and_the_agent_goes_on():
    ask, _ = experts(fail={"broken"})
    cfg = AgentConfig(experts={"commonsense": "broken", "answer": "general"})
    result, _ = run(Husky("husky", cfg, ask, action=Script([("commonsense", "Think"), ("search", "Find Texas")])))
    assert result.steps[0].output == "Error: the commonsense expert failed: node broken is down"
    assert "Texas" in result.steps[1].output and result.finish_reason == "stop"


def test_a_failing_answer_node_falls_back_to_the_last_output():
    ask, _ = experts(fail={"general"})
    cfg = AgentConfig(experts={"code": "coder"})
    ask2, _ = experts()

    async def ask_mixed(node, messages, max_tokens):
        return await (ask2 if node == "coder" else ask)(node, messages, max_tokens)

    result, _ = run(Husky("husky", cfg, ask_mixed, action=Script([("code", "x")])))
    assert result.answer == "197298"


def test_max_steps_ends_with_length_and_an_answer():
    ask, _ = experts()
    forever = Script([("commonsense", f"Think more {i}") for i in range(100)])
    result, events = run(Husky("husky", AgentConfig(max_steps=3), ask, action=forever))
    assert len(result.steps) == 3 and result.finish_reason == "length"
    assert result.answer and "Step: [finish]" not in result.reasoning


def test_counts_and_spans_per_step():
    ask, _ = experts()
    counted, spans = [], []

    from contextlib import contextmanager

    @contextmanager
    def span(name, attrs):
        spans.append(name)
        yield None

    run(Husky("husky", CFG, ask, action=Script([("search", "Find Texas"), ("code", "c")]), span=span,
              count_step=counted.append))
    assert counted == ["search", "code", "finish"]
    assert spans == ["octogate.agent.action", "octogate.agent.expert", "octogate.agent.search",
                     "octogate.agent.action", "octogate.agent.expert", "octogate.agent.execute",
                     "octogate.agent.action", "octogate.agent.answer"]


def test_action_query_keeps_the_task_and_the_latest_steps():
    steps = [Step("search", f"Find fact {i}", "x" * 300) for i in range(12)]
    q = action_query("What is it?", steps)
    assert q.startswith("Task: What is it?\n(earlier steps omitted)")
    assert "Find fact 11" in q and "Find fact 0\n" not in q and len(q) <= 600


def test_extract_code():
    assert extract_code("Here:\n```python\nprint(1)\n```\nDone") == "print(1)"
    assert extract_code("print(2)") == "print(2)"
