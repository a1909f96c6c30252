"""The graph config: nodes, their backends and the server settings, loaded from YAML.

A graph file looks like::

    server: {api_keys: [env:OCTOGATE_KEY], max_body_bytes: 4194304}
    backends:
      llama3: {model: openai/meta-llama/Meta-Llama-3-8B-Instruct, api_base: env:LLAMA3_API_BASE}
    nodes:
      - name: math
        description: Mathematics, from arithmetic to proofs.
        token: 4
        persona: You are a mathematician ...
        params: {temperature: 0.2}
        backend: llama3                       # a name from `backends:` ...
      - name: law
        token: 8
        backend: {model: openai/AdaptLLM/law-chat, api_base: "http://law:8000/v1"}   # ... or inline

Every validation error is reported with the file, the key path (``nodes[3].backend.model``) and
the problem, so that a typo in a 17-node file is found in one read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from octogate.core.agent_config import AgentConfig, agent_problems
from octogate.core.backend_config import (  # noqa: F401  (re-exported: the graph's vocabulary in one place)
    DEFAULT_OPENAI_API_BASE,
    EMBEDDED_PROVIDER,
    OPENAI_COMPATIBLE_PROVIDERS,
    BackendConfig,
    CooldownConfig,
)
from octogate.core.config_base import (  # noqa: F401
    ConfigError,
    PathError,
    PathErrors,
    StrictModel,
    check_env_references,
    format_loc,
    resolve_secret,
)
from octogate.core.responses_config import ResponsesConfig
from octogate.core.server_config import (  # noqa: F401
    ApiKeyConfig,
    HistoryConfig,
    HttpLimitsConfig,
    RateLimitsConfig,
    RouteCacheConfig,
    ServerConfig,
)

TOOLSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

class RouterEngineConfig(StrictModel):
    """Where a router model runs and how it is asked: in process on the CPU, or on an SGLang server."""

    engine: Literal["embedded", "sglang"] = Field(
        default="embedded", description="embedded: llama.cpp in this process; sglang: an SGLang server")
    path: str | None = Field(default=None, description="embedded: a trained router directory (default: the shipped one)")
    threads: int | None = Field(default=None, ge=1, description="embedded: llama.cpp threads (default: all cores, up to 4)")
    base_url: str | None = Field(default=None, description="sglang: the server, e.g. http://router:30000; env:NAME allowed")
    api_key: str | None = None
    prompt_template: Literal["chatml", "phi3"] = Field(
        default="chatml", description="sglang: the chat markers the served router was trained with "
        "(chatml for routers trained here, phi3 for NexaAI/Octopus-v4)")
    mode: Literal["select", "select+reformat"] = "select"
    prior_correction: bool = Field(default=True, description=(
        "embedded: take the training data's node mix out of the scores, if the router carries one "
        "(`octogate router prior`); false scores as trained"))
    timeout: float = Field(default=2.0, gt=0, description=(
        "seconds before the fallback node takes the request; embedded select+reformat stops writing the "
        "argument at 90% of it and sends the chosen node the original query"))

    @model_validator(mode="after")
    def _engine_settings(self) -> RouterEngineConfig:
        if self.engine == "sglang" and not self.base_url:
            raise PathError(("base_url",), "engine 'sglang' needs base_url (the SGLang server)")
        if self.engine == "embedded" and self.base_url:
            raise PathError(("base_url",), "base_url is for engine 'sglang'; the embedded engine runs in process")
        if self.engine == "sglang" and "prior_correction" in self.model_fields_set:
            raise PathError(("prior_correction",), "prior_correction is for engine 'embedded'; "
                             "an SGLang server decides with its own scores")
        return self


class HopRouterConfig(RouterEngineConfig):
    """A node's own router: from this node, routing continues over its ``neighbours`` (Octopus v4)."""


class NodeConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    description: str = ""
    token: int | None = Field(default=None, ge=0, description="functional token index: <nexa_{token}>")
    persona: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="default generation parameters")
    backend: str | BackendConfig
    reformat: bool = Field(default=False, description="in select+reformat mode, receive the router's rewritten query")
    router: HopRouterConfig | None = None
    neighbours: list[str] = Field(default_factory=list, description="nodes this node's router may choose")
    fallbacks: list[str] = Field(default_factory=list, description=(
        "nodes that take a request, in order, when every replica of this node's backend has failed before answering"))

    @field_validator("params")
    @classmethod
    def _params_are_generation_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        forbidden = {"model", "messages", "stream"} & v.keys()
        if forbidden:
            raise ValueError(f"params may not set {', '.join(sorted(forbidden))}")
        return v


