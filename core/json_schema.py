"""JSON Schemas from clients (tool parameters, response_format): normalise, check, validate.

``normalise`` accepts what OpenAI accepts for function parameters and structured outputs, plus the
BFCL / Python dialect (``"type": "dict"``, ``"float"``, ``"tuple"``, ``"any"`` ...), and returns a
standard draft 2020-12 schema with local ``$ref``s inlined. Anything it cannot honour is an
``UpstreamError(400, code="invalid_schema")`` whose ``param`` names the exact place
(``tools[0].function.parameters.properties.unit.enum[2]``).

``validation_error`` checks a value against a normalised schema with ``jsonschema``: the
grammars made from a schema (``octogate.adapters.tool_calling.grammar``) cannot express keywords
such as ``minimum`` or ``uniqueItems``, so every constrained answer is checked here as well.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from octogate.core.errors import UpstreamError

# Python / BFCL / Java-ish type names -> JSON Schema types (None: no type constraint).
_TYPE_ALIASES: dict[str, str | None] = {
    "object": "object", "dict": "object", "map": "object", "hashmap": "object",
    "array": "array", "list": "array", "tuple": "array", "arraylist": "array", "set": "array",
    "string": "string", "str": "string", "char": "string",
    "number": "number", "float": "number", "double": "number", "decimal": "number",
    "integer": "integer", "int": "integer", "long": "integer", "short": "integer", "byte": "integer",
    "boolean": "boolean", "bool": "boolean",
    "null": "null", "none": "null",
    "any": None,
}
JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
ANNOTATIONS = {"description", "title", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
                "$schema", "$id", "strict", "$defs", "definitions"}
_UNSUPPORTED = {"allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
                "patternProperties", "propertyNames", "unevaluatedProperties", "unevaluatedItems", "contains",
                "minContains", "maxContains", "minProperties", "maxProperties", "$dynamicRef", "$anchor"}
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_MAX_DEPTH = 24


def _bad(param: str, message: str) -> UpstreamError:
    return UpstreamError(400, f"Invalid schema for '{param}': {message}", param=param, code="invalid_schema")


def normalise(schema: Any, param: str, *, root_object: bool = False) -> dict[str, Any]:
    """A checked, standard copy of ``schema``; ``param`` is where the client put it."""
    if schema is None and root_object:
        schema = {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise _bad(param, "a schema must be a JSON object")
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    out = _Normaliser(schema, defs).visit(schema, param, ())
    if root_object and out.get("type") != "object":
        raise _bad(f"{param}.type", "function parameters must be a schema of type 'object'")
    _check_with_jsonschema(out, param)
    return out


class _Normaliser:
    def __init__(self, root: dict[str, Any], defs: dict[str, Any]):
        self.root = root
        self.defs = defs

    def visit(self, s: Any, at: str, refs: tuple[str, ...]) -> dict[str, Any]:
        if s is True:
            return {}
        if not isinstance(s, dict):
            raise _bad(at, "a schema must be a JSON object")
        if len(refs) > _MAX_DEPTH or at.count(".") > 4 * _MAX_DEPTH:
            raise _bad(at, f"schemas nested deeper than {_MAX_DEPTH} levels are not supported")
        if "$ref" in s:
            return self._ref(s, at, refs)
        for key in s:
            if key in _UNSUPPORTED:
                raise _bad(f"{at}.{key}", f"the keyword '{key}' is not supported")
        out: dict[str, Any] = {}
        for key in ("description", "title"):
            if key in s and s[key] is not None:
                if not isinstance(s[key], str):
                    raise _bad(f"{at}.{key}", f"'{key}' must be a string")
                out[key] = s[key]
        if "default" in s:
            out["default"] = s["default"]
        types = self._types(s, at)
        if types is not None:
            out["type"] = types[0] if len(types) == 1 else types
        if "enum" in s:
            enum = s["enum"]
            if not isinstance(enum, list) or not enum:
                raise _bad(f"{at}.enum", "'enum' must be a non-empty array")
            for j, value in enumerate(enum):
                if types is not None and not any(_is_type(value, t) for t in types):
                    raise _bad(f"{at}.enum[{j}]", f"{json.dumps(value)} is not of type {' or '.join(types)}")
            out["enum"] = list(enum)
        if "const" in s:
            out["const"] = s["const"]
        for key in ("anyOf", "oneOf"):
            if key in s:
                alts = s[key]
                if not isinstance(alts, list) or not alts:
                    raise _bad(f"{at}.{key}", f"'{key}' must be a non-empty array of schemas")
                out["anyOf" if key == "anyOf" else "oneOf"] = [
                    self.visit(a, f"{at}.{key}[{j}]", refs) for j, a in enumerate(alts)]
        if "properties" in s:
            props = s["properties"]
            if not isinstance(props, dict):
                raise _bad(f"{at}.properties", "'properties' must be an object mapping names to schemas")
            out["properties"] = {k: self.visit(v, f"{at}.properties.{k}", refs) for k, v in props.items()}
        if "required" in s:
            req = s["required"]
            if isinstance(req, bool) or req is None:  # BFCL and some OpenAPI dumps put a bool here; it says nothing
                req = []
            if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
                raise _bad(f"{at}.required", "'required' must be an array of property names")
            if len(set(req)) != len(req):
                raise _bad(f"{at}.required", "'required' lists a property twice")
            props = out.setdefault("properties", {})
            for j, name in enumerate(req):
                if name not in props:
                    if s.get("additionalProperties") is False:
                        raise _bad(f"{at}.required[{j}]", f"'{name}' is required but not among the properties")
                    props[name] = {}
            out["required"] = list(req)
        if "additionalProperties" in s:
            extra = s["additionalProperties"]
            out["additionalProperties"] = extra if isinstance(extra, bool) else self.visit(
                extra, f"{at}.additionalProperties", refs)
        if "items" in s:
            items = s["items"]
            if isinstance(items, list):  # draft-04 tuple form
                out["prefixItems"] = [self.visit(x, f"{at}.items[{j}]", refs) for j, x in enumerate(items)]
                out["items"] = False
                out.setdefault("minItems", len(items))
            elif items is not False:
                out["items"] = self.visit(items, f"{at}.items", refs)
        if "prefixItems" in s:
            pre = s["prefixItems"]
            if not isinstance(pre, list):
                raise _bad(f"{at}.prefixItems", "'prefixItems' must be an array of schemas")
            out["prefixItems"] = [self.visit(x, f"{at}.prefixItems[{j}]", refs) for j, x in enumerate(pre)]
        for key in _NUMBERS:
            if key in s:
                if isinstance(s[key], bool) or not isinstance(s[key], (int, float)):
                    raise _bad(f"{at}.{key}", f"'{key}' must be a number")
                out[key] = s[key]
        for key in _COUNTS:
            if key in s:
                if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 0:
                    raise _bad(f"{at}.{key}", f"'{key}' must be a non-negative integer")
                out[key] = s[key]
        for low, high in (("minLength", "maxLength"), ("minItems", "maxItems"), ("minimum", "maximum")):
            if low in out and high in out and out[low] > out[high]:
                raise _bad(f"{at}.{low}", f"'{low}' is greater than '{high}'")
        if "uniqueItems" in s:
            out["uniqueItems"] = bool(s["uniqueItems"])
        if "format" in s:
            if not isinstance(s["format"], str):
                raise _bad(f"{at}.format", "'format' must be a string")
            out["format"] = s["format"]
        if "pattern" in s:
            out["pattern"] = _check_pattern(s["pattern"], f"{at}.pattern")
        if s.get("nullable") is True and "type" in out:  # OpenAPI 3.0 style
            t = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*t, "null"] if "null" not in t else t
        if "type" not in out and ("properties" in out or "additionalProperties" in out) and not (
                "anyOf" in out or "oneOf" in out or "enum" in out or "const" in out):
            out["type"] = "object"
        return out

    def _types(self, s: dict[str, Any], at: str) -> list[str] | None:
        if "type" not in s or s["type"] is None:
            return None
        raw = s["type"]
        names = raw if isinstance(raw, list) else [raw]
        if not names:
            raise _bad(f"{at}.type", "'type' must not be empty")
        types: list[str] = []
        for j, name in enumerate(names):
            where = f"{at}.type[{j}]" if isinstance(raw, list) else f"{at}.type"
            if not isinstance(name, str) or name.strip().lower() not in _TYPE_ALIASES:
                raise _bad(where, f"unknown type {json.dumps(name)}; expected one of {', '.join(JSON_TYPES)}")
            mapped = _TYPE_ALIASES[name.strip().lower()]
            if mapped is None:  # "any" anywhere means no constraint
                return None
            if mapped not in types:
                types.append(mapped)
        return types

    def _ref(self, s: dict[str, Any], at: str, refs: tuple[str, ...]) -> dict[str, Any]:
        ref = s["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _bad(f"{at}.$ref", "only local references ('#/$defs/Name') are supported")
        if ref in refs:
            raise _bad(f"{at}.$ref", f"recursive schemas are not supported ({ref} refers to itself)")
        target: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise _bad(f"{at}.$ref", f"the reference {ref} points nowhere")
            target = target[part]
        if ref == "#":
            raise _bad(f"{at}.$ref", "recursive schemas are not supported ('#' refers to the root)")
        merged = {**target, **{k: v for k, v in s.items() if k != "$ref"}} if isinstance(target, dict) else target
        return self.visit(merged, at, (*refs, ref))


def _is_type(value: Any, t: str) -> bool:
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    return {
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "null": lambda v: v is None,
    }[t](value)


def _check_pattern(pattern: Any, at: str) -> str:
    if not isinstance(pattern, str):
        raise _bad(at, "'pattern' must be a string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _bad(at, f"not a valid regular expression: {exc}") from None
    try:
        schema_converter().visit({"type": "string", "pattern": anchored(pattern)}, "probe")
    except Exception as exc:  # the GBNF converter's regex subset is smaller than Python's
        raise _bad(at, f"this regular expression cannot be enforced: {exc or type(exc).__name__}") from None
    return pattern


def anchored(pattern: str) -> str:
    """JSON Schema patterns match anywhere; the grammar converter wants one ^...$ match."""
    start = pattern.startswith("^")
    end = pattern.endswith("$") and not pattern.endswith("\\$")
    core = pattern[1 if start else 0:len(pattern) - 1 if end else len(pattern)]
    anything = r'[^"\\\x00-\x1F]*'  # what may surround an unanchored match inside a JSON string
    return "^" + ("" if start else anything) + "(" + core + ")" + ("" if end else anything) + "$"


def _check_with_jsonschema(schema: dict[str, Any], param: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = param + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise _bad(where, exc.message) from None


@lru_cache(maxsize=256)
def _cached_validator(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema_json))


def validation_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not satisfy the (normalised) ``schema``, or None when it does."""
    validator = _cached_validator(json.dumps(schema, sort_keys=True))
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{where or '(root)'}: {error.message}"


# ---------------------------------------------------------------------------------------------- grammar


def schema_converter() -> Any:
    """llama.cpp's JSON-schema-to-GBNF converter: what a constrained grammar can enforce."""
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
