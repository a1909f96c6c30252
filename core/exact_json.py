"""JSON that reaches the upstream as the client wrote it, at orjson's speed when it can.

orjson reads an integer beyond 64 bits as a float (``100000000000000000000000`` would be forwarded
as ``1e+23``) and cannot write one back. A body with a run of 19 or more digits (a cheap scan; a
long digit string inside a string only costs the slow path) is read with the standard library,
which keeps such integers exact, and a payload orjson cannot write is written by it too. Every
other body takes orjson both ways. NaN and Infinity, which are not JSON, are refused either way.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(rb"\d{19,}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def load_json(body: bytes) -> Any:
    """Parse a request body; a ValueError says why it is not JSON."""
    if _LONG_DIGITS.search(body) is None:
        return orjson.loads(body)
    try:
        return json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("the document nests too deeply") from None


def dump_json(value: Any) -> bytes:
    """Serialise a payload; a ValueError when it cannot be (nesting past the encoders' limits)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise ValueError(str(exc)) from None
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except RecursionError:
        raise ValueError("the document nests too deeply") from None
