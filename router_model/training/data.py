"""Routing data and its evaluation: what ``octogate router eval`` prints.

Data lines are ``{"query": ..., "node": ..., "reformatted": optional}``. The MMLU files in
``../shared/data/routing/`` convert to that form with ``convert_mmlu`` (``category`` is the node).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octogate.core.jsonl import read_jsonl
from octogate.router_model.toolsets import NO_CALL, Toolset
from octogate.router_model.training.chat_form import chat_form


@dataclass(frozen=True)
class Example:
    query: str
    node: str
    reformatted: str | None = None
    subject: str | None = None  # a finer label under ``node`` (MMLU's subject): an auxiliary training target


def read_examples(path: str | Path) -> list[Example]:
    """Routing examples from a JSONL file; a line that is not one names its line number."""
    def parse(row: dict[str, Any]) -> Example:
        subject = row.get("subject")
        return Example(str(row["query"]), str(row["node"]), row.get("reformatted"),
                       None if subject is None else str(subject))

    return read_jsonl(path, parse, 'a routing example ({"query", "node"})')


def held_out(question_id: str, percent: int = 10) -> bool:
    """Whether a question falls in the held-out share: by a hash of its id, so the split is stable."""
    return int(hashlib.sha1(question_id.encode()).hexdigest(), 16) % 100 < percent


CHOICES = ("omit", "append", "both")


def with_choices(row: dict[str, Any]) -> str:
    """The question as a user would paste it: followed by its lettered answer choices."""
    return "\n".join([row["question"], *(f"{letter}. {choice}" for letter, choice in zip("ABCD", row["choices"]))])


def convert_mmlu(rows: Iterable[dict[str, Any]], choices: str = "omit", chat: bool = False
                 ) -> Iterator[dict[str, str]]:
    """MMLU rows (``question``, ``choices``, ``category``) as routing examples.

    ``choices``: ``omit`` writes the question alone, ``append`` the question followed by its
    answer choices, ``both`` one example of each (training data: the choices often carry the
    subject when the question does not, and the plain form keeps short queries covered).
    ``chat``: one more example per question, its short chat-style form (``chat_form``).
    A row's ``subject`` is kept: training can use it as an auxiliary target (``subject_weight``)."""
    if choices not in CHOICES:
        raise ValueError(f"choices must be one of {', '.join(CHOICES)}, not {choices!r}")
    for row in rows:
        labels = {"node": row["category"], **({"subject": row["subject"]} if "subject" in row else {})}
        if choices != "append":
            yield {"query": row["question"], **labels}
        if choices != "omit":
            yield {"query": with_choices(row), **labels}
        if chat:
            yield {"query": chat_form(row["question"]), **labels}


def read_toolset_examples(toolset: Toolset, path: str | Path) -> list[Example]:
    """Training or evaluation lines ``{"query": ..., "function": name or null}``, or BFCL cases
    (``query`` and ``gold``), so that ``fc eval``'s test file also scores selection alone."""
    names = {f.name for f in toolset.functions}

    def example(row: dict[str, Any]) -> Example:
        fn = row["function"] if "function" in row else next(iter(row["gold"][0]), None) if row["gold"] else None
        if fn is not None and fn not in names:
            raise ValueError(f"function {fn!r} is not in toolset {toolset.name!r}")
        return Example(str(row["query"]), NO_CALL if fn is None else str(fn))

    return read_jsonl(path, example, "a toolset example ({\"query\", \"function\"})")