class RouterConfig(RouterEngineConfig):
    """The functional-token router behind ``model: <name>``."""

    name: str = Field(default="octopus", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    fallback: str = "general"
    max_hops: int = Field(default=3, ge=1, description="routing decisions per request at most (Octopus v4 graphs)")
    cache: RouteCacheConfig | None = None


class ToolsetConfig(StrictModel):
    """A registered toolset (Octopus v2): functions whose choice is one trained functional token.

    A request whose ``tools`` are all in a registered toolset (same names and parameters) is
    answered by the embedded model without the functions' descriptions in its prompt."""

    tools: list[dict[str, Any]] = Field(
        min_length=1, description="OpenAI tools ({type: function, function: {...}}), inline or a JSON file "
        "(a path relative to the graph file)")
    path: str | None = Field(default=None, description="trained tokens from `octogate router train --toolset NAME` "
                             "(default: the shipped router_model/trained/toolset-NAME); relative to the graph file")
    threads: int | None = Field(default=None, ge=1, description="llama.cpp threads (default: all cores, up to 4)")


class GraphConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig)
    history: HistoryConfig | None = None
    responses: ResponsesConfig | None = None  # stored responses of /v1/responses (core/responses_config.py)
    router: RouterConfig | None = None
    toolsets: dict[str, ToolsetConfig] = Field(default_factory=dict)
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    nodes: list[NodeConfig] = Field(min_length=1)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)  # core/agent_config.py

    @model_validator(mode="after")
    def _consistent(self) -> GraphConfig:
        problems = [PathError(loc, message) for loc, message in _name_problems(
            [n.model_dump(include={"name", "token", "backend"}) for n in self.nodes], set(self.backends))]
        seen = {node.name: i for i, node in enumerate(self.nodes)}
        has_token = {node.name for node in self.nodes if node.token is not None}
        for i, node in enumerate(self.nodes):
            if node.router is not None and not node.neighbours:
                problems.append(PathError(("nodes", i, "neighbours"), "a node with a router needs neighbours to route to"))
            if node.neighbours and node.router is None:
                problems.append(PathError(("nodes", i, "router"), "neighbours are only used by a node's own router"))
            for j, name in enumerate(node.neighbours):
                if name not in seen:
                    problems.append(PathError(("nodes", i, "neighbours", j), f"unknown node '{name}'"))
                elif name not in has_token:
                    problems.append(PathError(("nodes", i, "neighbours", j), f"node '{name}' has no token to be routed to"))
            for j, name in enumerate(node.fallbacks):
                if name not in seen:
                    problems.append(PathError(("nodes", i, "fallbacks", j), f"unknown node '{name}'"))
                elif name == node.name:
                    problems.append(PathError(("nodes", i, "fallbacks", j), "a node cannot be its own fallback"))
        if self.router is not None:
            if self.router.name in seen:
                problems.append(PathError(("router", "name"), f"'{self.router.name}' is also a node's name"))
            if self.router.fallback not in seen:
                problems.append(PathError(("router", "fallback"), f"unknown node '{self.router.fallback}'"))
            if not has_token:
                problems.append(PathError(("router",), "no node has a token: the router has nothing to choose from"))
        for name in self.toolsets:
            if not TOOLSET_NAME.match(name):
                problems.append(PathError(("toolsets", name), f"toolset names match {TOOLSET_NAME.pattern}"))
        problems += [PathError(loc, message) for loc, message in agent_problems(
            self.agents, set(seen), self.router.name if self.router else None)]
        if problems:
            raise PathErrors(problems)
        return self

    def fallback_chain(self, name: str) -> list[str]:
        """The nodes that take over from ``name``, in order: its fallbacks, then theirs (each once)."""
        by_name = {n.name: n for n in self.nodes}
        chain: list[str] = []
        todo = list(by_name[name].fallbacks)
        while todo:
            nxt = todo.pop(0)
            if nxt != name and nxt not in chain:
                chain.append(nxt)
                todo.extend(by_name[nxt].fallbacks)
        return chain

    def backend_of(self, node: NodeConfig) -> BackendConfig:
        return self.backends[node.backend] if isinstance(node.backend, str) else node.backend

    def backend_key(self, node: NodeConfig) -> str:
        """A stable identity for the node's backend, so nodes sharing one share its connections."""
        return f"backends.{node.backend}" if isinstance(node.backend, str) else f"nodes.{node.name}.backend"


