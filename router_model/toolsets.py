"""Registered toolsets: Octopus v2's functional tokens for a fixed set of functions.

A graph may declare toolsets (``toolsets:`` in the graph file, ``core.graph.ToolsetConfig``):
named lists of OpenAI tools. ``octogate router train --toolset NAME`` trains one functional token
per function, plus one for "no call", from examples (``{"query", "function"}``, ``function``
null for a message that needs none), with the same trainer as the graph router
(``router_model/training/``) under this module's short prompt, which names no function.

At run time a request to an embedded node whose ``tools`` are all in a registered toolset (same
names, same parameter schemas; descriptions may differ) is served in two steps:

1. **selection, one token**: the user's last message, under the short prompt, through the
   toolset's model (``router_model.token_selector``); the highest-scoring token among the
   offered functions (and "no call" under ``tool_choice: auto``) wins. No function description is
   in this context: that is the paper's context saving;
2. **arguments**: the embedded chat model writes the chosen function's arguments under its
   schema's grammar, with only that one function in its prompt (``adapters/embedded.py``).

Other requests (tools outside every toolset, a named ``tool_choice``, the extension
``"octogate": {"tool_calls": "constrained"}``) take the general path that lists every offered
function in the prompt.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from octogate.core.errors import UpstreamError
from octogate.core.llama_runtime import LlamaThread
from octogate.core.tool_plan import Function, ToolPlan, plan_tools
from octogate.router_model.protocol import chatml_split
from octogate.router_model.token_selector import SelectorError, TokenSelector

if TYPE_CHECKING:
    from octogate.core.graph import GraphConfig

#: The label of the "answer without a call" token (not a valid function name, so never a clash).
NO_CALL = "(no call)"
TOOLSET_SYSTEM_PROMPT = ("You are an assistant that can call functions. Answer the user's message with the "
                         "functional token of the function to call, or the one for no call.")
TOOLSET_PREFIX, TOOLSET_SUFFIX = chatml_split(TOOLSET_SYSTEM_PROMPT)
SHIPPED_DIR = Path(__file__).resolve().parent / "trained"


class ToolsetError(ValueError):
    """A toolset that cannot be used; the message names it and says why."""


def signature(function: Function) -> str:
    """What must match between a request's tool and a registered one: name and parameters."""
    return json.dumps([function.name, function.schema], sort_keys=True, separators=(",", ":"))


@dataclass
class Toolset:
    name: str
    functions: list[Function]
    path: Path
    threads: int | None = None

    @classmethod
    def from_config(cls, name: str, tools: list[dict[str, Any]], path: str | None,
                    threads: int | None = None) -> Toolset:
        try:
            plan = plan_tools({"tools": tools, "tool_choice": "required"})
        except UpstreamError as exc:
            raise ToolsetError(f"toolsets.{name}.{exc.param or 'tools'}: {exc.message}") from None
        return cls(name, plan.functions, Path(path) if path else SHIPPED_DIR / f"toolset-{name}", threads)

    def labels(self) -> dict[int, str]:
        """Token index -> function name; the last token is "no call"."""
        return {**{i: f.name for i, f in enumerate(self.functions)}, len(self.functions): NO_CALL}

    def covers(self, plan: ToolPlan) -> bool:
        own = {signature(f) for f in self.functions}
        return all(signature(f) in own for f in plan.functions)



class ToolsetSelector:
    """A toolset's trained tokens, loaded in llama.cpp on a thread of their own."""

    def __init__(self, toolset: Toolset):
        self.toolset = toolset
        self.selector = TokenSelector(toolset.path, n_threads=toolset.threads)
        self._thread: LlamaThread | None = None
        self._token_of = {label: t for t, label in toolset.labels().items()}

    async def start(self) -> None:
        self._thread = LlamaThread(f"octogate-toolset-{self.toolset.name}")
        try:
            await self._thread.run(self.selector.load, self.toolset.labels())
        except SelectorError as exc:
            raise ToolsetError(f"toolset {self.toolset.name!r}: {exc}") from None

    async def aclose(self) -> None:
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None
        self.selector.close()

    def _choose(self, query: str, names: tuple[str, ...], allow_none: bool) -> tuple[str | None, int]:
        labels = [*names, NO_CALL] if allow_none else list(names)
        tokens = [self._token_of[label] for label in labels]
        scores, ids = self.selector.scores(query, self.selector.rows(tokens), self.selector.bias(tokens))
        best = labels[int(np.argmax(scores))]
        return (None if best == NO_CALL else best), self.selector.n_prefix + len(ids)

    async def choose(self, query: str, names: list[str], allow_none: bool) -> tuple[str | None, int]:
        """The function to call among ``names`` (None: answer without a call), and the prompt tokens read."""
        if self._thread is None:
            raise UpstreamError(503, f"toolset {self.toolset.name!r} is not loaded", code="toolset_not_loaded")
        return await self._thread.run(self._choose, query, tuple(names), allow_none)


class ToolsetRegistry:
    """The graph's toolsets; ``match`` finds the one a request's tools belong to."""

    def __init__(self, toolsets: list[Toolset]):
        self.selectors = [ToolsetSelector(t) for t in toolsets]

    @classmethod
    def from_graph(cls, graph: GraphConfig) -> ToolsetRegistry:
        """The toolsets the graph can use. Every declared one is checked, but none is kept (so none is
        loaded) when no node is served by the embedded model, the only backend that uses them."""
        toolsets = [Toolset.from_config(name, ts.tools, ts.path, ts.threads) for name, ts in graph.toolsets.items()]
        if not any(graph.backend_of(node).kind == "embedded" for node in graph.nodes):
            return cls([])
        return cls(toolsets)

    def __bool__(self) -> bool:
        return bool(self.selectors)

    async def start(self) -> None:
        for selector in self.selectors:  # one at a time: see gateway.nodes.NodeTable.start
            await selector.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.selectors), return_exceptions=True)

    def match(self, plan: ToolPlan) -> ToolsetSelector | None:
        for selector in self.selectors:
            if selector.toolset.covers(plan):
                return selector
        return None
