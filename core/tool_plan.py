"""The tools of a chat request, checked once: names, duplicates, ``tool_choice`` and each
``parameters`` schema (through ``octogate.core.json_schema``). Every path that makes tool calls
itself (the embedded model, tool calls for remote models, registered toolsets) reads this plan."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from octogate.core.errors import UpstreamError
from octogate.core.json_schema import normalise

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_PARALLEL = 8


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
