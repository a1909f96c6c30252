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

import json
import re
import secrets
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from adapters.base import UpstreamError
from adapters.json_schema import GrammarBuilder, literal, normalise, validation_error

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CALL_PREFIX = '{"name": "'
#: auto calls when log P(CALL_PREFIX | conversation) - log P(CALL_PREFIX | content-free conversation), plus
#: LEXICAL_WEIGHT per word the last user message shares with a function, exceeds this (fitted by hand on a
#: few dozen prompts: the 135M model's own signal is weak, the shared words make up for it)
CALL_THRESHOLD = -3.3
LEXICAL_WEIGHT = 3.0
_STOPWORDS = frozenset("the and for with from this that what which who how are was were you your get set can "
                       "will not all any into about there their them then than have has had its it's our out".split())
MAX_PARALLEL = 8
ATTEMPTS = 3


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    schema: dict[str, Any]


@dataclass
class ToolPlan:
    functions: list[Function]
    mode: str  # "auto" | "required" | "named"
    parallel: bool

    def by_name(self) -> dict[str, Function]:
        return {f.name: f for f in self.functions}


def _bad(param: str, message: str, code: str = "invalid_value") -> UpstreamError:
    return UpstreamError(400, message, param=param, code=code)


def plan_tools(payload: dict[str, Any]) -> ToolPlan | None:
    """The request's tools, checked; None when the model should just answer (no tools, or tool_choice none)."""
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise _bad("tool_choice", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                       "are specified.")
        return None
    if not isinstance(tools, list):
        raise _bad("tools", "'tools' must be an array of tools.", "invalid_type")
    functions: list[Function] = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"{at}.type", f"Invalid value for '{at}.type': only tools of type 'function' are supported.")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"{at}.function", f"Missing required parameter: '{at}.function'.", "missing_required_parameter")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise _bad(f"{at}.function.name", f"Invalid value for '{at}.function.name': {json.dumps(name)} does not "
                       "match '^[a-zA-Z0-9_-]{1,64}$'.")
        if any(f.name == name for f in functions):
            raise _bad(f"{at}.function.name", f"Duplicate function name '{name}' in 'tools'.")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise _bad(f"{at}.function.description", f"'{at}.function.description' must be a string.", "invalid_type")
        schema = normalise(fn.get("parameters"), f"{at}.function.parameters", root_object=True)
        functions.append(Function(name, description, schema))
    if choice == "none":
        return None
    if (payload.get("n") or 1) > 1:
        raise _bad("n", "The embedded model makes one tool-calling choice per request; send n=1 with 'tools' "
                   "(or tool_choice 'none').", "unsupported_parameter")
    parallel = payload.get("parallel_tool_calls") is not False
    if choice in (None, "auto", "required"):
        return ToolPlan(functions, choice or "auto", parallel)
    name = ((choice or {}).get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise _bad("tool_choice", "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}.")
    chosen = [f for f in functions if f.name == name]
    if not chosen:
        raise _bad("tool_choice", f"Invalid value for 'tool_choice': no function named '{name}' in 'tools'.")
    return ToolPlan(chosen, "named", False)


# ---------------------------------------------------------------------------------------------- prompt
def text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part.get("type") != "text":
            raise UpstreamError(
                400, f"The embedded model reads text only; content part type '{part.get('type')}' is not supported.",
                param=f"{where}.content[{i}].type", code="unsupported_content",
            )
        texts.append(part.get("text", ""))
    return "".join(texts)


def call_text(calls: list[tuple[str, Any]]) -> str:
    """Calls written the way the grammar makes the model write them."""
    objs = [{"name": name, "arguments": args} for name, args in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def flatten_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat messages as plain (role, text) turns the chat template can render, tool turns included."""
    flat = []
    for i, m in enumerate(messages):
        role = m.get("role")
        text = text_of(m.get("content"), f"messages[{i}]")
        if role == "developer":
            role = "system"
        elif role == "function":
            role = "tool"
        elif role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            raw = m.get("tool_calls") or [{"function": m["function_call"]}]
            calls = []
            for call in raw:
                fn = call.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except (TypeError, ValueError):
                    args = fn.get("arguments")
                calls.append((fn.get("name", ""), args))
            text = f"{text}\n{call_text(calls)}" if text else call_text(calls)
        flat.append({"role": role, "content": text})
    return flat


def tools_system_text(plan: ToolPlan) -> str:
    lines = ["You can call these functions:"]
    for f in plan.functions:
        lines.append(json.dumps({"name": f.name, "description": f.description, "parameters": f.schema},
                                ensure_ascii=False, separators=(",", ":")))
    lines.append('To call a function, reply with only JSON: {"name": "<function name>", "arguments": {<arguments>}}.')
    if plan.mode == "auto":
        lines.append("If no function is needed, answer in plain text.")
    return "\n".join(lines)


def with_tools(flat: list[dict[str, str]], plan: ToolPlan) -> list[dict[str, str]]:
    """The tools' system message, after the leading system messages (the persona's, the client's)."""
    lead = 0
    while lead < len(flat) and flat[lead]["role"] == "system":
        lead += 1
    return [*flat[:lead], {"role": "system", "content": tools_system_text(plan)}, *flat[lead:]]


def baseline_messages(flat: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same system prompt with a content-free user turn: what ``auto`` calibrates against."""
    lead = 0
    while lead < len(flat) and flat[lead]["role"] == "system":
        lead += 1
    return [*flat[:lead], {"role": "user", "content": "N/A"}]


# ---------------------------------------------------------------------------------------------- grammar
def call_grammar(plan: ToolPlan, first: str | None = None) -> Any:
    """The plan's call grammar; with ``first``, the (first) call must be of that function."""
    key = json.dumps([[f.name, f.schema] for f in plan.functions], sort_keys=True)
    return _call_grammar(key, plan.parallel, first)


def call_grammar_text(functions: list[tuple[str, dict[str, Any]]], parallel: bool, first: str | None = None) -> str:
    b = GrammarBuilder()
    alternatives = []
    for i, (name, schema) in enumerate(functions):
        args = b.add_schema(schema, f"fn{i}-args")
        alternatives.append(b.add_rule(
            f"fn{i}-call",
            f'"{{" space {literal(json.dumps("name"))} space ":" space {literal(json.dumps(name))} space '
            f'"," space {literal(json.dumps("arguments"))} space ":" space {args} "}}" space',
        ))
    b.add_rule("call", " | ".join(alternatives))
    opening = "call" if first is None else alternatives[[name for name, _ in functions].index(first)]
    if parallel:
        b.add_rule("root", f'{opening} | "[" space {opening} ("," space call){{0,{MAX_PARALLEL - 1}}} "]" space')
    else:
        b.add_rule("root", opening)
    return b.text()


@lru_cache(maxsize=64)
def _call_grammar(key: str, parallel: bool, first: str | None) -> Any:
    from llama_cpp import LlamaGrammar

    functions = [(name, schema) for name, schema in json.loads(key)]
    return LlamaGrammar.from_string(call_grammar_text(functions, parallel, first), verbose=False)


# ---------------------------------------------------------------------------------------------- output
class InvalidCall(ValueError):
    pass


def parse_calls(text: str, plan: ToolPlan) -> list[tuple[str, Any]]:
    """The calls in the model's output, each checked against its function's schema."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidCall(f"not JSON ({exc})") from None
    items = value if isinstance(value, list) else [value]
    if not items or (len(items) > 1 and not plan.parallel):
        raise InvalidCall(f"{len(items)} calls where {'1' if not plan.parallel else '1 or more'} are allowed")
    functions = plan.by_name()
    calls = []
    for item in items:
        if (not isinstance(item, dict) or item.get("name") not in functions
                or not isinstance(item.get("arguments"), dict)):
            raise InvalidCall(f"not a call of an offered function: {json.dumps(item)[:200]}")
        problem = validation_error(functions[item["name"]].schema, item["arguments"])
        if problem:
            raise InvalidCall(f"arguments of {item['name']} do not match its schema at {problem}")
        calls.append((item["name"], item["arguments"]))
    return calls


def loose_calls(text: str, plan: ToolPlan) -> list[dict[str, Any]]:
    """Calls read from *unconstrained* text, as a client of a model without octogate would read them:
    the outermost JSON object or array in the text, each item naming an offered function. The
    arguments are passed on exactly as written, valid or not (that is what the baseline measures)."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    end = max(text.rfind("}"), text.rfind("]"))
    if start < 0 or end <= start:
        return []
    try:
        value = json.loads(text[start:end + 1])
    except ValueError:
        return []
    names = plan.by_name()
    calls = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict) and item.get("name") in names:
            args = item.get("arguments", item.get("parameters", {}))
            raw = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, separators=(",", ":"))
            calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                          "function": {"name": item["name"], "arguments": raw}})
    return calls


def tool_call_objects(calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False, separators=(",", ":"))}}
            for name, args in calls]


def stream_deltas(tool_calls: list[dict[str, Any]], piece: int = 12) -> list[dict[str, Any]]:
    """The ``delta`` objects OpenAI streams for these calls: name first, then argument fragments."""
    deltas = []
    for index, call in enumerate(tool_calls):
        fn = call["function"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": fn["name"], "arguments": ""}}]})
        args = fn["arguments"]
        for start in range(0, len(args), piece):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": args[start:start + piece]}}]})
    return deltas


# ---------------------------------------------------------------------------------------------- decoding
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
        raise UpstreamError(400, f"Could not finish the tool call because max_tokens ({params.get('max_tokens')}) "
                            "was reached. Please try again with a higher max_tokens.", param="max_tokens",
                            code="max_tokens_reached")
    raise UpstreamError(500, f"The embedded model did not produce a valid tool call: {problem}",
                        code="invalid_tool_call")
