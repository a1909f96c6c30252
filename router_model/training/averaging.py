"""``octogate router average``: one router from several trained for the same graph (a uniform model soup).

Routers fine-tuned from the same base model, with the same token rows at the start, stay close
enough in weight space that their average works as a model, and it is usually a little better
than each of them (Wortsman et al., "Model soups", 2022). For octogate's routers the average is
exact and costs nothing at serving time:

- each LoRA contributes ``(alpha_i / r_i) * B_i @ A_i`` to a weight matrix; the average of those
  deltas is itself a LoRA of rank ``sum(r_i)``: ``A`` stacks the ``A_i``, ``B`` puts the
  ``B_i * (alpha_i / r_i) / n`` side by side, and ``alpha`` equals the new rank (scale 1). A
  matrix that one router does not adapt contributes a zero delta;
- the functional-token rows are averaged row by row.

The embedded engine merges the adapter into a float16 copy of the base model
(``merged_model.py``), so a decision costs the same as with any one router; only the file grows
(about 3.9 MB per rank-16 router). The routers must agree on everything a decision depends on
besides the weights: base model, prompt, query cap and token-to-node table. A prior correction
(``prior.py``) is kept only if every part has the same one; otherwise set it on the average with
``octogate router prior``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from octogate.core.llama_runtime import sha256_of
from octogate.router_model.artifact import (
    RouterArtifact,
    RouterArtifactError,
    load_router,
    save_router,
)
from octogate.router_model.merged_model import read_lora


def _check_compatible(routers: Sequence[RouterArtifact]) -> None:
    first = routers[0]
    for other in routers[1:]:
        for what, key in (("base model", lambda a: a.base_sha256), ("prompt", lambda a: a.manifest["prompt"]),
                          ("functional tokens", lambda a: a.manifest["tokens"]),
                          ("token row width", lambda a: a.rows.shape)):
            if key(other) != key(first):
                raise RouterArtifactError(f"{other.path} and {first.path} differ in their {what}; "
                                          "only routers trained for the same graph on the same base can be averaged")


def average_lora(adapters: Sequence[tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]]
                 ) -> tuple[float, dict[str, np.ndarray]]:
    """``(alpha, {base tensor: (A, B)})`` per router -> ``(alpha, {name.lora_a / name.lora_b: array})``
    of one adapter whose delta on every matrix is the mean of theirs."""
    n = len(adapters)
    ranks = [next(iter(parts.values()))[0].shape[0] for _, parts in adapters]
    names = sorted({name for _, parts in adapters for name in parts})
    tensors: dict[str, np.ndarray] = {}
    for name in names:
        a0, b0 = next(parts[name] for _, parts in adapters if name in parts)
        a_blocks, b_blocks = [], []
        for (alpha, parts), r in zip(adapters, ranks):
            if name in parts:
                a, b = parts[name]
                a_blocks.append(a)
                b_blocks.append(b * (alpha / r / n))
            else:  # a matrix this router leaves alone: zero blocks keep the other routers' columns aligned
                a_blocks.append(np.zeros((r, a0.shape[1]), np.float32))
                b_blocks.append(np.zeros((b0.shape[0], r), np.float32))
        tensors[f"{name}.lora_a"] = np.concatenate(a_blocks, 0)
        tensors[f"{name}.lora_b"] = np.concatenate(b_blocks, 1)
    rank = sum(ranks)
    return float(rank), tensors


def _layers(name: str) -> int:
    return int(name.split(".")[1])  # blk.N.attn_q.weight


def average_routers(paths: Sequence[str | Path], out: str | Path) -> RouterArtifact:
    """Write the average of the routers at ``paths`` to ``out`` and return it."""
    if len(paths) < 2:
        raise RouterArtifactError("averaging needs at least two routers")
    routers = [load_router(p) for p in paths]
    _check_compatible(routers)
    alpha, lora = average_lora([read_lora(r.lora_path) for r in routers])
    rows = np.mean([r.rows for r in routers], axis=0)
    first = routers[0].manifest
    manifest = {
        "base_model": first["base_model"],
        "prompt": first["prompt"],
        "lora": {"layers": sorted({_layers(n) for n in lora}), "rank": int(alpha), "alpha": alpha},
        "training": {
            # complete only when every part finished its training: a soup of checkpoints says so
            "complete": all((r.manifest.get("training") or {}).get("complete") is True for r in routers),
            "average_of": [{"router": r.path.name, "lora_sha256": sha256_of(r.lora_path),
                            "training": r.manifest.get("training")} for r in routers]},
    }
    priors = [r.manifest.get("prior") for r in routers]
    if priors[0] is not None and all(p == priors[0] for p in priors):
        manifest["prior"] = priors[0]  # the same correction on every part holds for their average
    return save_router(out, lora=lora, alpha=alpha, rows=rows, tokens=routers[0].tokens, manifest=manifest)
