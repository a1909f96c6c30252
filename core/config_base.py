"""What every part of the graph config shares: strict models, key paths in errors, and ``env:NAME``.

A value written ``env:NAME`` is read from the environment. A reference to a variable that is not
set is a config error naming the key and the variable (``check_env_references``), at
``check-config`` and at start-up: an unset key must never silently turn authentication off or
send a node's traffic to a default endpoint. ``env:NAME?`` marks a reference that may be unset
(an upstream that needs no API key); addresses (``api_base``, ``base_url``, ``redis_url``) and the
gateway's own keys (``api_keys``, ``admin_keys``) may not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """A graph file that cannot be used; the message is meant for a human."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathError(ValueError):
    """A cross-field error that knows which key it is about."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


class PathErrors(ValueError):
    """Several cross-field errors found in one pass, so a file's problems are reported at once."""

    def __init__(self, errors: list[PathError]):
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


def format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def resolve_secret(value: str | None) -> str | None:
    """Resolve ``env:NAME`` (or ``env:NAME?``) to the variable's value; None when unset or empty."""
    if value is None or not value.startswith("env:"):
        return value
    return os.environ.get(value[4:].removesuffix("?")) or None


# Keys whose value says where traffic goes, or who may call: an unset variable there may never mean
# "the default" or "nobody needs a key".
REQUIRED_KEYS = frozenset({"api_base", "base_url", "redis_url", "api_keys", "admin_keys"})


def _env_references(data: Any, loc: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _env_references(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _env_references(value, (*loc, i))
    elif isinstance(data, str) and data.startswith("env:"):
        yield loc, data


def check_env_references(data: Any, environ: dict[str, str] | None = None) -> list[str]:
    """A problem line for each ``env:`` reference whose variable is unset (or empty), in file order."""
    env = os.environ if environ is None else environ
    problems = []
    for loc, ref in _env_references(data):
        if loc[:1] == ("toolsets",):
            continue  # tool definitions are data, not settings
        name = ref[4:]
        optional = name.endswith("?")
        name = name.removesuffix("?")
        required = any(p in REQUIRED_KEYS for p in loc if isinstance(p, str))
        if not name:
            problems.append(f"{format_loc(loc)}: 'env:' names no variable")
        elif env.get(name):
            continue
        elif optional and required:
            problems.append(f"{format_loc(loc)}: {ref} cannot be optional here (an address or an API key); set {name}")
        elif not optional:
            problems.append(f"{format_loc(loc)}: environment variable {name} is not set "
                            f"(write env:{name}? if the key may be left out)")
    return problems