def _name_problems(nodes: list[Any], backends: set[str]) -> list[tuple[tuple[str | int, ...], str]]:
    """Duplicate names and tokens, and unknown backends, over nodes as written (dicts): run even when
    other keys of the file are invalid, so that one read of check-config reports them all."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[str, int] = {}
    tokens: dict[int, str] = {}
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            continue
        name, token, backend = node.get("name"), node.get("token"), node.get("backend")
        if isinstance(name, str):
            if name in seen:
                problems.append((("nodes", i, "name"), f"duplicate node name '{name}' (also nodes[{seen[name]}])"))
            seen.setdefault(name, i)
        if isinstance(token, int) and not isinstance(token, bool):
            if token in tokens:
                problems.append((("nodes", i, "token"), f"token {token} is already used by node '{tokens[token]}'"))
            tokens.setdefault(token, str(name))
        if isinstance(backend, str) and backend not in backends:
            known = ", ".join(sorted(backends)) or "none defined"
            problems.append((("nodes", i, "backend"), f"unknown backend '{backend}' (backends: {known})"))
    return problems


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part == "str" or "BackendConfig" in part)


def _wrong_union_branch(err: Any) -> bool:
    """`backend: str | {...}`: pydantic reports a mismatch against each branch; keep the one the user meant."""
    tags = [p for p in err["loc"] if _is_union_tag(p)]
    if not tags:
        return False
    if tags[0] == "str":
        return isinstance(err["input"], dict)
    return err["type"] in {"model_type", "dict_type"} and isinstance(err["input"], str)


def _drop_union_tags(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # pydantic adds the union member's name ("str", "BackendConfig") to the path; users never wrote it.
    return tuple(p for p in loc if not _is_union_tag(p))


def parse_graph(data: Any, source: str = "<config>", environ: dict[str, str] | None = None) -> GraphConfig:
    """The graph, or a ConfigError listing every problem of the file (key path and what is wrong),
    unset ``env:`` variables included."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'nodes' list")
    lines: list[str] = []
    graph = None
    try:
        graph = GraphConfig.model_validate(data)
    except ValidationError as exc:
        consistency_checked = False
        for err in exc.errors(include_url=False):
            ctx_err = (err.get("ctx") or {}).get("error")
            for path_err in ctx_err.errors if isinstance(ctx_err, PathErrors) else [ctx_err]:
                if isinstance(path_err, PathError):
                    # a nested model's error knows its key relative to that model: prefix where it sits
                    loc = _drop_union_tags(err["loc"]) + path_err.loc
                    lines.append(f"{source}: {format_loc(loc)}: {path_err.message}")
            if isinstance(ctx_err, PathErrors):
                consistency_checked = True
                continue
            if isinstance(ctx_err, PathError) or _wrong_union_branch(err):
                continue
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}: {format_loc(_drop_union_tags(err['loc']))}: {msg}")
        if not consistency_checked:  # other keys failed first: still report duplicate names and tokens
            nodes = data.get("nodes") if isinstance(data.get("nodes"), list) else []
            backends = data.get("backends") if isinstance(data.get("backends"), dict) else {}
            lines += [f"{source}: {format_loc(loc)}: {msg}" for loc, msg in _name_problems(nodes, set(backends))]
    lines += [f"{source}: {line}" for line in check_env_references(data, environ)]
    if lines:
        # A union (backend: str | {...}) reports once per member; keep each line once, in order.
        raise ConfigError("\n".join(dict.fromkeys(lines)))
    assert graph is not None
    return graph


def load_graph(path: str | os.PathLike[str]) -> GraphConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    _read_toolset_files(data, p)
    return parse_graph(data, str(p))


def _read_toolset_files(data: Any, source: Path) -> None:
    """Toolset ``tools`` given as a JSON file are read in place; relative paths are the graph file's."""
    toolsets = data.get("toolsets") if isinstance(data, dict) else None
    if not isinstance(toolsets, dict):
        return
    for name, ts in toolsets.items():
        if not isinstance(ts, dict):
            continue
        if isinstance(ts.get("tools"), str):
            file = source.parent / ts["tools"]
            try:
                ts["tools"] = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{source}: toolsets.{name}.tools: cannot read {file}: {exc}") from None
        if isinstance(ts.get("path"), str):
            ts["path"] = str(source.parent / ts["path"])


CONFIG_ENV = "OCTOGATE_CONFIG"
DEFAULT_CONFIG = Path("config/default.yaml")
# The default graph shipped beside the packages (a source checkout or an editable install).
_SHIPPED_DEFAULT = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    if DEFAULT_CONFIG.is_file() or not _SHIPPED_DEFAULT.is_file():
        return DEFAULT_CONFIG
    return _SHIPPED_DEFAULT
