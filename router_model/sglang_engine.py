"""Routing on a GPU: the router model served by SGLang, asked through SGLang's native ``/generate``.

The native API rather than SGLang's OpenAI one because the router must see, byte for byte, the
prompt it was fine-tuned on: here the chat template is rendered client-side (``prompt_template``)
and sent as ``text``, so no server-side template can drift from it, and the fixed system prompt is
a shared prefix that SGLang's radix cache keeps across requests.

Each decision is one ``POST /generate``::

    {"text": "<rendered router_messages(query)>",
     "sampling_params": {"max_new_tokens": N, "temperature": 0, "regex": "<RouterGrammar.regex(mode)>",
                         "skip_special_tokens": false, "spaces_between_special_tokens": false}}

answered with ``{"text": "<nexa_4>('...')<nexa_end>", "meta_info": {"finish_reason": {"type": "stop", ...}, ...}}``.

- ``regex`` confines decoding to this graph's tokens and the escaped-argument grammar, so the answer
  always parses (unless it was cut off by ``max_new_tokens``).
- ``skip_special_tokens`` is off because the functional tokens are usually added to the router's
  tokenizer as special tokens; left on, SGLang would delete them from ``text``.
- No ``stop`` is sent: the grammar itself ends generation after ``<nexa_end>`` (the model may then
  only emit its end-of-sequence token, which SGLang trims). A ``stop`` string would be trimmed from
  ``text`` and take ``<nexa_end>`` with it. For the same reason ``<nexa_end>`` must not be registered
  as an end-of-sequence token of the served model.
- ``max_new_tokens`` is the longest token-plus-punctuation frame counted as one token per
  character, plus ``max_argument_tokens`` in "select+reformat" mode, plus one for the end token.

The query goes into the prompt verbatim. A query that imitates chat-template markers can at worst
steer the choice among this graph's nodes, which the grammar bounds and which a client can do
openly anyway by naming a node.

``SGLangClient`` (the session, ``/generate``, ``/health``, failures) is apart from the router's
prompt and grammar so that Husky's action generator (``agents/action_sglang.py``), the same kind
of functional-token model, is asked the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson

from octogate.router_model.engine import RouterEngineError
from octogate.router_model.protocol import (
    MODES,
    Mode,
    RouterDecision,
    RouterGrammar,
    RouterOutputError,
    chatml_prompt,
    parse_router_output,
    router_messages,
)

PromptTemplate = Callable[[list[dict[str, str]]], str]
GRAMMAR_BACKENDS = ("xgrammar", "outlines", "llguidance")  # SGLang's --grammar-backend values that can run a regex


def phi3_prompt(messages: list[dict[str, str]]) -> str:
    """``messages`` with Phi-3's markers, the template of NexaAI/Octopus-v4 (a Phi-3-mini fine-tune)."""
    turns = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return turns + "<|assistant|>\n"


# The template must be the one the served router was fine-tuned with: ChatML for routers trained here.
PROMPT_TEMPLATES: dict[str, PromptTemplate] = {"chatml": chatml_prompt, "phi3": phi3_prompt}


def sglang_launch_command(
    model_path: str,
    *,
    port: int = 30000,
    grammar_backend: str = "xgrammar",
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
    python: str = "python",
) -> list[str]:
    """The argv that serves a router model with SGLang; it needs a CUDA GPU and ``pip install sglang``."""
    if grammar_backend not in GRAMMAR_BACKENDS:
        raise ValueError(f"grammar_backend must be one of {', '.join(GRAMMAR_BACKENDS)}: the router needs regex decoding")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, not {port}")
    return [
        python, "-m", "sglang.launch_server",
        "--model-path", model_path,
        "--host", host,
        "--port", str(port),
        "--grammar-backend", grammar_backend,
        *extra,
    ]


