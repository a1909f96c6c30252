"""Husky's action generator as a functional-token model: the tools are the "nodes" of a RouterGrammar.

Each decision reads the task and the solution so far (``action_query``) and answers in the router
protocol, ``<nexa_K>('sub-task')<nexa_end>``, K one of the tools::

    <nexa_0> code   <nexa_1> math   <nexa_2> search   <nexa_3> commonsense   <nexa_4> finish

The tool is chosen the way the embedded router chooses a node (``TokenSelector``: the final hidden
state scored against the trained tool rows, one forward pass, so it is always a real tool); then,
unless it is ``finish``, the sub-task is generated greedily under the protocol's argument GBNF
(``RouterGrammar.argument_gbnf``), so every step parses. ``finish`` is not offered before the first
step. The prompt (system prompt and chat template) is the one the artifact was trained under,
read from its ``router.json``. ``action: {engine: sglang}`` asks an SGLang server serving the same
model instead (``action_sglang.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from octogate.core.agent_config import TOOLS, ActionGeneratorConfig
from octogate.core.llama_runtime import LlamaThread
from octogate.router_model.protocol import (
    RouterGrammar,
    RouterOutputError,
    chatml_split,
    functional_token,
    parse_router_output,
)

ACTION_SYSTEM_PROMPT = ("You are Husky's action generator. Read the task and the solution so far, then call the tool "
                        "for the next step (code, math, search, commonsense, or finish): write its functional token, "
                        "then the sub-task for it.")
ACTION_PREFIX, ACTION_SUFFIX = chatml_split(ACTION_SYSTEM_PROMPT)
ACTION_TOKENS = {i: tool for i, tool in enumerate(TOOLS)}  # 0 code ... 4 finish
DEFAULT_ACTION_DIR = Path(__file__).resolve().parent / "trained" / "husky-action"
_OUTPUT_CHARS = 100  # what the action generator sees of each step's output
_QUERY_CHARS = 600  # older steps are dropped first beyond this (about 150 tokens: under the 160-token cap)


@dataclass(frozen=True)
class Step:
    tool: str
    subtask: str
    output: str = ""


def step_line(tool: str, subtask: str) -> str:
    return f"Step: [{tool}] {subtask}".rstrip() if tool != "finish" else "Step: [finish]"


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def action_query(task: str, history: list[Step]) -> str:
    """What the action generator reads: the task, then ``Step:``/``Output:`` pairs (outputs shortened),
    the oldest steps dropped first when it grows past about 600 characters."""
    head = f"Task: {_short(task, 300)}"
    lines = [f"{step_line(s.tool, _short(s.subtask, 160))}\nOutput: {_short(s.output, _OUTPUT_CHARS)}" for s in history]
    while lines and len(head) + sum(len(x) + 1 for x in lines) > _QUERY_CHARS:
        lines.pop(0)
        head_note = "\n(earlier steps omitted)"
        if not head.endswith(head_note):
            head += head_note
    return "\n".join([head, *lines])


def action_grammar() -> RouterGrammar:
    return RouterGrammar(ACTION_TOKENS.items())


def subtask_gbnf(grammar: RouterGrammar) -> str:
    """The protocol's argument grammar (``RouterGrammar.argument_gbnf``) ended by a newline instead of
    ``')<nexa_end>``: what follows ``Step: [tool] `` is exactly one protocol argument."""
    rules = grammar.argument_gbnf().split("\n", 1)
    assert rules[0].startswith("root ::= arg "), rules[0]
    return 'root ::= arg "\\n"\n' + rules[1]


class ActionError(Exception):
    """No decision could be had (the model failed or wrote an answer that does not parse)."""


