"""A seeded corpus of spec-valid ``CreateChatCompletionRequest`` bodies, sent to a gateway and judged.

**Generation.** hypothesis-jsonschema draws bodies from the spec's own request schema
(``CreateChatCompletionRequest``, its ``allOf`` merged), narrowed only where the run would otherwise
be impractical: ``model`` is the node under test; strings are at most 24 characters (messages are
short texts); arrays at most 3 items, ``messages`` 1 to 4; and for the embedded model (a 135M model
on the CPU) ``max_tokens``/``max_completion_tokens`` at most 16 and ``n`` at most 2. Every body is
re-validated against the unnarrowed schema, so each one sent is spec-valid; unknown top-level
fields are generated too (the schema allows them) and must pass through. ``hypothesis.seed`` makes
the corpus reproducible.

**Judging.** Each body goes to ``POST /v1/chat/completions`` as raw JSON. The answer must be 2xx, or
a 4xx listed in ``DOCUMENTED`` (a documented capability limit of that backend, or a rule OpenAI also
enforces; docs/conformance.md lists them with the field and why). Every 2xx body, every chunk of a
stream and every error body must validate against the spec's response schemas and be parsed by the
openai SDK's typed models. For a pass-through node, what the upstream received must be what was
sent, minus the fields the gateway owns (``model``, the persona message it puts first).
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conformance.spec import schemas, sdk_violations, violations

MAX_STRING = 24
MAX_ITEMS = 3


# ------------------------------------------------------------------------------------------- generation
def _narrow(schema: Any, in_properties: bool = False) -> Any:
    """Short strings and arrays (a narrower schema accepts a subset of the spec's bodies)."""
    if isinstance(schema, list):
        return [_narrow(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if in_properties:
        return {k: _narrow(v) for k, v in schema.items()}
    out = {k: _narrow(v, in_properties=k in ("properties", "patternProperties")) for k, v in schema.items()}
    if out.get("type") == "string" and not ({"enum", "const", "pattern", "format"} & out.keys()):
        out["maxLength"] = min(out.get("maxLength", MAX_STRING), MAX_STRING)
    if out.get("type") == "array":
        out["maxItems"] = min(out.get("maxItems", MAX_ITEMS), MAX_ITEMS)
    if out.get("type") == "object" and "properties" not in out and out.get("additionalProperties") in (None, True):
        out["maxProperties"] = min(out.get("maxProperties", 3), 3)  # free-form objects: metadata, parameters
    return out


def request_schema() -> dict[str, Any]:
    """``CreateChatCompletionRequest`` with its ``allOf`` merged into one object schema."""
    s = schemas()
    properties: dict[str, Any] = {}
    required: list[str] = []

    def merge(node: dict[str, Any]) -> None:
        if "$ref" in node:
            merge(s[node["$ref"].rsplit("/", 1)[-1]])
            return
        for part in node.get("allOf", []):
            merge(part)
        properties.update(node.get("properties", {}))
        required.extend(r for r in node.get("required", []) if r not in required)

    merge(s["CreateChatCompletionRequest"])
    return {"type": "object", "properties": properties, "required": required}


def generation_schema(node: str, embedded: bool) -> dict[str, Any]:
    schema = copy.deepcopy(request_schema())
    props = schema["properties"]
    props["model"] = {"const": node}
    props["messages"] = {**props["messages"], "minItems": 1, "maxItems": 4}
    if embedded:
        for key in ("max_tokens", "max_completion_tokens"):
            props[key] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 16}, {"type": "null"}]}
        props["n"] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 2}, {"type": "null"}]}
    # property names that hypothesis-jsonschema may add beside the spec's own: never our extension's
    schema["propertyNames"] = {"not": {"const": "octogate"}}
    return {**_narrow(schema), "components": {"schemas": _narrow(schemas())}}


