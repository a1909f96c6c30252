"""Span attributes by the OpenTelemetry semantic conventions, as plain dicts (no SDK needed).

HTTP server spans follow semantic conventions v1.44.0 (stable HTTP: ``http.request.method``,
``url.path``, ``url.scheme``, ``http.route``, ``server.address/port``, ``client.address``,
``http.response.status_code``, ``error.type``). The GenAI attributes follow the "Client Inference"
span of the GenAI conventions (the semantic-conventions-genai repository, still in Development):
span name ``{gen_ai.operation.name} {gen_ai.request.model}``, ``gen_ai.provider.name`` (plus the
deprecated ``gen_ai.system``, which collectors built for v1.36 and earlier still key on),
``gen_ai.request.*``, ``gen_ai.response.*``, ``gen_ai.usage.*``, and the opt-in
``gen_ai.input.messages`` / ``gen_ai.output.messages`` in their role/parts schema, as JSON strings.
``gateway/tracing.py`` puts them on spans.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from octogate.core.messages import content_text

# Attribute names. The GenAI ones are spelled out rather than imported: the semconv package keeps
# them in an "incubating" module that marks them deprecated (moved to the GenAI repository).
ERROR_TYPE = "error.type"
HTTP_STATUS = "http.response.status_code"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
#: The event ``Tracing.first_token`` adds, so a stream's first chunk shows on a trace timeline.
FIRST_TOKEN_EVENT = "gen_ai.first_token"

_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY",
                            "TRACE"})
# OpenAI request fields -> GenAI request attributes, for the numeric sampling knobs copied as they are.
_FLOAT_PARAMS = (("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
                 ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                 ("presence_penalty", "gen_ai.request.presence_penalty"))
_INT_PARAMS = (("seed", "gen_ai.request.seed"), ("top_k", "gen_ai.request.top_k"))
_OUTPUT_TYPES = {"text": "text", "json_object": "json", "json_schema": "json"}
# OpenAI's finish reasons that the GenAI output-message schema spells differently.
_FINISH_REASONS = {"tool_calls": "tool_call", "function_call": "tool_call"}


# ------------------------------------------------------------------------------ HTTP server
def server_attributes(scope: Mapping[str, Any], route: str,
                      propagation_fields: Iterable[bytes]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """An ASGI request's server span: its name, the propagation headers found, and its attributes."""
    carrier: dict[str, str] = {}
    attributes: dict[str, Any] = {"http.route": route, "url.path": scope.get("path", ""),
                                  "url.scheme": scope.get("scheme", "http")}
    host = None
    for name, value in scope.get("headers", ()):
        if name in propagation_fields:
            carrier[name.decode("latin-1")] = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
        elif name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    method = scope.get("method", "GET")
    if method in _KNOWN_METHODS:
        attributes["http.request.method"] = method
        span_name = f"{method} {route}"
    else:  # semconv: unknown methods are one bucket, so a scanner cannot blow up cardinality
        attributes["http.request.method"] = "_OTHER"
        attributes["http.request.method_original"] = method
        span_name = f"HTTP {route}"
    if host:
        address, port = _split_host(host)
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    elif scope.get("server"):
        attributes["server.address"], server_port = scope["server"][0], scope["server"][1]
        if server_port is not None:
            attributes["server.port"] = server_port
    if scope.get("client"):
        attributes["client.address"] = scope["client"][0]
    if scope.get("http_version"):
        attributes["network.protocol.version"] = scope["http_version"]
    return span_name, carrier, attributes


def _split_host(host: str) -> tuple[str, int | None]:
    """``example.com:8080`` / ``[::1]:8080`` / ``example.com`` -> address, port."""
    address, sep, port = host.rpartition(":")
    if not sep or not port.isdigit():
        address, port = host, ""
    return address.strip("[]"), int(port) if port else None


# ------------------------------------------------------------------------------ GenAI client inference
def backend_attributes(*, operation: str, provider: str, request_model: str, server_address: str | None,
                       server_port: int | None, node: str, stream: bool, request: Mapping[str, Any],
                       capture_content: bool) -> dict[str, Any]:
    """The attributes a backend call's span starts with; message text only with ``capture_content``."""
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
                                  "gen_ai.system": provider, "gen_ai.request.model": request_model,
                                  "octogate.node": node, "octogate.stream": stream}
    if stream:  # semconv: set if and only if the request streams
        attributes["gen_ai.request.stream"] = True
    if server_address:
        attributes["server.address"] = server_address
        if server_port is not None:
            attributes["server.port"] = server_port
    request_attributes(request, attributes)
    if capture_content and isinstance(request.get("messages"), list):
        attributes[INPUT_MESSAGES] = orjson.dumps(input_messages(request["messages"])).decode()
    return attributes


def request_attributes(request: Mapping[str, Any], attributes: dict[str, Any]) -> None:
    """Copy the request's sampling parameters the GenAI conventions name; never any text."""
    for field, key in _FLOAT_PARAMS:
        value = request.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[key] = float(value)
    for field, key in _INT_PARAMS:
        value = request.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[key] = value
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        attributes["gen_ai.request.max_tokens"] = max_tokens
    n = request.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n != 1:
        attributes["gen_ai.request.choice.count"] = n
    stop = request.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in _OUTPUT_TYPES:
        attributes["gen_ai.output.type"] = _OUTPUT_TYPES[response_format["type"]]
    effort = request.get("reasoning_effort")
    if isinstance(effort, str):
        attributes["gen_ai.request.reasoning.level"] = effort


def output_messages(output_text: str, finish_reasons: list[str] | None) -> str:
    """The answer as ``gen_ai.output.messages``: one assistant message, JSON."""
    # A finish reason that never came is "error" in the GenAI schema, where the field is required.
    reason = finish_reasons[0] if finish_reasons else "error"
    message = {"role": "assistant", "parts": [{"type": "text", "content": output_text}],
               "finish_reason": _FINISH_REASONS.get(reason, reason)}
    return orjson.dumps([message]).decode()


def input_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages in the GenAI conventions' input-message schema (role + typed parts)."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        parts: list[dict[str, Any]] = []
        content = message.get("content")
        if role == "tool":
            parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"),
                          "response": content_text(content)})
        elif isinstance(content, str):
            parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            parts.extend(_content_part(part) for part in content if isinstance(part, dict))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name", ""),
                          "arguments": _arguments(function.get("arguments"))})
        entry: dict[str, Any] = {"role": role, "parts": parts}
        if message.get("name"):
            entry["name"] = message["name"]
        out.append(entry)
    return out


def _content_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "content": part.get("text", "")}
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        if url.startswith("data:"):  # data:image/png;base64,....
            header, _, data = url.partition(",")
            return {"type": "blob", "modality": "image", "mime_type": header[5:].split(";")[0] or None,
                    "content": data}
        return {"type": "uri", "modality": "image", "uri": url}
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        return {"type": "blob", "modality": "audio", "mime_type": f"audio/{audio.get('format', 'wav')}",
                "content": audio.get("data", "")}
    if kind == "file":
        file = part.get("file") or {}
        if file.get("file_id"):
            return {"type": "file", "modality": "document", "file_id": file["file_id"]}
        return {"type": "blob", "modality": "document", "content": file.get("file_data", "")}
    return part  # the schema's generic part: any object with a "type"


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw
