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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# Providers whose servers speak OpenAI's chat-completions protocol as-is; octogate proxies them
# directly (no translation layer), which is what keeps its overhead low.
OPENAI_COMPATIBLE_PROVIDERS = frozenset({"openai", "hosted_vllm", "openai_like", "sglang", "lm_studio"})
EMBEDDED_PROVIDER = "embedded"
DEFAULT_OPENAI_API_BASE = "https://api.openai.com/v1"
TOOLSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ConfigError(Exception):
    """A graph file that cannot be used; the message is meant for a human."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_secret(value: str | None) -> str | None:
    """Resolve ``env:NAME`` to the environment variable's value (None when unset)."""
    if value is None or not value.startswith("env:"):
        return value
    return os.environ.get(value[4:]) or None


class BackendConfig(_Strict):
    """Where a node's requests go, written the way LiteLLM users write it.

    ``model`` is ``provider/model-name``: ``openai/...`` (with ``api_base`` for any
    OpenAI-compatible server: vLLM, SGLang, Ollama, LoRAX, llama.cpp server, OpenAI itself),
    ``embedded/...`` for the in-process CPU model, or any other LiteLLM provider string.
    """

    model: str = Field(min_length=3)
    api_base: str | None = None
    api_key: str | None = None
    adapter: Literal["auto", "openai", "litellm", "embedded"] = "auto"
    timeout: float = Field(default=600.0, gt=0, description="seconds to wait for the upstream's next byte")
    connect_timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    tool_calls: Literal["native", "octogate"] = Field(
        default="native", description="native: requests' tools pass through to the backend; octogate: octogate "
        "makes the tool calls itself with structured outputs (json_schema response_format), for models without "
        "tool calling of their own (the embedded model always makes its own calls)")
    # Embedded-model settings (ignored by remote adapters).
    model_path: str | None = None
    n_ctx: int = Field(default=2048, ge=128)
    n_threads: int | None = Field(default=None, ge=1)
    weights: Literal["as_is", "q8_0"] = Field(
        default="as_is", description="as_is: the file as it is; q8_0: run a Q8_0 copy of a Q4/Q5 GGUF (derived "
        "once into the cache): long prompts process about 1.6x faster on AVX2 CPUs, generation is about 1.1x slower")

    @field_validator("model")
    @classmethod
    def _has_provider(cls, v: str) -> str:
        provider, sep, name = v.partition("/")
        if not sep or not provider or not name:
            raise ValueError(
                f"'{v}' is not provider/model: write e.g. openai/Qwen2.5-Math-7B-Instruct "
                "or embedded/smollm2-135m-instruct"
            )
        return v

    @property
    def provider(self) -> str:
        return self.model.partition("/")[0]

    @property
    def upstream_model(self) -> str:
        """The model name the upstream server knows (the part after the provider)."""
        return self.model.partition("/")[2]

    @property
    def kind(self) -> Literal["openai", "litellm", "embedded"]:
        if self.adapter != "auto":
            return self.adapter
        if self.provider == EMBEDDED_PROVIDER:
            return "embedded"
        if self.provider in OPENAI_COMPATIBLE_PROVIDERS:
            return "openai"
        return "litellm"

    @model_validator(mode="after")
    def _adapter_fits(self) -> BackendConfig:
        if self.kind == "embedded" and self.provider != EMBEDDED_PROVIDER:
            raise ValueError("adapter 'embedded' needs a model written embedded/<name>")
        return self


class RouterEngineConfig(_Strict):
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
            raise _PathError(("base_url",), "engine 'sglang' needs base_url (the SGLang server)")
        if self.engine == "embedded" and self.base_url:
            raise _PathError(("base_url",), "base_url is for engine 'sglang'; the embedded engine runs in process")
        if self.engine == "sglang" and "prior_correction" in self.model_fields_set:
            raise _PathError(("prior_correction",), "prior_correction is for engine 'embedded'; "
                             "an SGLang server decides with its own scores")
        return self


class HopRouterConfig(RouterEngineConfig):
    """A node's own router: from this node, routing continues over its ``neighbours`` (Octopus v4)."""


class NodeConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    description: str = ""
    token: int | None = Field(default=None, ge=0, description="functional token index: <nexa_{token}>")
    persona: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="default generation parameters")
    backend: str | BackendConfig
    reformat: bool = Field(default=False, description="in select+reformat mode, receive the router's rewritten query")
    router: HopRouterConfig | None = None
    neighbours: list[str] = Field(default_factory=list, description="nodes this node's router may choose")

    @field_validator("params")
    @classmethod
    def _params_are_generation_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        forbidden = {"model", "messages", "stream"} & v.keys()
        if forbidden:
            raise ValueError(f"params may not set {', '.join(sorted(forbidden))}")
        return v


class ServerConfig(_Strict):
    api_keys: list[str] = Field(default_factory=list, description="accepted bearer keys; env:NAME allowed")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    trace_content: bool = Field(default=False, description="put prompt and completion text in trace spans "
                                "(OCTOGATE_TRACE_CONTENT=true does the same)")

    def resolved_api_keys(self) -> list[str]:
        keys = [resolve_secret(k) for k in self.api_keys]
        keys += [k.strip() for k in os.environ.get("OCTOGATE_API_KEYS", "").split(",")]
        return [k for k in keys if k]


