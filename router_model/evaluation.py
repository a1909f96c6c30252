"""Routing data and its evaluation: what ``octogate router eval`` prints.

Data lines are ``{"query": ..., "node": ..., "reformatted": optional}``. The MMLU files in
``../shared/data/routing/`` convert to that form with ``convert_mmlu`` (``category`` is the node).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from router_model.chat_form import chat_form

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    query: str
    node: str
    reformatted: str | None = None
    subject: str | None = None  # a finer label under ``node`` (MMLU's subject): an auxiliary training target


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


@dataclass
class Report:
    total: int = 0
    correct: int = 0
    failures: int = 0  # no decision at all (engine error): counted as wrong
    latencies: list[float] = field(default_factory=list)
    pairs: Counter = field(default_factory=Counter)  # (gold, predicted) -> count

    def add(self, gold: str, predicted: str | None, seconds: float) -> None:
        self.total += 1
        self.latencies.append(seconds)
        if predicted is None:
            self.failures += 1
            predicted = "(no decision)"
        self.correct += predicted == gold
        self.pairs[(gold, predicted)] += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def per_node(self) -> dict[str, tuple[float, float, int]]:
        """node -> (precision, recall, support)."""
        gold_counts, predicted_counts, hits = Counter(), Counter(), Counter()
        for (gold, predicted), n in self.pairs.items():
            gold_counts[gold] += n
            predicted_counts[predicted] += n
            if gold == predicted:
                hits[gold] += n
        return {
            node: (hits[node] / predicted_counts[node] if predicted_counts[node] else 0.0,
                   hits[node] / gold_counts[node], gold_counts[node])
            for node in sorted(gold_counts)
        }

    def confusions(self, most: int = 10) -> list[tuple[str, str, int]]:
        """The (gold, predicted) mistakes that cost most, largest first."""
        wrong = [(g, p, n) for (g, p), n in self.pairs.items() if g != p]
        return sorted(wrong, key=lambda t: (-t[2], t[0], t[1]))[:most]

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def evaluate(examples: list[Example], decide: Callable[[str], Awaitable[str | None]]) -> Report:
    """Ask ``decide`` for each query in turn (sequentially: the latencies are per decision)."""
    report = Report()
    for example in examples:
        started = time.perf_counter()
        predicted = await decide(example.query)
        report.add(example.node, predicted, time.perf_counter() - started)
    return report
