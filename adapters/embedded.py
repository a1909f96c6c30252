"""The embedded backend: SmolLM2-135M-Instruct running in-process on the CPU through llama.cpp.

It follows the translating template (``adapters/translating.py``): ``embedded_request.prepare``
turns the request into the prompt's tokens and llama.cpp's parameters, generation runs on the
shared model's thread (``embedded_model``), and the answer is rendered as OpenAI's completion or
chunks. Text is streamed token by token, and a client that goes away stops its generation at the
next token. The prompt is rendered with the chat template stored in the GGUF and generated with
llama.cpp's completion API, which reuses the KV cache of the longest prefix shared with the
previous request (a node's persona, for instance).

``tools`` are served by grammar-constrained decoding (``tool_calling/``), and ``response_format``
by a grammar made from its schema (``core/json_schema``); in both cases the output is validated
against the schema before it is returned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from octogate.adapters.embedded_model import EmbeddedModel, shared_model
from octogate.adapters.embedded_request import Prepared, context_exceeded, prepare
from octogate.adapters.tool_calling.decoding import CALL_THRESHOLD, LEXICAL_WEIGHT, call_preference, generate_calls
from octogate.adapters.tool_calling.parsing import loose_calls, tool_call_objects
from octogate.adapters.tool_calling.prompt import with_tools
from octogate.adapters.translating import Answer, AnswerChoice, ChunkWriter, Origin, TranslatingBackend
from octogate.core.errors import UpstreamError
from octogate.core.graph import BackendConfig
from octogate.core.protocol import ChatCompletionRequest
from octogate.core.responses import AnyToolCall, Usage
from octogate.core.tool_plan import ToolChoosers, ToolPlan

log = logging.getLogger("octogate.embedded")
_OUTPUT_ATTEMPTS = 3

__all__ = ["EmbeddedBackend", "EmbeddedModel", "shared_model"]


class EmbeddedBackend(TranslatingBackend):
    def __init__(self, cfg: BackendConfig, label: str, toolsets: ToolChoosers | None = None):
        """``toolsets``: the graph's registered toolsets (``octogate.router_model.toolsets.ToolsetRegistry``), if it registers any."""
        self.cfg = cfg
        self.label = label
        self.model_name = cfg.upstream_model
        self.model = shared_model(cfg)
        self.toolsets = toolsets

    async def start(self) -> None:
        await self.model.thread.run(self.model.load)

    async def check_ready(self) -> str:
        if self.model.llm is None:
            raise UpstreamError(503, "embedded model not loaded")
        return "loaded"

    # ------------------------------------------------------------------ the translating template
    def prepare(self, request: ChatCompletionRequest, payload: dict[str, Any],
                trace_headers: dict[str, str] | None) -> Prepared:
        return prepare(self.model, self.toolsets, request, payload)

    async def prepare_off_loop(self, request: ChatCompletionRequest, payload: dict[str, Any],
                               trace_headers: dict[str, str] | None) -> Prepared:
        # Templating and tokenising a long conversation is CPU work: on the model's thread, never the loop.
        return await self.model.thread.run(self.prepare, request, payload, trace_headers)

    def origin(self, job: Prepared) -> Origin:
        return Origin(self.model_name, system_fingerprint=self.model.fingerprint)

    async def generate(self, prep: Prepared) -> Answer:
        called = await self._tool_calls(prep)
        if called is not None:
            tool_calls, generated = called
            return Answer([AnswerChoice.calls(tool_calls)], Usage.of(prep.prompt_count, generated))
        n = prep.n
        completion_tokens = 0
        for attempt in range(_OUTPUT_ATTEMPTS):
            params = prep.params if not attempt else {  # sampled retries (a keyword the grammar cannot express)
                **prep.params, "seed": prep.params.get("seed", 0) + 1000 * attempt,
                "temperature": max(0.7, prep.params["temperature"])}
            texts = [""] * n
            finish = ["stop"] * n
            entries: list[list[dict[str, Any]]] = [[] for _ in range(n)]
            async for index, out, count in self.model.generate(prep.tokens, params, n, prep.logprobs):
                if out is None:
                    completion_tokens += count
                    continue
                choice = out["choices"][0]
                texts[index] += choice["text"]
                entries[index] += choice.get("logprob_entries") or ()
                if choice.get("finish_reason"):
                    finish[index] = choice["finish_reason"]
            problems = [prep.check_output(texts[i], finish[i]) for i in range(n)]
            if not any(problems):
                break
        else:
            raise prep.output_error(next(p for p in problems if p))
        usage = Usage.of(prep.prompt_count, completion_tokens)
        if prep.unconstrained and n == 1 and (loose := loose_calls(texts[0], prep.plan)):
            return Answer([AnswerChoice.calls(loose)], usage)
        return Answer([AnswerChoice(texts[i], finish_reason=finish[i], logprobs=None if prep.logprobs is None else
                                    {"content": entries[i], "refusal": None}) for i in range(n)], usage)

    async def generate_chunks(self, prep: Prepared, include_usage: bool) -> AsyncIterator[bytes]:
        writer = ChunkWriter(self.origin(prep), include_usage)
        # Calls are generated and validated in full before the first chunk: a refusal is still an HTTP error,
        # and no client ever sees arguments that do not match their schema.
        called = await self._tool_calls(prep)
        if called is not None:
            tool_calls, generated = called
            for chunk in writer.answer(Answer([AnswerChoice.calls(tool_calls)], Usage.of(prep.prompt_count, generated))):
                yield chunk
            return

        started: set[int] = set()
        finish: dict[int, str] = {}
        texts: dict[int, list[str]] = {}
        pending: dict[int, list[dict[str, Any]]] = {}  # logprobs of tokens whose text has not come out yet
        completion_tokens = 0
        async for index, out, count in self.model.generate(prep.tokens, prep.params, prep.n, prep.logprobs):
            if index not in started:
                started.add(index)
                yield writer.start(index)
            if out is None:
                completion_tokens += count
                problem = prep.check_output("".join(texts.get(index, [])), finish.get(index, "stop"))
                if problem:  # the grammar held, but a keyword it cannot express did not: say so, do not end cleanly
                    raise prep.output_error(problem)
                yield writer.finish(index, finish.get(index, "stop"))
                continue
            choice = out["choices"][0]
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
            entries = None
            if prep.logprobs is not None:
                entries = pending.setdefault(index, [])
                entries += choice.get("logprob_entries") or ()
            if choice["text"]:
                texts.setdefault(index, []).append(choice["text"])
                if entries is not None:
                    pending[index] = []
                yield writer.text(index, choice["text"], entries)
        for chunk in writer.usage(Usage.of(prep.prompt_count, completion_tokens)):
            yield chunk

    # ------------------------------------------------------------------ tool calls
    async def _tool_calls(self, prep: Prepared) -> tuple[list[AnyToolCall], int] | None:
        """The calls the model makes (tool calls, tokens generated), or None to answer in text."""
        plan = prep.plan
        if prep.toolset is not None:
            return await self._toolset_calls(prep)
        if plan is None or prep.unconstrained or (plan.mode == "auto" and prep.baseline is None):
            return None
        llm = self.model.llm

        def work(cancel: threading.Event) -> tuple[list[AnyToolCall], int] | None:
            if plan.mode == "auto":
                preference = call_preference(llm, prep.tokens, prep.baseline) + LEXICAL_WEIGHT * prep.shared_words
                log.debug("tool choice auto: call preference %.2f", preference)
                if preference < CALL_THRESHOLD:
                    return None
            calls, generated = generate_calls(llm, prep.tokens, prep.call_params, plan, cancel, prep.query)
            return tool_call_objects(calls, plan), generated

        return await self.model.run(work)

    async def _toolset_calls(self, prep: Prepared) -> tuple[list[AnyToolCall], int] | None:
        """A registered toolset's path: one trained token picks the function, then its arguments are
        written with only that function in the prompt (``router_model/toolsets.py``)."""
        plan = prep.plan
        name, read = await prep.toolset.choose(prep.query, [f.name for f in plan.functions],
                                               allow_none=plan.mode == "auto")
        prep.prompt_count += read
        if name is None:
            return None
        chosen = ToolPlan([plan.by_name()[name]], "required", plan.parallel)
        llm = self.model.llm

        def work(cancel: threading.Event) -> tuple[list[AnyToolCall], int]:
            tokens, _ = self.model.prompt_tokens(with_tools(prep.flat, chosen))
            prep.prompt_count += len(tokens) - len(prep.tokens)  # this prompt instead of the one without tools
            room = self.model.n_ctx - len(tokens)
            if room <= 0:
                raise context_exceeded(self.model, tokens)
            params = {**prep.call_params, "max_tokens": min(prep.call_params["max_tokens"], room)}
            calls, generated = generate_calls(llm, tokens, params, chosen, cancel)
            return tool_call_objects(calls, chosen), generated

        return await self.model.run(work)
