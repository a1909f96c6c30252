"""A chat request translated for the embedded model: the prompt's tokens under the GGUF's chat
template, llama.cpp's sampling parameters, and what tool calls and ``response_format`` need
(the tool plan and its grammar, the ``auto`` calibration prompt, a registered toolset, the schema
every answer must validate against). Everything the model cannot take is a 400 here, before any
generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from octogate.adapters.embedded_model import EmbeddedModel
from octogate.adapters.tool_calling.decoding import shared_words
from octogate.adapters.tool_calling.grammar import call_grammar, value_grammar
from octogate.adapters.tool_calling.prompt import baseline_messages, flatten_messages, text_of, with_tools
from octogate.core.errors import UpstreamError, max_tokens_reached
from octogate.core.json_schema import normalise, validation_error
from octogate.core.protocol import ChatCompletionRequest
from octogate.core.tool_plan import ToolChooser, ToolChoosers, ToolPlan, plan_tools

# Each chat turn costs at least this many tokens of the template's own (ChatML: <|im_start|>, the
# role, a newline, <|im_end|>, a newline), whatever its content.
MIN_TOKENS_PER_TURN = 4


@dataclass
class Prepared:
    """A request translated for llama.cpp."""

    tokens: list[int]
    params: dict[str, Any]
    n: int = 1
    plan: ToolPlan | None = None
    call_params: dict[str, Any] = field(default_factory=dict)
    baseline: list[int] | None = None  # tool_choice auto: the content-free prompt it calibrates against
    shared_words: int = 0  # tool_choice auto: words the last user message shares with a function
    output_schema: dict[str, Any] | None = None  # response_format: what every answer must validate against
    unconstrained: bool = False  # "octogate": {"tool_calls": "unconstrained"}: the baseline fc eval compares with
    prompt_count: int = 0  # prompt tokens the model read for this request (usage.prompt_tokens)
    toolset: ToolChooser | None = None  # the registered toolset whose trained token chooses the function
    flat: list[dict[str, str]] = field(default_factory=list)  # toolset path: the turns, without any tool listing
    query: str = ""  # tools: the last user message
    logprobs: int | None = None  # logprobs asked for: alternatives per token (top_logprobs, 0-20)

    def check_output(self, text: str, finish: str) -> str | None:
        """Why a response_format answer is unacceptable ("length" when it was cut off), or None."""
        if self.output_schema is None:
            return None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return "length" if finish == "length" else "the answer is not JSON"
        return validation_error(self.output_schema, value)

    def output_error(self, problem: str) -> UpstreamError:
        if problem == "length":
            return max_tokens_reached(self.params["max_tokens"])
        return UpstreamError(500, f"The embedded model's answer does not match response_format: {problem}",
                             code="invalid_output")


def context_exceeded(model: EmbeddedModel, tokens: list[int]) -> UpstreamError:
    return UpstreamError(400, f"This model's maximum context length is {model.n_ctx} tokens; the messages take "
                         f"{len(tokens)}.", param="messages", code="context_length_exceeded")


def prepare(model: EmbeddedModel, toolsets: ToolChoosers | None, request: ChatCompletionRequest,
            payload: dict[str, Any]) -> Prepared:
    plan = plan_tools(payload)
    messages = payload["messages"]
    if len(messages) * MIN_TOKENS_PER_TURN > model.n_ctx:  # cannot fit: say so before templating any of it
        raise UpstreamError(400, f"This model's maximum context length is {model.n_ctx} tokens; {len(messages)} "
                            f"messages take at least {len(messages) * MIN_TOKENS_PER_TURN}.", param="messages",
                            code="context_length_exceeded")
    flat = flatten_messages(messages)
    mode = request.tool_calls_mode
    toolset = None
    if plan is not None and mode in ("auto", "toolset") and plan.mode != "named" and toolsets:
        toolset = toolsets.match(plan)
    if mode == "toolset" and toolset is None:
        raise UpstreamError(400, "'octogate.tool_calls: toolset' needs tools that all belong to one of the graph's "
                            "registered toolsets (same names and parameters) and tool_choice auto or required.",
                            param="octogate.tool_calls", code="invalid_value")
    if plan is not None and toolset is None:
        flat = with_tools(flat, plan)  # a toolset's prompt names no function: that is its context saving
    tokens, template_stop = model.prompt_tokens(flat)
    room = model.n_ctx - len(tokens)
    if room <= 0:
        raise context_exceeded(model, tokens)
    stop = request.stop or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    params: dict[str, Any] = {
        "max_tokens": min(request.max_tokens_asked or room, room),
        "temperature": _or_default(request.temperature, 1.0),  # OpenAI's defaults
        "top_p": _or_default(request.top_p, 1.0),
        "stop": stop + template_stop,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "presence_penalty": request.presence_penalty or 0.0,
    }
    if request.seed is not None:
        params["seed"] = request.seed
    prep = Prepared(tokens, params, request.n or 1, plan, unconstrained=mode == "unconstrained",
                    prompt_count=len(tokens), logprobs=(request.top_logprobs or 0) if request.logprobs else None)
    if prep.unconstrained and (plan is None or request.stream):
        raise UpstreamError(400, "'octogate.tool_calls: unconstrained' needs tools and a non-streamed request.",
                            param="octogate.tool_calls", code="invalid_value")
    if plan is not None and not prep.unconstrained:
        # Client stop strings end prose; a call ends where its grammar does.
        prep.call_params = {**params, "stop": template_stop}
        try:
            # built (and cached) now, so that a schema it cannot take is the client's 400
            model.check_grammar(call_grammar(plan))
        except Exception as exc:
            raise UpstreamError(400, f"Unsupported tool parameters schema: {exc}", param="tools",
                                code="invalid_schema") from None
        after_tool = messages[-1].get("role") in ("tool", "function")
        users = [m for m in messages if m.get("role") == "user"]
        last_user = text_of(users[-1].get("content"), "messages") if users else ""
        prep.query = last_user
        if toolset is not None and not (plan.mode == "auto" and after_tool):
            prep.toolset, prep.flat = toolset, flat
        elif toolset is None and plan.mode == "auto" and not after_tool:
            prep.baseline = model.prompt_tokens(baseline_messages(flat))[0]
            prep.shared_words = shared_words(plan, last_user)
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        params["grammar"] = value_grammar(None)
        prep.output_schema = {"type": "object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = normalise(fmt.json_schema.schema_ or {}, "response_format.json_schema.schema")
        try:
            params["grammar"] = value_grammar(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
            model.check_grammar(params["grammar"])
        except Exception as exc:
            raise UpstreamError(400, f"Unsupported JSON schema: {exc}", param="response_format.json_schema.schema",
                                code="invalid_schema") from None
        prep.output_schema = schema
    return prep


def _or_default(value: Any, default: float) -> Any:
    return default if value is None else value
