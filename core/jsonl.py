"""JSON Lines files of examples and cases: each line parsed, and a bad line named by its number."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


def read_jsonl(path: str | Path, parse: Callable[[dict[str, Any]], T], what: str) -> list[T]:
    """Each non-blank line of a JSONL file through ``parse``; a line that is not ``what`` names its number."""
    out = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(parse(orjson.loads(line)))
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not {what}: {exc}") from None
    return out
