"""Schemathesis hooks for the fuzz campaign (loaded through ``SCHEMATHESIS_HOOKS=tests.fuzz_hooks``).

- ``openai_error_envelope``: a check run on every response, failing when an error (status >= 400)
  is not OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
- Keys: every request carries the API key (``FUZZ_API_KEY``), ``/admin/*`` the admin key
  (``FUZZ_ADMIN_KEY``), as schemathesis auth providers, so that its ``ignored_auth`` check knows
  them and probes each route without a key and with a wrong one.
- One accepted deviation: an integral float (``"max_tokens": 5.0``) is an integer for JSON Schema,
  and no schema can tell it from 5; the gateway refuses it with a 400 naming the field, as OpenAI
  does ("expected an integer, but got a decimal number"). ``integral_float_refused`` drops that
  failure of ``positive_data_acceptance`` (ST202) and nothing else.
- ``model``: half the generated chat bodies name a node the graph serves (``FUZZ_MODELS``), so
  that the fuzzed bodies reach the upstream instead of stopping at a 404 for an unknown model.
"""

from __future__ import annotations

import json
import os

import schemathesis
from hypothesis import strategies as st

API_KEY = os.environ.get("FUZZ_API_KEY", "")
ADMIN_KEY = os.environ.get("FUZZ_ADMIN_KEY", "")
MODELS = [m for m in os.environ.get("FUZZ_MODELS", "").split(",") if m]
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def envelope_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why an error response is not OpenAI's envelope (None when it is, or when it is no error)."""
    if status < 400:
        return None
    if not content_type.startswith("application/json"):
        return f"content-type {content_type!r}, not application/json"
    try:
        data = json.loads(body)
    except ValueError:
        return f"body is not JSON: {body[:200]!r}"
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return f"body is not {{'error': {{...}}}}: {body[:200]!r}"
    err = data["error"]
    if set(err) != ENVELOPE_KEYS:
        return f"error keys {sorted(err)}, expected {sorted(ENVELOPE_KEYS)}"
    if not isinstance(err["message"], str) or not err["message"] or not isinstance(err["type"], str):
        return f"message and type must be non-empty strings: {err!r}"
    if not all(err[k] is None or isinstance(err[k], str) for k in ("param", "code")):
        return f"param and code must be strings or null: {err!r}"
    return None


@schemathesis.check
def openai_error_envelope(ctx, response, case):
    problem = envelope_problem(response.status_code, response.headers.get("content-type", [""])[0], response.content)
    if problem:
        raise AssertionError(f"{response.status_code} outside OpenAI's error envelope: {problem}")


class _BearerKey:
    key = ""

    def get(self, case, ctx):
        return self.key

    def set(self, case, data, ctx):
        if data:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.auth(refresh_interval=None).skip_for(path_regex="^/admin/")
class ApiKey(_BearerKey):
    key = API_KEY


@schemathesis.auth(refresh_interval=None).apply_to(path_regex="^/admin/")
class AdminKey(_BearerKey):
    key = ADMIN_KEY


def integral_float_refused(case, response) -> bool:
    """Whether ``response`` is the gateway's 400 for an integral float where an integer belongs."""
    if response.status_code != 400 or not isinstance(case.body, dict):
        return False
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    value = case.body.get(error.get("param") or "")
    return (error.get("code") == "invalid_type" and "valid integer" in error.get("message", "")
            and isinstance(value, float) and value.is_integer())


@schemathesis.hook
def filter_failure(context, failure, case, response):
    return not (getattr(failure, "code", None) == "ST202" and integral_float_refused(case, response))


@schemathesis.hook
def flatmap_body(context, body):
    if MODELS and context.operation is not None and context.operation.path == "/v1/chat/completions" \
            and isinstance(body, dict):
        return st.one_of(st.just(body), st.sampled_from(MODELS).map(lambda m: {**body, "model": m}))
    return st.just(body)
