"""``octogate fc eval``: BFCL cases through a live gateway with the ``openai`` SDK, constrained and not.

Each case is one chat completion with the case's functions as ``tools`` (``tool_choice: auto``),
sent once per mode, chosen with octogate's request extension ``"octogate": {"tool_calls": MODE}``:
``constrained`` (every function in the prompt, the call constrained with grammars),
``unconstrained`` (the same model answers the same prompt freely, the call then read back from its
text as a client of an unconstrained model would) and ``toolset`` (a registered toolset's trained
token picks the function with no description in the prompt). The report gives, for each: function-selection accuracy, argument accuracy under BFCL's
rules (``function_calling/bfcl.py``), the share of returned calls whose arguments parse as JSON and
validate against the function's schema, prompt tokens read (``usage``) and latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from octogate.adapters.tool_calling.evaluation.bfcl import Case, score, to_openai_tools

#: each is the request extension ``"octogate": {"tool_calls": MODE}``; "toolset" needs the cases
#: functions to be a toolset the gateway's graph registers (``function_calling/toolsets.py``)
MODES = ("toolset", "constrained", "unconstrained")
DEFAULT_MODES = ("constrained", "unconstrained")


@dataclass
class ModeReport:
    mode: str
    total: int = 0
    called: int = 0
    right_function: int = 0
    right_arguments: int = 0
    calls: int = 0  # tool calls returned
    valid_calls: int = 0  # ... whose arguments parse and validate
    errors: int = 0  # requests that failed (HTTP error)
    prompt_tokens: int = 0  # usage.prompt_tokens, summed over answered requests
    latencies: list[float] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (case id, what was wrong)

    def rate(self, n: int, of: int | None = None) -> float:
        d = self.total if of is None else of
        return n / d if d else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def arguments_valid(arguments: str, schema: dict[str, Any]) -> tuple[bool, Any]:
    """Whether a call's ``arguments`` string parses as a JSON object valid under ``schema``."""
    import jsonschema

    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return False, None
    if not isinstance(value, dict):
        return False, value
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False, value
    except jsonschema.SchemaError:
        return False, value
    return True, value


def run_case(client, model: str, case: Case, mode: str, max_tokens: int, report: ModeReport) -> None:
    import openai

    tools = to_openai_tools(case.functions)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    extra = {"octogate": {"tool_calls": mode}}
    started = time.perf_counter()
    try:
        answer = client.chat.completions.create(model=model, messages=case.messages, tools=tools, tool_choice="auto",
                                                temperature=0, max_tokens=max_tokens, extra_body=extra)
    except openai.APIError as exc:
        report.total += 1
        report.errors += 1
        report.problems.append((case.id, f"request failed: {exc}"))
        return
    report.latencies.append(time.perf_counter() - started)
    report.total += 1
    report.prompt_tokens += answer.usage.prompt_tokens if answer.usage else 0
    calls = answer.choices[0].message.tool_calls or []
    name, arguments = None, None
    for i, call in enumerate(calls):
        report.calls += 1
        ok, value = arguments_valid(call.function.arguments, schemas.get(call.function.name, {"type": "object"}))
        report.valid_calls += ok and call.function.name in schemas
        if i == 0:
            name, arguments = call.function.name, value if isinstance(value, dict) else None
    result = score(case, name, arguments)
    report.called += result.called
    report.right_function += result.right_function
    report.right_arguments += result.right_arguments
    if not result.right_arguments:
        report.problems.append((case.id, result.problem))


def evaluate(client, model: str, cases: Sequence[Case], modes: Sequence[str] = DEFAULT_MODES, max_tokens: int = 256,
             progress: Callable[[], None] | None = None) -> dict[str, ModeReport]:
    reports = {m: ModeReport(m) for m in modes}
    for case in cases:
        for mode in modes:
            run_case(client, model, case, mode, max_tokens, reports[mode])
        if progress:
            progress()
    return reports
