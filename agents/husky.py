"""Husky (Kim et al., 2024, arXiv 2406.06469): a multi-step answer as a loop over one decision.

::

    history = []
    repeat up to max_steps:
        tool, subtask = action_generator(task, history)        # agents/action.py, under the router grammar
        if tool == finish: break
        output = expert[tool](task, history, subtask)          # a graph node, with its persona
        history += (tool, subtask, output)
    answer = answer_node(task, history)

Experts (each a node of the graph, reached through ``ask``, the callable the gateway passes in):

- ``code``: the node writes Python for the sub-task; the executor (``sandbox.py``) runs it and
  its output (or its error) is the step's output;
- ``math``: the node works the sub-task out;
- ``search``: the node writes a search query; the search backend (``search.py``) runs it and its
  trimmed results are the step's output;
- ``commonsense``: the node answers the sub-task briefly.

An expert or executor that fails records ``Error: ...`` as the step's output and the loop goes on;
an action generator that fails ends the loop, and the answer is written from what there is. After
``max_steps`` steps without ``[finish]`` the answer is written from what there is and the finish
reason is ``length``. Each step is reported to ``on_event`` as Husky's own history lines
(``Step: [code] ...`` then ``Output: ...``; ``Step: [finish]`` last) before the answer; between a
step's two lines, a ``code`` step reports the code it runs (kind ``code``) and a ``search`` step its
query (kind ``search``), for sinks that show them apart (the Responses API's tool-call items).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from octogate.agents.action import ActionError, ActionGenerator, Step, step_line
from octogate.agents.sandbox import build_executor
from octogate.agents.search import build_search
from octogate.core.agent_config import ActionGeneratorConfig, AgentConfig

log = logging.getLogger("octogate")


class Ask(Protocol):
    async def __call__(self, node: str, messages: list[dict[str, str]], max_tokens: int) -> str:
        """The node's answer text (its persona applied); raises on failure."""


class Decider(Protocol):
    async def decide(self, task: str, history: list[Step]) -> tuple[str, str]: ...


def build_action_generator(cfg: ActionGeneratorConfig) -> Decider:
    """The action generator ``cfg`` names: llama.cpp in process, or a client of an SGLang server."""
    if cfg.engine == "sglang":
        from octogate.agents.action_sglang import SGLangActionGenerator

        return SGLangActionGenerator(cfg)
    return ActionGenerator(cfg)


SpanFactory = Callable[[str, dict[str, Any]], AbstractContextManager[Any]]
EventSink = Callable[[str, str], Awaitable[None]]  # ("reasoning" | "code" | "search" | "content", text)


@dataclass
class AgentResult:
    answer: str
    steps: list[Step]
    finish_reason: str  # "stop" or "length"
    reasoning: str
    timings: dict[str, float] = field(default_factory=dict)


