"""OpenAI's schemas (``openai-chat.schemas.json`` and ``openai-responses.schemas.json``, built by
``build_spec.py``) as validators, and the ``openai`` SDK's typed models as a second judge.

A schema name is looked up in the chat file first, then in the responses file: ``violations("Response",
body)``, ``violations("ResponseStreamEvent", event)``, ``violations("CreateChatCompletionResponse", body)``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

# OCTOGATE_CONFORMANCE_SPEC: another chat extract (build_spec.py run on a newer document) for
# bench/conformance.py --spec; the tests always use the kept one.
SPEC_FILE = Path(os.environ.get("OCTOGATE_CONFORMANCE_SPEC") or Path(__file__).with_name("openai-chat.schemas.json"))
RESPONSES_SPEC_FILE = Path(__file__).with_name("openai-responses.schemas.json")


@lru_cache(maxsize=2)
def spec(path: Path = SPEC_FILE) -> dict[str, Any]:
    return json.loads(path.read_text())


def schemas() -> dict[str, Any]:
    return spec()["components"]["schemas"]


@lru_cache(maxsize=32)
def validator(name: str) -> Draft202012Validator:
    """A validator of ``#/components/schemas/<name>`` (``format`` not asserted, as the spec's readers do)."""
    doc = spec() if name in schemas() else spec(RESPONSES_SPEC_FILE)
    if name not in doc["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {SPEC_FILE.name} or {RESPONSES_SPEC_FILE.name}")
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def violations(name: str, instance: Any, limit: int = 3) -> list[str]:
    """Why ``instance`` is not a valid ``name`` (empty when it is)."""
    out = []
    for err in validator(name).iter_errors(instance):
        where = "/".join(str(p) for p in err.absolute_path)
        out.append(f"{name} at /{where}: {err.message[:200]}")
        if len(out) >= limit:
            break
    return out


def sdk_violations(kind: str, instance: Any) -> list[str]:
    """What the openai SDK's own typed models (generated from the same spec) say of ``instance``:
    ``completion``, ``chunk``, ``error``, ``response`` or ``event`` (a Responses stream event)."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.responses import Response, ResponseStreamEvent
    from openai.types.shared import ErrorObject
    from pydantic import TypeAdapter, ValidationError

    try:
        if kind == "completion":
            ChatCompletion.model_validate(instance)
        elif kind == "chunk":
            ChatCompletionChunk.model_validate(instance)
        elif kind == "response":
            Response.model_validate(instance)
        elif kind == "event":
            TypeAdapter(ResponseStreamEvent).validate_python(instance)
        else:
            ErrorObject.model_validate(instance["error"])
    except (ValidationError, KeyError, TypeError) as exc:
        return [f"openai SDK {kind}: {str(exc)[:300]}"]
    return []
