"""GBNF grammars for constrained decoding with llama.cpp: a JSON value of a normalised schema
(``response_format``) and a tool call, in which each function name is tied to its own argument
schema. Schemas go through llama.cpp's own JSON-schema converter
(``llama_cpp.llama_grammar.SchemaConverter``) after ``grammar_view`` drops what it cannot express;
those keywords are checked after generation (``octogate.core.json_schema.validation_error``)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from octogate.core.json_schema import ANNOTATIONS, anchored, schema_converter
from octogate.core.regex_grammar import json_string_rule
from octogate.core.tool_plan import MAX_PARALLEL, ToolPlan

_STRING_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_ALL_TYPES = ["string", "number", "boolean", "object", "array", "null"]


class GrammarBuilder:
    """Collects GBNF rules for several schemas in one grammar (each under its own rule-name prefix)."""

    def __init__(self) -> None:
        self.converter = schema_converter()
        self.extra: dict[str, str] = {}

    def add_schema(self, schema: dict[str, Any], prefix: str) -> str:
        """Rules for ``schema``; returns the name of the rule that matches one value of it."""
        return self.converter.visit(grammar_view(schema), prefix)

    def add_rule(self, name: str, body: str) -> str:
        self.extra[name] = body
        return name

    def text(self) -> str:
        rules = dict(self.converter._rules)
        if "char" in rules:  # JSON strings may not hold raw control characters
            rules["char"] = _STRING_CHAR
        rules.update(self.extra)
        return "\n".join(f"{name} ::= {body}" for name, body in sorted(rules.items()))


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    return json.dumps(text, ensure_ascii=False)


def grammar_view(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as llama.cpp's converter understands it: no annotations, unions spelled out."""
    s = {k: v for k, v in schema.items() if k not in ANNOTATIONS}
    for key in ("anyOf", "oneOf"):
        if key in s:
            alts = s.pop(key)
            rest = {k: v for k, v in s.items()}
            return {"anyOf": [grammar_view(_merge(rest, a)) for a in alts]}
    t = s.get("type")
    if isinstance(t, list):
        return {"anyOf": [grammar_view({**s, "type": one}) for one in t]}
    if "enum" in s or "const" in s:
        return {k: s[k] for k in ("enum", "const") if k in s}
    if t is None:
        if "properties" in s or "additionalProperties" in s:
            t = s["type"] = "object"
        elif "items" in s or "prefixItems" in s:
            t = s["type"] = "array"
        else:
            return {"anyOf": [grammar_view({**s, "type": one}) for one in _ALL_TYPES]}
    if t == "integer" and "minimum" in s and "maximum" in s and 0 <= s["maximum"] - s["minimum"] <= 64:
        low, high = int(-(-s["minimum"] // 1)), int(s["maximum"] // 1)
        values = [v for v in range(low, high + 1) if _in_bounds(v, s)]
        if values:
            return {"enum": values}
    if t == "object":
        if "properties" in s:
            s["properties"] = {k: grammar_view(v) for k, v in s["properties"].items()}
        if isinstance(s.get("additionalProperties"), dict):
            s["additionalProperties"] = grammar_view(s["additionalProperties"])
        if "properties" not in s and "additionalProperties" not in s:
            return {"type": "object"}
    if t == "array":
        if isinstance(s.get("items"), dict):
            s["items"] = grammar_view(s["items"])
        if "prefixItems" in s:
            return {"type": "array", "prefixItems": [grammar_view(x) for x in s["prefixItems"]]}
        if "items" not in s or s["items"] is True:
            return {"type": "array"}  # any JSON array
    if t == "string" and "pattern" in s:
        s["pattern"] = anchored(s["pattern"])
    if t != "string":
        s.pop("format", None)
    return s


def _in_bounds(v: int, s: dict[str, Any]) -> bool:
    return (("exclusiveMinimum" not in s or v > s["exclusiveMinimum"])
            and ("exclusiveMaximum" not in s or v < s["exclusiveMaximum"])
            and ("multipleOf" not in s or v % s["multipleOf"] == 0))


def _merge(base: dict[str, Any], alt: dict[str, Any]) -> dict[str, Any]:
    if not base:
        return alt
    out = copy.deepcopy(base)
    for k, v in alt.items():
        if k == "properties" and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        elif k == "required" and isinstance(out.get(k), list):
            out[k] = list(dict.fromkeys([*out[k], *v]))
        else:
            out[k] = v
    return out


@lru_cache(maxsize=64)
def value_grammar(schema_json: str | None) -> Any:
    """A LlamaGrammar for one JSON value of the schema (None: any JSON object, for json_object)."""
    from llama_cpp import LlamaGrammar

    builder = GrammarBuilder()
    top = builder.add_schema(json.loads(schema_json) if schema_json is not None else {"type": "object"}, "value")
    builder.add_rule("root", top)
    return LlamaGrammar.from_string(builder.text(), verbose=False)


def call_grammar(plan: ToolPlan, first: str | None = None) -> Any:
    """The plan's call grammar; with ``first``, the (first) call must be of that function."""
    key = json.dumps([[f.name, f.schema, f.value_key, f.regex] for f in plan.functions], sort_keys=True)
    return _call_grammar(key, plan.parallel, first)


def call_grammar_text(functions: list[tuple[Any, ...]], parallel: bool, first: str | None = None) -> str:
    """``functions``: (name, schema[, value key[, regex]]): a function's ``arguments`` under its
    parameters, a custom tool's ``input`` (a JSON string; with a regex grammar, its text matches the
    regex in full: ``core/regex_grammar.py``)."""
    b = GrammarBuilder()
    alternatives = []
    for i, (name, schema, *key) in enumerate(functions):
        regex = key[1] if len(key) > 1 else None
        args = b.add_rule(f"fn{i}-args", json_string_rule(regex)) if regex else b.add_schema(schema, f"fn{i}-args")
        alternatives.append(b.add_rule(
            f"fn{i}-call",
            f'"{{" space {literal(json.dumps("name"))} space ":" space {literal(json.dumps(name))} space '
            f'"," space {literal(json.dumps(key[0] if key else "arguments"))} space ":" space {args} "}}" space',
        ))
    b.add_rule("call", " | ".join(alternatives))
    opening = "call" if first is None else alternatives[[f[0] for f in functions].index(first)]
    if parallel:
        b.add_rule("root", f'{opening} | "[" space {opening} ("," space call){{0,{MAX_PARALLEL - 1}}} "]" space')
    else:
        b.add_rule("root", opening)
    return b.text()


@lru_cache(maxsize=64)
def _call_grammar(key: str, parallel: bool, first: str | None) -> Any:
    from llama_cpp import LlamaGrammar

    functions = [tuple(f) for f in json.loads(key)]
    return LlamaGrammar.from_string(call_grammar_text(functions, parallel, first), verbose=False)
