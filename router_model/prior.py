"""Taking the training data's node mix out of a router's scores (logit adjustment).

A router trained with cross-entropy learns how often each node came up in its data as well as
what each node's queries look like: its score for node k carries a term close to
``log p_train(k)``. MMLU's mix is an accident of the exam bank (law and philosophy each have more
than ten times the questions of electrical engineering), not a fact about what users ask, and it
shows exactly where a decision is hard: a short biology or psychology question goes to the
biggest node, health. Logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
2021) swaps the training prior for a chosen one at decision time:

    score_k + tau * (log p_target(k) - log p_train(k))

With ``tau = 1`` and a calibrated model this is the Bayes decision under the target prior. The
only target offered is ``uniform`` (no node favoured before the query is read); with it, a
routing point that chooses among a subset of nodes (a node's neighbours) gets the same
correction restricted to that subset, because a constant added to every score changes nothing.

The correction lives in the router's ``router.json`` as the ingredients, not as opaque numbers::

    "prior": {"target": "uniform", "tau": 1.0, "train_share": {"physics": 0.0467, ...},
              "data": "train.jsonl"}

``octogate router prior`` writes it; the embedded engine adds the bias to its scores (a vector
of 17 floats added once per decision, so it costs nothing measurable).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

TARGETS = ("uniform",)


class PriorError(ValueError):
    """The prior cannot be estimated or read; the message says which node and why."""


def train_shares(nodes: Iterable[str], labels: Iterable[str]) -> dict[str, float]:
    """Each router node's share of the training labels; every node must occur, and nothing else."""
    nodes = list(nodes)
    counts = Counter(labels)
    unknown = sorted(set(counts) - set(nodes))
    if unknown:
        raise PriorError(f"the data has examples for {', '.join(map(repr, unknown[:3]))}, which this router has no token for")
    missing = [n for n in nodes if counts[n] == 0]
    if missing:
        raise PriorError(f"the data has no example for {', '.join(map(repr, missing[:3]))}: its prior cannot be "
                         "estimated (pass the data the router was trained on)")
    total = sum(counts.values())
    return {n: counts[n] / total for n in nodes}


def prior_block(shares: Mapping[str, float], *, target: str = "uniform", tau: float = 1.0,
                data: str | None = None) -> dict[str, Any]:
    """The ``prior`` entry of ``router.json`` (validated as ``score_bias`` would read it)."""
    block: dict[str, Any] = {"target": target, "tau": float(tau),
                             "train_share": {n: round(float(s), 6) for n, s in shares.items()}}
    if data is not None:
        block["data"] = data
    score_bias(block, list(shares))
    return block


def score_bias(block: Mapping[str, Any] | None, nodes: list[str]) -> np.ndarray:
    """The bias to add to the scores of ``nodes`` (in that order); zeros without a prior."""
    if block is None:
        return np.zeros(len(nodes), np.float32)
    if not isinstance(block, Mapping):
        raise PriorError(f"'prior' must be an object, not {type(block).__name__}")
    target, tau, shares = block.get("target"), block.get("tau"), block.get("train_share")
    if target not in TARGETS:
        raise PriorError(f"prior target {target!r} is not one of {', '.join(TARGETS)}")
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not math.isfinite(tau) or tau < 0:
        raise PriorError(f"prior tau must be a number >= 0, not {tau!r}")
    if not isinstance(shares, Mapping):
        raise PriorError("prior train_share must map each node to its share of the training data")
    out = []
    for node in nodes:
        share = shares.get(node)
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share <= 1:
            raise PriorError(f"prior train_share of {node!r} must be a share in (0, 1], not {share!r}")
        out.append(-tau * math.log(share))  # + tau * log(1/K), the same for every node: left out
    bias = np.array(out, np.float32)
    return bias - bias.mean() if len(bias) else bias
