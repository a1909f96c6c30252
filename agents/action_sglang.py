"""Husky's action generator served by SGLang (``action: {engine: sglang, base_url: ...}``).

The same functional-token model as the embedded engine (``action.py``), on a GPU server, asked the
way a router is (``router_model/sglang_engine.py``): one ``POST /generate`` per decision, the prompt
rendered here (the action generator's system prompt, then ``action_query(task, history)`` as the
user turn, in ``prompt_template``), greedy decoding constrained by the protocol's regex over the
tools, in "select+reformat" form, ``<nexa_K>('sub-task')<nexa_end>``::

    {"text": "<|im_start|>system\\nYou are Husky's action generator. ...<|im_end|>\\n<|im_start|>user\\n"
             "Task: ...\\nStep: [search] ...\\nOutput: ...<|im_end|>\\n<|im_start|>assistant\\n",
     "sampling_params": {"max_new_tokens": N, "temperature": 0, "regex": "(<nexa_0>|...|<nexa_4>)\\('...'\\)<nexa_end>",
                         "skip_special_tokens": false, "spaces_between_special_tokens": false}}

Before the first step the regex is built over ``<nexa_0>``..``<nexa_3>`` only: ``finish`` is not
offered, as in the embedded engine. The answer is read with ``parse_router_output``; a ``finish``
step's argument is dropped. ``max_new_tokens`` is the longest frame plus ``max_subtask_tokens``
plus one; an answer cut off there keeps its tool and the sub-task written so far, as the embedded
engine does. Every failure (the server down, slow, an HTTP error, an abort, an answer that is not a
step) is an ``ActionError``, which the Husky loop records as its last step before answering.

Differences from the embedded engine: the tool is decoded greedily under the regex rather than
scored over the tool rows alone (the same choice when the served model is ``octogate agent
export``'s and a tool token out-scores the ordinary ``<`` the regex also admits; docs/husky.md),
the query is sent whole rather than cut to the artifact's first 160 tokens, and the sub-task is
written inside the protocol's quotes instead of after a ``Step: [tool] `` cue.
"""

from __future__ import annotations

import re

from octogate.agents.action import (
    ACTION_SYSTEM_PROMPT,
    ACTION_TOKENS,
    ActionError,
    Step,
    action_grammar,
    action_query,
    partial_argument,
)
from octogate.core.agent_config import ActionGeneratorConfig
from octogate.core.config_base import resolve_secret
from octogate.router_model.engine import RouterEngineError
from octogate.router_model.protocol import RouterGrammar, RouterOutputError, parse_router_output
from octogate.router_model.sglang_engine import PROMPT_TEMPLATES, SGLangClient, constrained_params

_CUT_STEP = re.compile(r"(<nexa_[0-9]+>)\('")


def first_step_grammar() -> RouterGrammar:
    """The tools without ``finish``: what the first decision may choose."""
    return RouterGrammar((t, tool) for t, tool in ACTION_TOKENS.items() if tool != "finish")


class SGLangActionGenerator:
    """Husky's decisions from an SGLang server serving the action generator."""

    def __init__(self, cfg: ActionGeneratorConfig, *, connect_timeout: float = 2.0, max_connections: int = 16):
        if cfg.engine != "sglang" or not cfg.base_url:
            raise ValueError("SGLangActionGenerator needs an action config with engine 'sglang' and a base_url")
        self.cfg = cfg
        base_url = resolve_secret(cfg.base_url) or cfg.base_url
        self.client = SGLangClient(base_url, role="action generator", timeout=cfg.timeout,
                                   connect_timeout=min(connect_timeout, cfg.timeout), max_connections=max_connections,
                                   api_key=resolve_secret(cfg.api_key))
        self.template = PROMPT_TEMPLATES[cfg.prompt_template]
        self.grammar = action_grammar()
        self.first_grammar = first_step_grammar()
        mode = "select+reformat"
        self.max_new_tokens = self.grammar.frame_length(mode) + cfg.max_subtask_tokens + 1
        self.params = constrained_params(self.grammar.regex(mode), self.max_new_tokens)
        self.first_params = constrained_params(self.first_grammar.regex(mode), self.max_new_tokens)

    @property
    def base_url(self) -> str:
        return self.client.base_url

    async def start(self) -> None:
        await self.client.start()

    async def aclose(self) -> None:
        await self.client.aclose()

    def prompt(self, task: str, history: list[Step]) -> str:
        return self.template([{"role": "system", "content": ACTION_SYSTEM_PROMPT},
                              {"role": "user", "content": action_query(task, history)}])

    async def decide(self, task: str, history: list[Step]) -> tuple[str, str]:
        """The next step's tool and sub-task (empty for finish)."""
        grammar, params = (self.grammar, self.params) if history else (self.first_grammar, self.first_params)
        try:
            text, finish = await self.client.generate(self.prompt(task, history), params)
        except RouterEngineError as exc:
            raise ActionError(exc.message) from None
        except RuntimeError as exc:  # used before start()
            raise ActionError(f"the action generator is used before start(): {exc}") from None
        try:
            decision = parse_router_output(text, grammar, "select+reformat")
        except RouterOutputError as exc:
            if finish.get("type") == "length":
                cut = _cut_step(text, grammar)
                if cut is not None:
                    return cut
            raise ActionError(f"{self.client.who} did not answer a step: {exc}") from None
        if decision.node == "finish":
            return "finish", ""
        return decision.node, (decision.argument or "").strip()

    async def check_ready(self) -> str:
        """``ok (<model path>)`` when the server is up; an ``ActionError`` saying why not otherwise."""
        try:
            return await self.client.check_ready()
        except RouterEngineError as exc:
            raise ActionError(exc.message) from None


def _cut_step(text: str, grammar: RouterGrammar) -> tuple[str, str] | None:
    """The tool and the sub-task so far of an answer stopped by ``max_new_tokens`` mid-argument."""
    m = _CUT_STEP.match(text)
    index = grammar.literal_to_token.get(m.group(1)) if m else None
    if index is None:
        return None
    tool = grammar.token_to_node[index]
    return (tool, "") if tool == "finish" else (tool, partial_argument(text[m.end():]).strip())
