"""Where a node's requests go: a backend's model, address (or replicas), credentials, timeouts,
retries and cooldowns, and the embedded model's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from octogate.core.config_base import PathError, StrictModel

# Providers whose servers speak OpenAI's chat-completions protocol as-is; octogate proxies them
# directly (no translation layer), which is what keeps its overhead low.
OPENAI_COMPATIBLE_PROVIDERS = frozenset({"openai", "hosted_vllm", "openai_like", "sglang", "lm_studio"})
EMBEDDED_PROVIDER = "embedded"
DEFAULT_OPENAI_API_BASE = "https://api.openai.com/v1"


class CooldownConfig(StrictModel):
    """Circuit breaking per replica: skipped after ``failures`` failures in a row, for ``seconds``;
    then one probe request decides whether it is back."""

    failures: int = Field(default=3, ge=1)
    seconds: float = Field(default=30.0, gt=0)


class BackendConfig(StrictModel):
    """Where a node's requests go, written the way LiteLLM users write it.

    ``model`` is ``provider/model-name``: ``openai/...`` (with ``api_base`` for any
    OpenAI-compatible server: vLLM, SGLang, Ollama, LoRAX, llama.cpp server, OpenAI itself),
    ``embedded/...`` for the in-process CPU model, or any other LiteLLM provider string.
    """

    model: str = Field(min_length=3)
    api_base: str | list[str] | None = Field(default=None, description=(
        "the server's /v1 URL; a list is a set of replicas that share the load (least outstanding requests)"))
    api_key: str | None = None
    adapter: Literal["auto", "openai", "litellm", "embedded"] = "auto"
    timeout: float = Field(default=600.0, gt=0, description="seconds to wait for the upstream's next byte")
    connect_timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    retries: int = Field(default=2, ge=0, le=10, description=(
        "retries of a call that failed before its first byte (connect error, reset, 5xx, 408, 429, timeout), "
        "on another healthy replica first"))
    cooldown: CooldownConfig = Field(default_factory=lambda: CooldownConfig())
    tool_calls: Literal["native", "octogate"] = Field(
        default="native", description="native: requests' tools pass through to the backend; octogate: octogate "
        "makes the tool calls itself with structured outputs (json_schema response_format), for models without "
        "tool calling of their own (the embedded model always makes its own calls)")
    responses: Literal["translate", "native"] = Field(
        default="translate", description="POST /v1/responses: translate: answered through the node's chat "
        "completion (every backend); native: passed through to the upstream's own /v1/responses (vLLM, SGLang, "
        "OpenAI), the persona as instructions")
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

    @property
    def api_bases(self) -> list[str | None]:
        """The replicas' addresses as written (``[None]``: the provider's default)."""
        if isinstance(self.api_base, list):
            return list(self.api_base)
        return [self.api_base]

    @model_validator(mode="after")
    def _adapter_fits(self) -> BackendConfig:
        if self.kind == "embedded" and self.provider != EMBEDDED_PROVIDER:
            raise ValueError("adapter 'embedded' needs a model written embedded/<name>")
        if self.responses == "native" and self.kind != "openai":
            raise PathError(("responses",), "responses: native needs an OpenAI-compatible server (adapter 'openai')")
        if isinstance(self.api_base, list):
            if not self.api_base:
                raise PathError(("api_base",), "a list of replicas needs at least one address")
            if len(set(self.api_base)) != len(self.api_base):
                raise PathError(("api_base",), "a replica is listed twice")
            if self.kind == "embedded":
                raise PathError(("api_base",), "the embedded model runs in process: it has no replicas")
        return self
