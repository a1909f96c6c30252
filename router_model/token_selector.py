"""A trained artifact in llama.cpp: pick the best of some functional tokens for a query, in one step.

Both the graph router (``embedded_engine.py``: which node) and registered toolsets
(``toolsets.py``: which function) decide this way:

1. start-up loads the base GGUF with the artifact's LoRA merged in (``merged_model.py``) in
   embedding mode and evaluates the artifact's fixed prompt prefix once;
2. a decision drops whatever followed the prefix from the KV cache and evaluates only the query
   and the short suffix that opens the answer turn (prefix reuse);
3. the final hidden state at the answer position is scored against the functional-token rows
   (``functional_tokens.npy``) of the candidates only, plus the artifact's prior correction if
   it has one (``prior.py``); the highest wins. Only candidates can win, so the answer always
   names one of them.

Not thread-safe (a llama.cpp context): the owner runs it on one thread.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from octogate.core.llama_runtime import sha256_of
from octogate.router_model.artifact import (
    RouterArtifact,
    RouterArtifactError,
    load_router,
)
from octogate.router_model.merged_model import merged_model_path
from octogate.router_model.prompt_tokens import RouterPromptTokens


class SelectorError(Exception):
    """The artifact cannot be loaded or llama.cpp failed; the message says which and why."""


class TokenSelector:
    def __init__(self, artifact_path: str | Path, *, base_model: str | Path | None = None,
                 n_threads: int | None = None, extra_context: int = 0):
        """``extra_context``: room to keep after the query for generating (the router's argument)."""
        self.path = Path(artifact_path)
        self.base_model = Path(base_model) if base_model else None
        self.n_threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.extra_context = extra_context
        self.llm = None
        self.artifact: RouterArtifact | None = None

    def load(self, wanted: dict[int, str] | None = None) -> None:
        """Blocking. ``wanted`` (token -> label) must match what the artifact was trained on."""
        import llama_cpp

        from octogate.core.llama_runtime import bundled_gguf_path

        try:
            artifact = load_router(self.path)
            if wanted is not None:
                artifact.check_nodes(wanted)
        except RouterArtifactError as exc:
            raise SelectorError(str(exc)) from None
        base = self.base_model or bundled_gguf_path()
        if sha256_of(base) != artifact.base_sha256:
            raise SelectorError(f"{self.path} was trained on another base model than {base}")
        prompt = artifact.manifest["prompt"]
        n_ctx = 64 + len(prompt["prefix"]) * 2 + artifact.max_query_tokens + self.extra_context + 32
        try:
            model = merged_model_path(artifact, Path(base))
        except (OSError, ValueError) as exc:
            raise SelectorError(f"could not prepare {self.path.name}: {exc}") from None
        self.llm = llama_cpp.Llama(
            model_path=str(model), embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
            n_threads=self.n_threads, n_threads_batch=self.n_threads, verbose=False,
        )
        self.artifact = artifact
        self.prompt = RouterPromptTokens(self.llm.tokenize, artifact.max_query_tokens,
                                         prefix_text=prompt["prefix"], suffix_text=prompt["suffix"])
        self._row_of = artifact.row_index()
        self._dim = artifact.rows.shape[1]
        self._batch = llama_cpp._internals.LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=1, verbose=False)
        self._decode(self.prompt.prefix, 0)
        self.n_prefix = len(self.prompt.prefix)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def rows(self, tokens: Sequence[int]) -> np.ndarray:
        """The functional-token rows of ``tokens``, in that order (keep it for repeated decisions)."""
        return np.ascontiguousarray(self.artifact.rows[[self._row_of[t] for t in tokens]])

    def bias(self, tokens: Sequence[int]) -> np.ndarray:
        """What the artifact adds to the scores of ``tokens``, in that order: its prior correction, or zeros."""
        return self.artifact.score_bias(list(tokens))

    def _decode(self, ids: list[int], n_past: int) -> None:
        llm = self.llm
        llm._ctx.kv_cache_seq_rm(0, n_past, -1)
        # In embedding mode llama.cpp outputs every token anyway (and warns when not asked to).
        self._batch.set_batch(ids, n_past, logits_all=True)
        llm._ctx.decode(self._batch)
        llm.input_ids[n_past:n_past + len(ids)] = ids
        llm.n_tokens = n_past + len(ids)

    def _hidden(self) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_embeddings_ith(self.llm.ctx, -1)
        if not ptr:
            raise SelectorError("llama.cpp returned no hidden state for the answer position")
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._dim,))

    def scores(self, query: str, rows: np.ndarray, bias: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
        """Each candidate row's score for ``query`` (plus ``bias``), and the ids evaluated after the prefix."""
        if self.llm is None:
            raise SelectorError(f"{self.path.name} used before load()")
        ids = self.prompt.query(query)
        self._decode(ids, self.n_prefix)
        scores = rows @ self._hidden()
        return (scores if bias is None else scores + bias), ids
