"""The tools of a chat request, checked once: names, duplicates, ``tool_choice`` and each
``parameters`` schema (through ``octogate.core.json_schema``). Every path that makes tool calls
itself (the embedded model, tool calls for remote models, registered toolsets) reads this plan.

Two kinds of tool, as in OpenAI's API: a function (``{"type": "function", "function": {...}}``,
called with JSON arguments under its ``parameters`` schema) and a custom tool (``{"type": "custom",
"custom": {"name", "description"?, "format"?}}``, called with free-text ``input``). A custom tool's
``input`` is planned as a JSON string schema: any text for ``format: {"type": "text"}`` (or no
format), and text matching the whole regex for ``format: {"type": "grammar", "grammar": {"syntax":
"regex", "definition": ...}}``, so the same grammars, schemas and validation make both kinds of
call. A ``lark`` grammar cannot be enforced by these decoders: a 400 naming
``tools[i].custom.format.grammar.syntax``.

``tool_choice`` may also be ``{"type": "custom", "custom": {"name": ...}}`` (that tool, once) and
``{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools": [...]}}``: only
the listed tools are offered, in that mode.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from octogate.core.errors import UpstreamError
from octogate.core.json_schema import normalise
from octogate.core.regex_grammar import RegexNotEnforceable, json_string_rule

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_PARALLEL = 8


@dataclass(frozen=True)
class Function:
    """One tool the model may call. ``schema``: a function's parameters, or a custom tool's input
    (a JSON string schema, with the grammar's regex as its ``pattern``)."""

    name: str
    description: str
    schema: dict[str, Any]
    kind: str = "function"  # "function" | "custom"
    regex: str | None = None  # a custom tool's regex grammar: its input must match it in full

    @property
    def value_key(self) -> str:
        """The key that holds the call's value in the call JSON the model writes."""
        return "input" if self.kind == "custom" else "arguments"


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
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "custom":
            function = _custom_tool(tool, at)
        elif kind == "function":
            function = _function_tool(tool, at)
        else:
            raise _bad(f"{at}.type", f"Invalid value for '{at}.type': expected 'function' or 'custom'.")
        if any(f.name == function.name for f in functions):
            raise _bad(f"{at}.{kind}.name", f"Duplicate tool name '{function.name}' in 'tools'.")
        functions.append(function)
    if choice == "none":
        return None
    if (payload.get("n") or 1) > 1:
        raise _bad("n", "The embedded model makes one tool-calling choice per request; send n=1 with 'tools' "
                   "(or tool_choice 'none').", "unsupported_parameter")
    parallel = payload.get("parallel_tool_calls") is not False
    if choice in (None, "auto", "required"):
        return ToolPlan(functions, choice or "auto", parallel)
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "allowed_tools":
        return _allowed(choice.get("allowed_tools"), functions, parallel)
    name = ((choice.get(kind) or {}).get("name") if kind in ("function", "custom") else None)
    if not isinstance(name, str):
        raise _bad("tool_choice", "Invalid value for 'tool_choice': expected 'none', 'auto', 'required', "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}, {\"type\": \"custom\", \"custom\": "
                   "{\"name\": ...}} or {\"type\": \"allowed_tools\", ...}.")
    chosen = [f for f in functions if f.name == name and f.kind == kind]
    if not chosen:
        raise _bad(f"tool_choice.{kind}.name", f"Invalid value for 'tool_choice.{kind}.name': no {kind} tool named "
                   f"'{name}' in 'tools'.")
    return ToolPlan(chosen, "named", False)


def _definition(tool: dict[str, Any], at: str, kind: str) -> tuple[dict[str, Any], str, str]:
    """A tool's ``function`` or ``custom`` object, with its checked name and description."""
    body = tool.get(kind)
    if not isinstance(body, dict):
        raise _bad(f"{at}.{kind}", f"Missing required parameter: '{at}.{kind}'.", "missing_required_parameter")
    name = body.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _bad(f"{at}.{kind}.name", f"Invalid value for '{at}.{kind}.name': {json.dumps(name)} does not "
                   "match '^[a-zA-Z0-9_-]{1,64}$'.")
    description = body.get("description") or ""
    if not isinstance(description, str):
        raise _bad(f"{at}.{kind}.description", f"'{at}.{kind}.description' must be a string.", "invalid_type")
    return body, name, description


def _function_tool(tool: dict[str, Any], at: str) -> Function:
    fn, name, description = _definition(tool, at, "function")
    schema = normalise(fn.get("parameters"), f"{at}.function.parameters", root_object=True)
    return Function(name, description, schema)


#: the most characters a regex grammar's definition may have (what the GBNF conversion is sized for)
MAX_REGEX = 2000


def _custom_tool(tool: dict[str, Any], at: str) -> Function:
    custom, name, description = _definition(tool, at, "custom")
    fmt = custom.get("format")
    schema: dict[str, Any] = {"type": "string"}
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return Function(name, description, schema, "custom")
    if not isinstance(fmt, dict) or fmt.get("type") != "grammar":
        raise _bad(f"{at}.custom.format.type", f"Invalid value for '{at}.custom.format.type': expected 'text' or "
                   "'grammar'.")
    grammar = fmt.get("grammar")
    where = f"{at}.custom.format.grammar"
    if not isinstance(grammar, dict):
        raise _bad(where, f"Missing required parameter: '{where}'.", "missing_required_parameter")
    syntax, definition = grammar.get("syntax"), grammar.get("definition")
    if syntax == "lark":
        raise _bad(f"{where}.syntax", f"Invalid value for '{where}.syntax': this model enforces custom tool "
                   "grammars of syntax 'regex' only; 'lark' grammars cannot be enforced here.",
                   "unsupported_grammar")
    if syntax != "regex":
        raise _bad(f"{where}.syntax", f"Invalid value for '{where}.syntax': expected 'regex' or 'lark'.")
    if not isinstance(definition, str) or not definition:
        raise _bad(f"{where}.definition", f"Invalid value for '{where}.definition': a regular expression is "
                   "required.")
    if len(definition) > MAX_REGEX:
        raise _bad(f"{where}.definition", f"Invalid value for '{where}.definition': at most {MAX_REGEX} "
                   "characters.", "unsupported_grammar")
    try:
        re.compile(definition)
    except re.error as exc:
        raise _bad(f"{where}.definition", f"Invalid value for '{where}.definition': not a regular expression "
                   f"({exc}).") from None
    try:
        json_string_rule(definition)
    except RegexNotEnforceable as exc:
        raise _bad(f"{where}.definition", f"Invalid value for '{where}.definition': this regular expression cannot "
                   f"be enforced by constrained decoding: {exc}.", "unsupported_grammar") from None
    return Function(name, description, {"type": "string", "pattern": whole_match(definition)}, "custom", definition)


def whole_match(definition: str) -> str:
    """A regex grammar constrains the whole input: ``^(definition)$`` (its own anchors dropped)."""
    core = definition[1:] if definition.startswith("^") else definition
    if core.endswith("$") and not core.endswith("\\$"):
        core = core[:-1]
    return f"^({core})$"


def _allowed(allowed: Any, functions: list[Function], parallel: bool) -> ToolPlan:
    at = "tool_choice.allowed_tools"
    if not isinstance(allowed, dict):
        raise _bad(at, f"Missing required parameter: '{at}'.", "missing_required_parameter")
    mode, listed = allowed.get("mode"), allowed.get("tools")
    if mode not in ("auto", "required"):
        raise _bad(f"{at}.mode", f"Invalid value for '{at}.mode': expected 'auto' or 'required'.")
    if not isinstance(listed, list) or not listed:
        raise _bad(f"{at}.tools", f"Invalid value for '{at}.tools': a non-empty array of tools is required.")
    by_key = {(f.kind, f.name): f for f in functions}
    chosen: list[Function] = []
    for j, tool in enumerate(listed):
        kind = tool.get("type") if isinstance(tool, dict) else None
        name = (tool.get(kind) or {}).get("name") if kind in ("function", "custom") and isinstance(
            tool.get(kind), dict) else None
        if not isinstance(name, str):
            raise _bad(f"{at}.tools[{j}]", f"Invalid value for '{at}.tools[{j}]': expected {{\"type\": \"function\", "
                       "\"function\": {\"name\": ...}} or {\"type\": \"custom\", \"custom\": {\"name\": ...}}.")
        if (kind, name) not in by_key:
            raise _bad(f"{at}.tools[{j}]", f"Invalid value for '{at}.tools[{j}]': no {kind} tool named '{name}' in "
                       "'tools'.")
        if by_key[(kind, name)] not in chosen:
            chosen.append(by_key[(kind, name)])
    return ToolPlan(chosen, mode, parallel)


class ToolChooser(Protocol):
    """A trained chooser of one function among a request's tools (a registered toolset, Octopus v2)."""

    async def choose(self, query: str, names: list[str], allow_none: bool) -> tuple[str | None, int]:
        """The function to call among ``names`` (None: answer without a call), and the prompt tokens read."""
        ...


class ToolChoosers(Protocol):
    """The graph's registered toolsets, as a backend that makes its own tool calls sees them."""

    def match(self, plan: ToolPlan) -> ToolChooser | None:
        """The chooser whose toolset covers every function of ``plan``, if one does."""
        ...
