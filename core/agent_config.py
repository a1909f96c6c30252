"""The graph's ``agents:`` block: models that answer by looping over tools (Husky, arXiv 2406.06469).

::

    agents:
      husky:
        action: {engine: embedded}            # the shipped action generator (agents/trained/husky-action),
                                              # or {engine: sglang, base_url: env:HUSKY_ACTION_URL}
        experts: {code: general, math: general, search: general, commonsense: general}
        search: {kind: local}                 # or {kind: searxng, url: http://searxng:8080}
        executor: {kind: local}               # or {kind: http, url: http://sandbox:8080/run}
        max_steps: 8

An agent's name is a model clients call, like a node's; each expert is any node of the graph,
asked with its persona.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from octogate.core.config_base import PathError, StrictModel

TOOLS = ("code", "math", "search", "commonsense", "finish")


class ActionGeneratorConfig(StrictModel):
    """The functional-token model that picks each step's tool and writes its sub-task: in process on
    the CPU, or on an SGLang server (asked like a router's, ``agents/action_sglang.py``)."""

    engine: Literal["embedded", "sglang"] = Field(
        default="embedded", description="embedded: llama.cpp in this process; sglang: an SGLang server")
    path: str | None = Field(default=None, description="embedded: a trained action generator (default: the shipped one)")
    threads: int | None = Field(default=None, ge=1, description="embedded: llama.cpp threads")
    base_url: str | None = Field(default=None, description="sglang: the server, e.g. http://husky-action:30000; "
                                 "env:NAME allowed")
    api_key: str | None = Field(default=None, description="sglang: sent as a bearer token; env:NAME allowed")
    prompt_template: Literal["chatml", "phi3"] = Field(
        default="chatml", description="sglang: the chat markers the served model was trained with (chatml here)")
    max_subtask_tokens: int = Field(default=48, ge=4, le=256)
    timeout: float = Field(default=20.0, gt=0, description="seconds for one decision (token and sub-task)")

    @model_validator(mode="after")
    def _engine_settings(self) -> ActionGeneratorConfig:
        if self.engine == "sglang":
            if not self.base_url:
                raise PathError(("base_url",), "engine 'sglang' needs base_url (the SGLang server)")
            for key in ("path", "threads"):
                if getattr(self, key) is not None:
                    raise PathError((key,), f"{key} is for engine 'embedded'; an SGLang server loads its own model")
        else:
            # by value, not by presence, so a graph written back out with its defaults (dumped) still loads:
            # the embedded engine's own template is ChatML, the one its artifact was trained under
            for key in ("base_url", "api_key"):
                if getattr(self, key) is not None:
                    raise PathError((key,), f"{key} is for engine 'sglang'; the embedded engine runs in process")
            if self.prompt_template != "chatml":
                raise PathError(("prompt_template",), "prompt_template is for engine 'sglang'; the embedded "
                                "engine uses the prompt its artifact was trained under (ChatML)")
        return self


class ExpertsConfig(StrictModel):
    """The node that serves each tool's expert (any node of the graph; its persona applies)."""

    code: str = "general"
    math: str = "general"
    search: str = "general"
    commonsense: str = "general"
    answer: str | None = Field(default=None, description="the node that writes the final answer (default: commonsense's)")


class SearchConfig(StrictModel):
    kind: Literal["local", "searxng"] = "local"
    path: str | None = Field(default=None, description="local: a folder of .txt/.jsonl documents (default: the shipped one)")
    url: str | None = Field(default=None, description="searxng: the instance, e.g. http://searxng:8080")
    results: int = Field(default=3, ge=1, le=20)
    max_chars: int = Field(default=1200, ge=100, description="the step's output is cut to this many characters")
    timeout: float = Field(default=5.0, gt=0)


class ExecutorConfig(StrictModel):
    """Where ``[code]`` steps run: a local sandbox (bubblewrap) or a remote sandbox service."""

    kind: Literal["local", "http"] = "local"
    url: str | None = Field(default=None, description="http: the service that runs code (POST, JSON in and out)")
    api_key: str | None = None
    timeout: float = Field(default=10.0, gt=0, description="wall-clock seconds per run")
    cpu_seconds: int = Field(default=5, ge=1)
    memory_mb: int = Field(default=512, ge=32)
    max_processes: int = Field(default=32, ge=1)
    disk_mb: int = Field(default=16, ge=1, description="size of the private /tmp and working directory (each)")
    output_bytes: int = Field(default=4000, ge=100)
    python: str | None = Field(default=None, description="local: the interpreter (default: /usr/local/bin/python3 or /usr/bin/python3)")


class AgentConfig(StrictModel):
    kind: Literal["husky"] = "husky"
    description: str = "Husky: multi-step answers with code, search and specialist reasoning."
    action: ActionGeneratorConfig = Field(default_factory=ActionGeneratorConfig)
    experts: ExpertsConfig = Field(default_factory=ExpertsConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    max_steps: int = Field(default=8, ge=1, le=32)
    expert_max_tokens: int = Field(default=256, ge=16)


def agent_problems(agents: dict[str, AgentConfig], node_names: set[str],
                   router_name: str | None) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, problem) for each agent that names an unknown node or clashes with a model name."""
    problems = []
    for name, agent in agents.items():
        if name in node_names:
            problems.append((("agents", name), f"'{name}' is also a node's name"))
        if name == router_name:
            problems.append((("agents", name), f"'{name}' is also the router's name"))
        for role in ("code", "math", "search", "commonsense", "answer"):
            node = getattr(agent.experts, role)
            if node is not None and node not in node_names:
                problems.append((("agents", name, "experts", role), f"unknown node '{node}'"))
        if agent.executor.kind == "http" and not agent.executor.url:
            problems.append((("agents", name, "executor", "url"), "an http executor needs a url"))
        if agent.search.kind == "searxng" and not agent.search.url:
            problems.append((("agents", name, "search", "url"), "a searxng search needs a url"))
    return problems