class ActionGenerator:
    """The trained action generator in llama.cpp, on a thread of its own."""

    def __init__(self, cfg: ActionGeneratorConfig):
        from octogate.router_model.token_selector import TokenSelector

        self.cfg = cfg
        self.path = Path(cfg.path) if cfg.path else DEFAULT_ACTION_DIR
        self.grammar = action_grammar()
        self.selector = TokenSelector(self.path, n_threads=cfg.threads, extra_context=cfg.max_subtask_tokens + 16)
        self._thread: LlamaThread | None = None

    async def start(self) -> None:
        self._thread = LlamaThread("octogate-husky-action")
        await self._thread.run(self._load)

    def _load(self) -> None:
        import llama_cpp

        from octogate.router_model.token_selector import SelectorError

        try:
            self.selector.load(dict(self.grammar.token_to_node))
        except SelectorError as exc:
            raise ActionError(str(exc)) from None
        self._argument_grammar = llama_cpp.LlamaGrammar.from_string(subtask_gbnf(self.grammar), verbose=False)

    async def aclose(self) -> None:
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None
        self.selector.close()

    def _decide(self, task: str, history: list[Step], deadline: float) -> tuple[str, str]:
        import numpy as np

        tokens = [t for t, tool in ACTION_TOKENS.items() if history or tool != "finish"]
        scores, ids = self.selector.scores(action_query(task, history), self.selector.rows(tokens),
                                           self.selector.bias(tokens))
        token = tokens[int(np.argmax(scores))]
        tool = ACTION_TOKENS[token]
        if tool == "finish":
            return tool, ""
        llm = self.selector.llm
        # The sub-task is written after the history's own cue, "Step: [tool] ", which the query shows
        # for every earlier step; it is decoded under the protocol's argument grammar, ended by a newline.
        cue = step_line(tool, "") + " "
        context = self.selector.prompt.prefix + ids + llm.tokenize(cue.encode(), False, False)
        pieces, finish = [], None
        stream = llm.create_completion(context, max_tokens=self.cfg.max_subtask_tokens, temperature=0.0, top_k=1,
                                       repeat_penalty=1.3, grammar=self._argument_grammar, stream=True)
        for chunk in stream:
            pieces.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0].get("finish_reason") or finish
            if finish is None and time.monotonic() >= deadline:
                stream.close()
                finish = "length"
                break
        written = "".join(pieces).rstrip("\n")
        try:  # the full answer in the router protocol: it parses by construction of the grammar
            answer = f"{functional_token(token)}('{written}')<nexa_end>"
            return tool, (parse_router_output(answer, self.grammar, "select+reformat").argument or "").strip()
        except RouterOutputError as exc:
            if finish == "length":  # cut off mid-argument: keep what was written (unescaped as far as it goes)
                return tool, partial_argument(written).strip()
            raise ActionError(f"the action generator wrote an unparseable step: {exc}") from None

    async def decide(self, task: str, history: list[Step]) -> tuple[str, str]:
        """The next step's tool and sub-task (empty for finish)."""
        if self._thread is None:
            raise ActionError("the action generator is used before start()")
        try:
            return await self._thread.run(self._decide, task, list(history), time.monotonic() + self.cfg.timeout)
        except ActionError:
            raise
        except Exception as exc:
            raise ActionError(f"the action generator failed: {type(exc).__name__}: {exc}") from None

    async def check_ready(self) -> str:
        """``ok (<artifact>)`` once loaded; an ``ActionError`` before."""
        if self._thread is None or self.selector.llm is None:
            raise ActionError("the action generator is not loaded")
        return f"ok ({self.path.name})"

    def scores(self, task: str, history: list[Step]) -> dict[str, float]:
        """Each tool's score (blocking; for evaluation)."""
        tokens = list(ACTION_TOKENS)
        scores, _ = self.selector.scores(action_query(task, history), self.selector.rows(tokens),
                                         self.selector.bias(tokens))
        return {ACTION_TOKENS[t]: float(s) for t, s in zip(tokens, scores)}


def partial_argument(text: str) -> str:
    """The longest prefix of an argument cut off before its closing quote, unescaped."""
    for end in range(len(text), 0, -1):
        try:
            from octogate.router_model.protocol import _read_argument

            return _read_argument(text[:end] + "'", 0)[0]
        except RouterOutputError:
            continue
    return ""
