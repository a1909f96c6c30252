"""What ``octogate agent eval`` measures.

1. **Tool accuracy** of the action generator on decision lines (``heldout.jsonl``): first-step
   accuracy (lines with no history) and step-by-step accuracy (every line, with the true history
   before it: teacher forcing), per tool. In process, no gateway needed.
2. **End to end** (``--tasks heldout_tasks.jsonl --url http://gateway``): each task asked of the
   agent (``model: husky``) and of a node answering directly (``model: general``) through a running
   gateway; answer accuracy per source, p50/p95 latency, and the agent's steps per task.

Answers are scored leniently, the same way for both: a numeric gold answer is right when a number
in the answer equals it; yes/no when the answer's first yes or no word matches; any other when the
gold text is in the answer (case-insensitive).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
_YESNO = re.compile(r"\b(yes|no)\b", re.I)


def correct(answer: str, gold: str) -> bool:
    gold = str(gold).strip()
    text = answer or ""
    try:
        g = float(gold.replace(",", ""))
    except ValueError:
        g = None
    if g is not None:
        for m in _NUMBER.findall(text):
            try:
                if abs(float(m.replace(",", "").rstrip(".")) - g) < 1e-6 * max(1.0, abs(g)):
                    return True
            except ValueError:
                continue
        return False
    if gold.lower() in ("yes", "no", "true", "false"):
        m = _YESNO.search(text)
        want = "yes" if gold.lower() in ("yes", "true") else "no"
        return bool(m) and m.group(1).lower() == want
    return gold.lower() in text.lower()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


@dataclass
class ToolReport:
    first: list[tuple[str, str]] = field(default_factory=list)  # (gold, predicted)
    every: list[tuple[str, str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @staticmethod
    def accuracy(pairs: list[tuple[str, str]]) -> float:
        return sum(g == p for g, p in pairs) / max(1, len(pairs))

    def per_tool(self) -> dict[str, tuple[float, int]]:
        by: dict[str, list[bool]] = defaultdict(list)
        for g, p in self.every:
            by[g].append(g == p)
        return {t: (sum(v) / len(v), len(v)) for t, v in sorted(by.items())}

    def confusions(self, n: int = 6) -> list[tuple[str, str, int]]:
        c = Counter((g, p) for g, p in self.every if g != p)
        return [(g, p, k) for (g, p), k in c.most_common(n)]


def tool_accuracy(generator: Any, rows: list[dict[str, Any]]) -> ToolReport:
    """Blocking: ``generator`` is a started-and-loaded ``ActionGenerator`` (its ``scores``)."""
    from octogate.agents.action import Step

    report = ToolReport()
    for row in rows:
        history = [Step(h["tool"], h["subtask"], h.get("output", "")) for h in row["history"]]
        t0 = time.perf_counter()
        scores = generator.scores(row["task"], history)
        report.seconds.append(time.perf_counter() - t0)
        if not history:
            scores.pop("finish", None)  # not offered before the first step, as in serving
        predicted = max(scores, key=scores.get)
        pair = (row["tool"], predicted)
        report.every.append(pair)
        if not history:
            report.first.append(pair)
    return report


@dataclass
class EndToEnd:
    model: str
    right: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    finish: Counter = field(default_factory=Counter)
    errors: int = 0

    def accuracy(self, source: str | None = None) -> float:
        marks = self.right[source] if source else [m for v in self.right.values() for m in v]
        return sum(marks) / max(1, len(marks))

    def count(self, source: str | None = None) -> int:
        return len(self.right[source]) if source else sum(len(v) for v in self.right.values())


async def end_to_end(url: str, model: str, tasks: list[dict[str, Any]], api_key: str | None = None,
                     max_tokens: int = 128, timeout: float = 600) -> EndToEnd:
    """Ask ``model`` every task through the gateway at ``url`` (one at a time, as a user would)."""
    import aiohttp

    out = EndToEnd(model)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), headers=headers) as s:
        for task in tasks:
            body = {"model": model, "messages": [{"role": "user", "content": task["task"]}], "max_tokens": max_tokens,
                    "temperature": 0}
            t0 = time.perf_counter()
            try:
                async with s.post(f"{url.rstrip('/')}/v1/chat/completions", json=body) as r:
                    data = await r.json(content_type=None)
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                data, ok = {}, False
            out.seconds.append(time.perf_counter() - t0)
            if not ok:
                out.errors += 1
                out.right[task["source"]].append(False)
                continue
            choice = data["choices"][0]
            message = choice.get("message") or {}
            out.right[task["source"]].append(correct(message.get("content") or "", task["answer"]))
            out.finish[choice.get("finish_reason")] += 1
            reasoning = message.get("reasoning_content")
            if reasoning is not None:
                out.steps.append(sum(1 for line in reasoning.splitlines()
                                     if line.startswith("Step: [") and not line.startswith("Step: [finish]")))
    return out


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
