"""Berkeley Function Calling Leaderboard cases: reading them, offering them as OpenAI tools, scoring answers.

A case (``../shared/data/function_calling/*.jsonl``) has ``messages``, ``functions`` in BFCL's
dialect of JSON Schema and ``gold``: ``[{function_name: {arg: [acceptable values]}}]`` (one
expected call; an empty list means no call is expected). An argument whose acceptable values
include ``""`` is optional.

Offering: BFCL names functions with dots (``math.factorial``), which OpenAI's tool names may not
contain (``^[a-zA-Z0-9_-]{1,64}$``), so dots become underscores on the way out and are mapped back
when scoring, as BFCL's own harness does for OpenAI models. The dialect (``"type": "dict"``,
``float``, ``tuple``, ``any``) is converted to JSON Schema on the client side, so the gateway is
sent what any OpenAI client would send.

Scoring follows BFCL's AST rules, written here from their description:
- the called function must be the expected one;
- every argument the model gave must be a parameter of that function, every required argument
  must be there, and an absent argument is fine only if it is optional;
- a given argument must match one of the acceptable values: strings compared after lower-casing
  and dropping spaces and the punctuation ``,./-_*^``; an integer is accepted for a number; lists
  element by element in order; objects key by key, each value against its own acceptable list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octogate.core.jsonl import read_jsonl

_TYPES = {"dict": "object", "float": "number", "int": "integer", "str": "string", "bool": "boolean",
          "list": "array", "tuple": "array"}
_DROP_KEYS = {"optional"}  # BFCL's own markers, not JSON Schema


@dataclass(frozen=True)
class Case:
    id: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    gold: list[dict[str, dict[str, list[Any]]]]

    @property
    def expected(self) -> tuple[str, dict[str, list[Any]]] | None:
        """The expected (function name, {argument: acceptable values}), or None for no call."""
        if not self.gold:
            return None
        ((name, args),) = self.gold[0].items()
        return name, args


def read_cases(path: str | Path) -> list[Case]:
    return read_jsonl(path, lambda row: Case(str(row["id"]), row["messages"], row["functions"], row.get("gold") or []),
                      "a BFCL case")


def tool_name(bfcl_name: str) -> str:
    return bfcl_name.replace(".", "_")


def to_json_schema(schema: Any) -> Any:
    """BFCL's dialect as standard JSON Schema (``any`` becomes an unconstrained schema)."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP_KEYS:
            continue
        if key == "type" and isinstance(value, str):
            if value == "any":
                continue
            out[key] = _TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(s) for name, s in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties"):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    return out


def to_openai_tools(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": tool_name(f["name"]), "description": f.get("description", ""),
                                              "parameters": to_json_schema(f.get("parameters") or {"type": "object"})}}
            for f in functions]


_PUNCT = re.compile(r"[ ,./\-_*^]")


def _norm(s: str) -> str:
    return _PUNCT.sub("", s.lower())


def value_matches(value: Any, acceptable: Any) -> bool:
    """One given value against one acceptable value (see the module's rules)."""
    if isinstance(acceptable, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(acceptable, bool) and value == acceptable
    if isinstance(acceptable, (int, float)):
        return isinstance(value, (int, float)) and float(value) == float(acceptable)
    if isinstance(acceptable, str):
        return isinstance(value, str) and _norm(value) == _norm(acceptable)
    if isinstance(acceptable, list):
        return (isinstance(value, list) and len(value) == len(acceptable)
                and all(value_matches(v, a) for v, a in zip(value, acceptable)))
    if isinstance(acceptable, dict):
        # nested: each key's acceptable values are themselves a list (BFCL writes them that way)
        if not isinstance(value, dict):
            return False
        for key, options in acceptable.items():
            options = options if isinstance(options, list) else [options]
            if key not in value:
                if "" not in options:
                    return False
            elif not any(value_matches(value[key], o) for o in options if o != ""):
                return False
        return set(value) <= set(acceptable)
    return value == acceptable


@dataclass(frozen=True)
class Score:
    called: bool  # the model made a call
    right_function: bool
    right_arguments: bool  # BFCL's AST match (implies right_function)
    problem: str = ""


def score(case: Case, name: str | None, arguments: dict[str, Any] | None) -> Score:
    """Score one answer: the function the model called (its OpenAI name) and its parsed arguments."""
    expected = case.expected
    if expected is None:
        ok = name is None
        return Score(name is not None, ok, ok, "" if ok else "a call where none was expected")
    if name is None:
        return Score(False, False, False, "no call")
    want, gold_args = expected
    if name != tool_name(want):
        return Score(True, False, False, f"called {name}, expected {tool_name(want)}")
    arguments = arguments or {}
    function = next(f for f in case.functions if f["name"] == want)
    params = (function.get("parameters") or {}).get("properties") or {}
    for key in arguments:
        if key not in params:
            return Score(True, True, False, f"unexpected argument {key!r}")
    for key, options in gold_args.items():
        if key not in arguments:
            if "" not in options:
                return Score(True, True, False, f"missing argument {key!r}")
            continue
        if not any(value_matches(arguments[key], o) for o in options if o != ""):
            return Score(True, True, False, f"{key}={arguments[key]!r} is not one of {options!r}")
    return Score(True, True, True)
