"""Scoring a router on labelled queries: what ``octogate router eval`` prints (accuracy,
per-node precision and recall, the costliest confusions, latency percentiles)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from octogate.router_model.training.data import Example


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