class _OldMany:
    """hypothesis-jsonschema 0.23.1 (the latest) draws object properties with the old
    ``cu.many(...).more()`` loop, which Hypothesis 6.150+ replaced by ``with many(...) as e: for _ in e``;
    this is the old interface on top of the new one (the same draws, the same spans)."""

    def __init__(self, data: Any, **kwargs: Any):
        from hypothesis.internal.conjecture import utils

        self._many = utils.many(data, **kwargs)
        self._many.__enter__()
        self._elements = iter(self._many)

    def more(self) -> bool:
        if next(self._elements, StopIteration) is StopIteration:
            self._many.__exit__(None, None, None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


def _from_schema() -> Any:
    import types

    import hypothesis_jsonschema._from_schema as implementation
    from hypothesis.internal.conjecture import utils

    if not hasattr(utils.many, "more"):
        implementation.cu = types.SimpleNamespace(many=_OldMany)
    return implementation.from_schema


def corpus(node: str, count: int, seed: int, embedded: bool = False) -> list[dict[str, Any]]:
    """``count`` spec-valid request bodies (fewer if hypothesis stops early), the same for the same seed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from_schema = _from_schema()

    strategy = from_schema(generation_schema(node, embedded))
    bodies: list[dict[str, Any]] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(body: dict[str, Any]) -> None:
        if len(bodies) % 2 and "stream" not in body:  # half the corpus streamed (drawn alone, few bodies would)
            body = {**body, "stream": True}
        if not violations("CreateChatCompletionRequest", body) and len(bodies) < count:
            bodies.append(body)

    collect()
    return bodies


def embedded_default(work: Any) -> Any:
    """``config/default.yaml`` without its router and toolsets, its ``general`` node (the one the corpus
    names) answering at most 16 tokens unless a body says otherwise (node params fill gaps only)."""
    import yaml

    from tests.conftest import REPO, start_gateway

    graph = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    graph.pop("router", None)
    graph.pop("toolsets", None)
    for node in graph["nodes"]:
        if node["name"] == "general":
            node["params"] = {**node.get("params", {}), "max_tokens": 16}
    (work / "graph.yaml").write_text(yaml.safe_dump(graph))
    return start_gateway(work / "graph.yaml", work / "octogate.log")


# ------------------------------------------------------------------------------------------- judging
@dataclass(frozen=True)
class Documented:
    """A refusal that is not a conformance failure: its status, the param it names (a regex), its code."""

    backends: tuple[str, ...]  # "passthrough", "embedded"
    status: int
    param: str
    code: str | None
    reason: str  # the row of docs/conformance.md it stands for


DOCUMENTED = [
    # rules OpenAI also enforces (both backends)
    Documented(("passthrough", "embedded"), 400, r"stream_options", "invalid_value",
               "stream_options without stream: true (OpenAI: only allowed when stream is true)"),
    Documented(("passthrough", "embedded"), 400, r"top_logprobs", "invalid_value",
               "top_logprobs without logprobs: true (OpenAI: logprobs must be true)"),
    Documented(("passthrough", "embedded"), 400, r"tools\[\d+\]\.function\.name", None,
               "function name empty or over 64 characters (OpenAI: a-z, A-Z, 0-9, _ and -, at most 64)"),
    Documented(("passthrough", "embedded"), 400, r"max_tokens|max_completion_tokens", "invalid_value",
               "max_tokens or max_completion_tokens below 1 (the spec states no minimum; OpenAI answers "
               "'integer below minimum value', expecting >= 1)"),
    Documented(("passthrough", "embedded"), 400, r"response_format\.json_schema\.name", None,
               "response_format.json_schema.name empty or over 64 characters (OpenAI: at most 64)"),
    Documented(("passthrough", "embedded"), 400, r"logit_bias\..+", "invalid_value",
               "logit_bias value outside -100..100 (the spec types an integer; OpenAI: 'from -100 to 100')"),
    Documented(("passthrough", "embedded"), 400, r"seed", None,
               "seed beyond int64 (the spec's bound, 9223372036854776000, is int64's maximum as a double prints it)"),
    # capability limits of the embedded model
    Documented(("embedded",), 400, r"tools\[\d+\]\.(function|custom)\.name", "invalid_value",
               "tool name outside ^[a-zA-Z0-9_-]{1,64}$ (the rule OpenAI states for names; octogate checks it "
               "when it makes the calls)"),
    Documented(("embedded",), 400, r"tools\[\d+\]\.(function|custom)\.name", "invalid_value",
               "two tools with one name"),
    Documented(("embedded",), 400, r"tools\[\d+\]\.function\.parameters.*", "invalid_schema",
               "a parameters schema octogate cannot enforce by grammar (allOf, not, if, recursive $ref...) "
               "or that is not a JSON Schema"),
    Documented(("embedded",), 400, r"tools", "invalid_schema", "a parameters schema llama.cpp's grammar cannot take"),
    Documented(("embedded",), 400, r"response_format\.json_schema\.schema.*", "invalid_schema",
               "a response_format schema octogate cannot enforce by grammar"),
    Documented(("embedded",), 400, r"tools\[\d+\]\.custom\.format\.grammar\.syntax", "unsupported_grammar",
               "custom tool grammar of syntax lark (regex only)"),
    Documented(("embedded",), 400, r"tools\[\d+\]\.custom\.format\.grammar\.definition", None,
               "custom tool regex with constructs a grammar cannot express (lookarounds, backreferences...)"),
    Documented(("embedded",), 400, r"tool_choice.*", "invalid_value",
               "tool_choice naming a tool that is not in tools (OpenAI refuses it too)"),
    Documented(("embedded",), 400, r"n", "unsupported_parameter", "n > 1 with tools: one tool-calling choice"),
    Documented(("embedded",), 400, r"messages\[\d+\]\.content\[\d+\]\.type", "unsupported_content",
               "a non-text content part (image, audio, file): the model reads text only"),
    Documented(("embedded",), 400, r"messages", "context_length_exceeded", "the prompt exceeds the context"),
    Documented(("embedded",), 400, r"max_tokens", None,
               "max_tokens reached inside a tool call or a response_format answer (the output would be invalid)"),
]


def documented(backend: str, status: int, error: dict[str, Any]) -> Documented | None:
    param, code = error.get("param") or "", error.get("code")
    for d in DOCUMENTED:
        if backend in d.backends and status == d.status and re.fullmatch(d.param, param) \
                and (d.code is None or d.code == code):
            return d
    return None


@dataclass
class Tally:
    sent: int = 0
    accepted: int = 0
    streamed: int = 0
    refused: Counter = field(default_factory=Counter)  # documented reason -> count
    violations: list[str] = field(default_factory=list)  # response schema or SDK violations
    changed: list[str] = field(default_factory=list)  # pass-through fields that arrived changed
    failures: list[str] = field(default_factory=list)  # 5xx, undocumented 4xx

    def figures(self) -> dict[str, Any]:
        return {"sent": self.sent, "accepted": self.accepted, "streamed": self.streamed,
                "refused": sum(self.refused.values()), "refused_by_reason": dict(self.refused.most_common()),
                "schema_violations": len(self.violations), "changed_pass_through": len(self.changed),
                "failures": len(self.failures)}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def judge(client: httpx.Client, url: str, body: dict[str, Any], backend: str, tally: Tally,
          received: Any = None, persona: bool = False) -> None:
    """Send ``body``, judge the answer into ``tally``. ``received()``: the body the upstream got last
    (pass-through nodes), compared with what was sent."""
    raw = json.dumps(body, ensure_ascii=False).encode()
    before = received() if received is not None else None
    tally.sent += 1
    label = f"body {tally.sent}"
    r = client.post(url, content=raw, headers={"content-type": "application/json"})
    if r.status_code >= 400:
        error = r.json()
        tally.violations += [f"{label}: {v}" for v in violations("ErrorResponse", error) + sdk_violations("error", error)]
        d = documented(backend, r.status_code, error.get("error") or {})
        if d is None:
            tally.failures.append(f"{label}: {r.status_code} {json.dumps(error)[:300]} for {raw[:300]!r}")
        else:
            tally.refused[d.reason] += 1
        return
    tally.accepted += 1
    if body.get("stream"):
        tally.streamed += 1
        events = _sse_events(r.text)
        if not events or events[-1] != "[DONE]":
            tally.violations.append(f"{label}: the stream does not end with [DONE]")
        for event in events[:-1]:
            chunk = json.loads(event)
            if "error" in chunk:
                tally.failures.append(f"{label}: error event {event[:300]}")
                continue
            problems = violations("CreateChatCompletionStreamResponse", chunk) + sdk_violations("chunk", chunk)
            tally.violations += [f"{label}: {p}" for p in problems]
    else:
        answer = r.json()
        problems = violations("CreateChatCompletionResponse", answer) + sdk_violations("completion", answer)
        tally.violations += [f"{label}: {p}" for p in problems]
    if received is not None:
        got = received()
        if got is before or got is None:
            tally.changed.append(f"{label}: the upstream received nothing")
            return
        sent = {k: v for k, v in json.loads(raw).items() if k != "model"}
        arrived = {k: v for k, v in got.items() if k != "model"}
        if persona and arrived.get("messages"):
            arrived["messages"] = arrived["messages"][1:]
        for key in sorted(sent.keys() | arrived.keys()):
            if _canonical(sent.get(key)) != _canonical(arrived.get(key)):
                tally.changed.append(f"{label}: {key} sent {_canonical(sent.get(key))[:150]} "
                                     f"arrived {_canonical(arrived.get(key))[:150]}")