def _clip(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def history_text(steps: list[Step]) -> str:
    return "\n".join(f"{step_line(s.tool, s.subtask)}\nOutput: {s.output}" for s in steps)


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


def extract_code(text: str) -> str:
    """The Python in a model's answer: the first fenced block, else the whole text."""
    m = _FENCE.search(text)
    return (m.group(1) if m else text).strip()


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        line = line.strip().strip('"').strip()
        if line:
            return re.sub(r"^(search query|query)\s*:\s*", "", line, flags=re.I)[:200]
    return ""


class Husky:
    def __init__(self, name: str, cfg: AgentConfig, ask: Ask | None = None, *, action: Decider | None = None,
                 search: Any = None, executor: Any = None, span: SpanFactory | None = None,
                 count_step: Callable[[str], None] | None = None):
        self.name = name
        self.cfg = cfg
        self.ask = ask
        self.action = action if action is not None else build_action_generator(cfg.action)
        self.search = search if search is not None else build_search(cfg.search)
        self.executor = executor if executor is not None else build_executor(cfg.executor)
        self._span = span or (lambda name, attrs: nullcontext())
        self._count = count_step or (lambda tool: None)

    def instrument(self, ask: Ask, span: SpanFactory | None = None, count_step: Callable[[str], None] | None = None) -> None:
        """What the gateway hands in: how to ask a node, and where spans and step counts go."""
        self.ask = ask
        if span is not None:
            self._span = span
        if count_step is not None:
            self._count = count_step

    async def start(self) -> None:
        start = getattr(self.action, "start", None)
        if start is not None:
            await start()
        if self.cfg.action.engine == "sglang":
            # A server still starting is not fatal (its decisions fail until it is up, and each
            # request is then answered from what there is): said once here, and by check_ready.
            status = await self.check_ready()
            (log.info if status.startswith("ok") else log.warning)("agent %s: action generator %s", self.name, status)

    async def check_ready(self) -> str:
        """The action generator's state: ``ok (...)``, or ``unavailable (why)``."""
        check = getattr(self.action, "check_ready", None)
        if check is None:
            return "ok"
        try:
            return await check()
        except ActionError as exc:
            return f"unavailable ({exc})"

    async def aclose(self) -> None:
        for part in (self.action, self.search):
            close = getattr(part, "aclose", None)
            if close is not None:
                await close()

    # ------------------------------------------------------------------ experts
    def _messages(self, instruction: str, task: str, steps: list[Step], subtask: str) -> list[dict[str, str]]:
        so_far = history_text(steps) or "(no steps yet)"
        return [{"role": "user", "content": f"Task: {task}\nSolution so far:\n{so_far}\n\n{instruction}\n"
                                            f"Sub-task: {subtask}"}]

    async def _expert(self, tool: str, task: str, steps: list[Step], subtask: str,
                      emit: EventSink | None = None) -> str:
        e, n = self.cfg.experts, self.cfg.expert_max_tokens
        emit = emit or _ignore
        if tool == "code":
            with self._span("octogate.agent.expert", {"octogate.agent.tool": tool, "octogate.node": e.code}):
                text = await self.ask(e.code, self._messages(
                    "Write a short Python program that solves the sub-task and prints the result. "
                    "Answer with the code only, in a ```python block.", task, steps, subtask), n)
            code = extract_code(text)
            await emit("code", code)
            with self._span("octogate.agent.execute", {"octogate.agent.executor": getattr(self.executor, "isolation", "")}):
                result = await self.executor.run(code)
            return result.output
        if tool == "search":
            with self._span("octogate.agent.expert", {"octogate.agent.tool": tool, "octogate.node": e.search}):
                text = await self.ask(e.search, self._messages(
                    "Write one short web search query for the sub-task. Answer with the query only.",
                    task, steps, subtask), 32)
            query = _first_line(text) or subtask or task
            await emit("search", query)
            with self._span("octogate.agent.search", {"octogate.agent.search_query": query[:200]}):
                return await self.search.search(query)
        node = e.math if tool == "math" else e.commonsense
        instruction = ("Work the sub-task out step by step, briefly, and end with the result." if tool == "math"
                       else "Answer the sub-task briefly, in one or two sentences.")
        with self._span("octogate.agent.expert", {"octogate.agent.tool": tool, "octogate.node": node}):
            return _clip(await self.ask(node, self._messages(instruction, task, steps, subtask), n))

    async def _answer(self, task: str, steps: list[Step], max_tokens: int | None) -> str:
        node = self.cfg.experts.answer or self.cfg.experts.commonsense
        so_far = history_text(steps) or "(no steps)"
        messages = [{"role": "user", "content": f"Task: {task}\nSolution steps:\n{so_far}\n\n"
                                                "Using the solution steps, answer the task. Give the final answer "
                                                "briefly."}]
        with self._span("octogate.agent.answer", {"octogate.node": node}):
            return (await self.ask(node, messages, max_tokens or self.cfg.expert_max_tokens)).strip()

    # ------------------------------------------------------------------ the loop
    async def run(self, task: str, on_event: EventSink | None = None, max_tokens: int | None = None) -> AgentResult:
        emit = on_event or _ignore
        steps: list[Step] = []
        lines: list[str] = []
        finish_reason = "length"
        timings: dict[str, float] = {}

        async def say(text: str) -> None:
            lines.append(text)
            await emit("reasoning", text + "\n")

        for index in range(self.cfg.max_steps):
            t0 = time.monotonic()
            with self._span("octogate.agent.action", {"octogate.agent.step": index}) as span:
                try:
                    tool, subtask = await self.action.decide(task, steps)
                except ActionError as exc:
                    await say(f"Step: [finish]\nOutput: Error: {exc}")
                    finish_reason = "stop"
                    break
                if span is not None:
                    span.set_attribute("octogate.agent.tool", tool)
            timings[f"action_{index}"] = time.monotonic() - t0
            self._count(tool)
            if tool == "finish":
                await say("Step: [finish]")
                finish_reason = "stop"
                break
            if len(subtask.split()) < 2:  # the sub-task is generated, not trained: an empty or one-word one
                subtask = task              # gives the expert the task itself (it sees the history too)
            await say(step_line(tool, subtask))
            try:
                output = await self._expert(tool, task, steps, subtask, emit)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an expert that fails: its error is the step's output
                output = f"Error: the {tool} expert failed: {getattr(exc, 'message', None) or exc}"
            output = output.strip() or "(empty)"
            steps.append(Step(tool, subtask, output))
            await say(f"Output: {output}")
        try:
            answer = await self._answer(task, steps, max_tokens)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            answer = steps[-1].output if steps else f"(no answer: {getattr(exc, 'message', None) or exc})"
        await emit("content", answer)
        return AgentResult(answer, steps, finish_reason, "\n".join(lines), timings)


async def _ignore(kind: str, text: str) -> None:
    pass
