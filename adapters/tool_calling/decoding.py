"""OpenAI tool calling for the embedded model, by grammar-constrained decoding.

The request's ``tools`` are checked (names, duplicates, ``tool_choice``, each ``parameters``
schema through ``adapters.json_schema``) and listed to the model in a system message, one compact
JSON line per function. A call is the model writing ``{"name": ..., "arguments": {...}}`` (or,
when ``parallel_tool_calls`` is not false, a JSON array of such objects) under a GBNF grammar in
which each function name is tied to the grammar of its own argument schema, so the name is always
offered and the arguments always have that function's shape. Arguments are then checked against
the full schema with ``jsonschema`` (the grammar cannot express ``minimum`` and friends); a failure
is retried with sampling, then reported, never returned.

``tool_choice``: ``required`` and a named function go straight to the call grammar (a named
function's grammar offers that function only, once). ``auto`` first makes a one-step choice
between calling and answering: it scores how much the conversation raises the model's
probability of starting a call (the tokens of ``{"name": "``) over a content-free conversation
with the same system prompt (a calibrated log-probability ratio), adds ``LEXICAL_WEIGHT`` per word
the last user message shares with a function's name, description or parameter names, and calls
when the sum is above ``CALL_THRESHOLD``. Right after a tool result it answers (a 135M model is not able to chain calls
reliably on its own; ``required`` or a named choice asks for another call).

Earlier turns are rendered in the same format: an assistant message's ``tool_calls`` become the
call JSON the model would have written, and ``role: "tool"`` results are ChatML ``tool`` turns.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from octogate.adapters.tool_calling.grammar import call_grammar
from octogate.adapters.tool_calling.parsing import InvalidCall, parse_calls
from octogate.core.errors import UpstreamError, max_tokens_reached
from octogate.core.tool_plan import Function, ToolPlan

CALL_PREFIX = '{"name": "'
#: auto calls when log P(CALL_PREFIX | conversation) - log P(CALL_PREFIX | content-free conversation), plus
#: LEXICAL_WEIGHT per word the last user message shares with a function, exceeds this (fitted by hand on a
#: few dozen prompts: the 135M model's own signal is weak, the shared words make up for it)
CALL_THRESHOLD = -3.3
LEXICAL_WEIGHT = 3.0
_STOPWORDS = frozenset("the and for with from this that what which who how are was were you your get set can "
                       "will not all any into about there their them then than have has had its it's our out".split())
ATTEMPTS = 3


class TokenCounter:
    """A logits processor that only counts: llama.cpp calls it once per sampled token."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.count += 1
        return scores


def run_completion(llm: Any, tokens: list[int], params: dict[str, Any],
                   cancel: threading.Event) -> tuple[str, str, int]:
    """One completion on the model's thread: (text, finish_reason, tokens generated)."""
    from llama_cpp import LogitsProcessorList

    counter = TokenCounter()
    text, finish = [], "stop"
    for out in llm.create_completion(tokens, stream=True, logits_processor=LogitsProcessorList([counter]), **params):
        if cancel.is_set():
            raise UpstreamError(499, "client went away", code="cancelled")
        choice = out["choices"][0]
        text.append(choice["text"])
        finish = choice.get("finish_reason") or finish
    return "".join(text), finish, counter.count


class _Forced:
    """A logits processor that forces given tokens and adds up their log-probabilities."""

    def __init__(self, forced: list[int]):
        self.forced = forced
        self.step = 0
        self.logprob = 0.0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        token = self.forced[min(self.step, len(self.forced) - 1)]
        top = float(scores.max())
        self.logprob += float(scores[token]) - top - float(np.log(np.exp(scores - top).sum()))
        self.step += 1
        forced = np.full_like(scores, -np.inf)
        forced[token] = 0.0
        return forced


def prefix_logprob(llm: Any, tokens: list[int], text: str = CALL_PREFIX) -> float:
    """log P(text | tokens) under the model (``text`` as the tokenizer splits it)."""
    from llama_cpp import LogitsProcessorList

    forced = llm.tokenize(text.encode(), add_bos=False, special=False)
    scorer = _Forced(forced)
    llm.create_completion(tokens, max_tokens=len(forced), temperature=0.0,
                          logits_processor=LogitsProcessorList([scorer]))
    return scorer.logprob


_baselines: dict[tuple[int, tuple[int, ...]], float] = {}


def call_preference(llm: Any, tokens: list[int], baseline: list[int]) -> float:
    """How much the conversation raises the odds of a call over a content-free one (log ratio)."""
    key = (id(llm), tuple(baseline))
    if key not in _baselines:
        if len(_baselines) > 256:
            _baselines.clear()
        _baselines[key] = prefix_logprob(llm, baseline)
    return prefix_logprob(llm, tokens) - _baselines[key]


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower())
            if len(w) > 2 and w not in _STOPWORDS}


def _overlap(f: Function, said: set[str]) -> int:
    own = _words(" ".join([f.name.replace("_", " ").replace("-", " "), f.description, *(f.schema.get("properties") or {})]))
    return len(said & own)


def shared_words(plan: ToolPlan, text: str) -> int:
    """The most words the user's message shares with one function's name, description and parameter names."""
    said = _words(text)
    return max((_overlap(f, said) for f in plan.functions), default=0)


def choose_function(llm: Any, tokens: list[int], plan: ToolPlan, user_text: str) -> str:
    """The function the (first) call is of, among several offered: the one whose whole call opening
    (``{"name": "NAME"``) the model finds most likely after the prompt, plus ``LEXICAL_WEIGHT`` per
    word the user's message shares with that function. Scoring every name in full, rather than
    letting greedy decoding commit at the first token where names differ, and adding the
    user's own words, is what makes a 135M model pick well among similar functions."""
    said = _words(user_text)
    scores = {f.name: prefix_logprob(llm, tokens, f'{CALL_PREFIX}{f.name}"') + LEXICAL_WEIGHT * _overlap(f, said)
              for f in plan.functions}
    return max(scores, key=scores.__getitem__)


def generate_calls(llm: Any, tokens: list[int], params: dict[str, Any], plan: ToolPlan,
                   cancel: threading.Event, user_text: str = "") -> tuple[list[tuple[str, Any]], int]:
    """Constrained generation of the calls, validated; retried with sampling when validation fails.
    With several functions offered, ``choose_function`` first picks the one the first call is of."""
    first = choose_function(llm, tokens, plan, user_text) if len(plan.functions) > 1 else None
    grammar = call_grammar(plan, first)
    generated = 0
    problem, truncated = "", False
    for attempt in range(ATTEMPTS):
        p = {**params, "grammar": grammar}
        if attempt:
            p["temperature"] = max(0.7, p.get("temperature") or 0.0)
            p["seed"] = (p.get("seed") or 0) + attempt
        text, finish, count = run_completion(llm, tokens, p, cancel)
        generated += count
        try:
            return parse_calls(text, plan), generated
        except InvalidCall as exc:
            problem, truncated = str(exc), finish == "length"
    if truncated:
        raise max_tokens_reached(params.get("max_tokens"), "tool call")
    raise UpstreamError(500, f"The embedded model did not produce a valid tool call: {problem}",
                        code="invalid_tool_call")
