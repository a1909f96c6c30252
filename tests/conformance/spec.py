"""OpenAI's chat-completions schemas (``openai-chat.schemas.json``, built by ``build_spec.py``) as
validators, and the ``openai`` SDK's typed models as a second judge."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_FILE = Path(__file__).with_name("openai-chat.schemas.json")


@lru_cache(maxsize=1)
def spec() -> dict[str, Any]:
    return json.loads(SPEC_FILE.read_text())


def schemas() -> dict[str, Any]:
    return spec()["components"]["schemas"]


@lru_cache(maxsize=16)
def validator(name: str) -> Draft202012Validator:
    """A validator of ``#/components/schemas/<name>`` (``format`` not asserted, as the spec's readers do)."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": spec()["components"]})


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
    ``completion``, ``chunk`` or ``error``."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.shared import ErrorObject
    from pydantic import ValidationError

    try:
        if kind == "completion":
            ChatCompletion.model_validate(instance)
        elif kind == "chunk":
            ChatCompletionChunk.model_validate(instance)
        else:
            ErrorObject.model_validate(instance["error"])
    except (ValidationError, KeyError, TypeError) as exc:
        return [f"openai SDK {kind}: {str(exc)[:300]}"]
    return []