class SGLangClient:
    """One SGLang server's native API over one pooled keep-alive session: ``/generate`` for one
    prompt, ``/health`` and ``/get_model_info``. Every failure is a ``RouterEngineError`` whose
    message names the server by ``role`` ("SGLang router at URL ...")."""

    def __init__(
        self,
        base_url: str,
        *,
        role: str = "router",
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_connections: int = 64,
        api_key: str | None = None,
    ):
        if timeout <= 0 or connect_timeout <= 0 or max_connections < 1:
            raise ValueError("timeout, connect_timeout and max_connections must be positive")
        self.base_url = base_url.rstrip("/")
        self.role = role
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    @property
    def who(self) -> str:
        return f"SGLang {self.role} at {self.base_url}"

    async def start(self) -> None:
        # SGLang serves through uvicorn, which drops connections idle for 5 s; closing ours after 4 s
        # keeps the pool from handing out a socket the server is closing at that moment.
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=4, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"{type(self).__name__} used before start()")
        return self._session

    async def generate(self, text: str, sampling_params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``text`` and ``meta_info.finish_reason`` of one ``POST /generate`` for one prompt."""
        body = orjson.dumps({"text": text, "sampling_params": sampling_params})
        return self._read(await self._generate(body))

    async def check_ready(self) -> str:
        """``ok (<model path>)`` when the server is up, for readiness probes and start-up logs."""
        try:
            async with self.session.get(f"{self.base_url}/health", headers=self.headers) as resp:
                if resp.status != 200:
                    raise RouterEngineError(f"{self.who} is not healthy (HTTP {resp.status})", status=resp.status)
            async with self.session.get(f"{self.base_url}/get_model_info", headers=self.headers) as resp:
                info = orjson.loads(await resp.read()) if resp.status == 200 else {}
        except (asyncio.TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise RouterEngineError(f"{self.who} is unreachable: {exc or type(exc).__name__}") from None
        return f"ok ({info.get('model_path', 'model unknown')})" if isinstance(info, dict) else "ok"

    async def _generate(self, body: bytes) -> Any:
        url = f"{self.base_url}/generate"
        for attempt in (1, 2):
            try:
                async with self.session.post(url, data=body, headers=self.headers) as resp:
                    raw = await resp.read()
                    if resp.status >= 400:
                        raise RouterEngineError(f"{self.who} answered HTTP {resp.status}: {_error_message(raw)}",
                                                status=resp.status)
                break
            except aiohttp.ServerDisconnectedError:
                # A pooled connection the server closed just as we reused it: /generate at temperature 0
                # has no side effects, so it is asked once more, on a fresh connection.
                if attempt == 2:
                    raise RouterEngineError(f"{self.who} closed the connection twice without answering") from None
            except asyncio.TimeoutError:  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors
                raise RouterEngineError(f"{self.who} did not answer within {self.timeout:g}s") from None
            except aiohttp.ClientError as exc:
                raise RouterEngineError(f"{self.who} is unreachable: {exc or type(exc).__name__}") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RouterEngineError(f"{self.who} answered non-JSON: {raw[:200]!r}") from None

    def _read(self, answer: Any) -> tuple[str, dict[str, Any]]:
        """``text`` and ``meta_info.finish_reason`` of a one-prompt /generate answer."""
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise RouterEngineError(f"{self.who} answered without a text field: {str(answer)[:200]}")
        meta = answer.get("meta_info")
        finish = meta.get("finish_reason") if isinstance(meta, dict) else None
        finish = finish if isinstance(finish, dict) else {}
        if finish.get("type") == "abort":
            status = finish.get("status_code")
            raise RouterEngineError(f"{self.who} aborted the request: {finish.get('message')}",
                                    status=status if isinstance(status, int) else None)
        return answer["text"], finish


def constrained_params(regex: str, max_new_tokens: int) -> dict[str, Any]:
    """Greedy ``sampling_params`` under ``regex``, functional tokens kept in the answer's text."""
    return {
        "max_new_tokens": max_new_tokens,
        "temperature": 0,
        "regex": regex,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }


class SGLangRouterEngine(SGLangClient):
    """Routing decisions from an SGLang server, over one pooled keep-alive session."""

    def __init__(
        self,
        base_url: str,
        grammar: RouterGrammar,
        *,
        mode: Mode = "select+reformat",
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_connections: int = 64,
        prompt_template: PromptTemplate = chatml_prompt,
        max_argument_tokens: int = 256,
        api_key: str | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if max_argument_tokens < 1:
            raise ValueError("max_argument_tokens must be positive")
        super().__init__(base_url, role="router", timeout=timeout, connect_timeout=connect_timeout,
                         max_connections=max_connections, api_key=api_key)
        self.grammar = grammar
        self.mode = mode
        self.prompt_template = prompt_template
        self.max_new_tokens = grammar.frame_length(mode) + (max_argument_tokens if mode == "select+reformat" else 0) + 1
        # Identical for every request: built once, so a decision only renders its prompt.
        self.sampling_params = constrained_params(grammar.regex(mode), self.max_new_tokens)

    async def decide(self, query: str) -> RouterDecision:
        """The node for ``query`` (and, in "select+reformat" mode, the query restated for it)."""
        text, finish = await self.generate(self.prompt_template(router_messages(query)), self.sampling_params)
        try:
            return parse_router_output(text, self.grammar, self.mode)
        except RouterOutputError as exc:
            cut = (f" (generation stopped at max_new_tokens={self.max_new_tokens}; raise max_argument_tokens)"
                   if finish.get("type") == "length" else "")
            raise RouterEngineError(f"{self.who} did not answer a routing decision: {exc}{cut}") from exc


def _error_message(raw: bytes) -> str:
    """The human part of an SGLang error body: ``{"error": {"message"}}``, FastAPI's ``{"detail"}``, or the text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]