class HistoryConfig(_Strict):
    """Conversations kept in Redis (requests that carry a conversation id)."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="env:NAME allowed; OCTOGATE_REDIS_URL overrides")
    max_turns: int = Field(default=20, ge=1, description="turns prepended at most")
    max_tokens: int = Field(default=3000, ge=1, description="approximate tokens of history prepended at most")
    ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1, description="a conversation expires after this long unused")
    key_prefix: str = Field(default="octogate:conv:", min_length=1)
    op_timeout: float = Field(default=0.5, gt=0, description="seconds one Redis operation may take")

    def resolved_url(self) -> str:
        return os.environ.get("OCTOGATE_REDIS_URL") or resolve_secret(self.redis_url) or "redis://127.0.0.1:6379/0"


class RouteCacheConfig(_Strict):
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="env:NAME allowed; OCTOGATE_REDIS_URL overrides")
    ttl_seconds: int = Field(default=3600, ge=1)
    op_timeout: float = Field(default=0.2, gt=0)

    def resolved_url(self) -> str:
        return os.environ.get("OCTOGATE_REDIS_URL") or resolve_secret(self.redis_url) or "redis://127.0.0.1:6379/0"


class RouterConfig(RouterEngineConfig):
    """The functional-token router behind ``model: <name>``."""

    name: str = Field(default="octopus", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    fallback: str = "general"
    max_hops: int = Field(default=3, ge=1, description="routing decisions per request at most (Octopus v4 graphs)")
    cache: RouteCacheConfig | None = None


class ToolsetConfig(_Strict):
    """A registered toolset (Octopus v2): functions whose choice is one trained functional token.

    A request whose ``tools`` are all in a registered toolset (same names and parameters) is
    answered by the embedded model without the functions' descriptions in its prompt."""

    tools: list[dict[str, Any]] = Field(
        min_length=1, description="OpenAI tools ({type: function, function: {...}}), inline or a JSON file "
        "(a path relative to the graph file)")
    path: str | None = Field(default=None, description="trained tokens from `octogate router train --toolset NAME` "
                             "(default: the shipped router_model/trained/toolset-NAME); relative to the graph file")
    threads: int | None = Field(default=None, ge=1, description="llama.cpp threads (default: all cores, up to 4)")


class GraphConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    history: HistoryConfig | None = None
    router: RouterConfig | None = None
    toolsets: dict[str, ToolsetConfig] = Field(default_factory=dict)
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    nodes: list[NodeConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> GraphConfig:
        seen: dict[str, int] = {}
        tokens: dict[int, str] = {}
        for i, node in enumerate(self.nodes):
            if node.name in seen:
                raise _PathError(("nodes", i, "name"), f"duplicate node name '{node.name}' (also nodes[{seen[node.name]}])")
            seen[node.name] = i
            if node.token is not None:
                if node.token in tokens:
                    raise _PathError(
                        ("nodes", i, "token"), f"token {node.token} is already used by node '{tokens[node.token]}'"
                    )
                tokens[node.token] = node.name
            if isinstance(node.backend, str) and node.backend not in self.backends:
                known = ", ".join(sorted(self.backends)) or "none defined"
                raise _PathError(
                    ("nodes", i, "backend"), f"unknown backend '{node.backend}' (backends: {known})"
                )
        for i, node in enumerate(self.nodes):
            if node.router is not None and not node.neighbours:
                raise _PathError(("nodes", i, "neighbours"), "a node with a router needs neighbours to route to")
            if node.neighbours and node.router is None:
                raise _PathError(("nodes", i, "router"), "neighbours are only used by a node's own router")
            for j, name in enumerate(node.neighbours):
                if name not in seen:
                    raise _PathError(("nodes", i, "neighbours", j), f"unknown node '{name}'")
                if self.nodes[seen[name]].token is None:
                    raise _PathError(("nodes", i, "neighbours", j), f"node '{name}' has no token to be routed to")
        if self.router is not None:
            if self.router.name in seen:
                raise _PathError(("router", "name"), f"'{self.router.name}' is also a node's name")
            if self.router.fallback not in seen:
                raise _PathError(("router", "fallback"), f"unknown node '{self.router.fallback}'")
            if not tokens:
                raise _PathError(("router",), "no node has a token: the router has nothing to choose from")
        for name in self.toolsets:
            if not TOOLSET_NAME.match(name):
                raise _PathError(("toolsets", name), f"toolset names match {TOOLSET_NAME.pattern}")
        return self

    def backend_of(self, node: NodeConfig) -> BackendConfig:
        return self.backends[node.backend] if isinstance(node.backend, str) else node.backend

    def backend_key(self, node: NodeConfig) -> str:
        """A stable identity for the node's backend, so nodes sharing one share its connections."""
        return f"backends.{node.backend}" if isinstance(node.backend, str) else f"nodes.{node.name}.backend"


class _PathError(ValueError):
    """A cross-field error that knows which key it is about."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


def format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


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


def parse_graph(data: Any, source: str = "<config>") -> GraphConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'nodes' list")
    try:
        return GraphConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, _PathError):
                # a nested model's error knows its key relative to that model: prefix where it sits
                lines.append(f"{source}: {format_loc(_drop_union_tags(err['loc']) + ctx_err.loc)}: {ctx_err.message}")
                continue
            if _wrong_union_branch(err):
                continue
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}: {format_loc(_drop_union_tags(err['loc']))}: {msg}")
        # A union (backend: str | {...}) reports once per member; keep each line once, in order.
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


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
